"""The deployment artefacts agree with the code.

Dockerfile, docker-compose.yml and deploy/ (kustomize) are checked against what the code
says: the HTTP contract of `sagakit._http`, the topics the orchestrator and services
create (and their partition counts), the CLI's real subcommands and options, the
OpenTelemetry component names and the orchestrator's replica count.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import yaml

from sagakit import MemoryBroker, MemoryTransport, Orchestrator
from sagakit._cli_run import SERVICES, load_saga
from sagakit._http import (
    COMPONENTS,
    DEFAULT_HTTP_PORT,
    HEALTH_PATH,
    ORDERS_PATH,
    READY_PATH,
)
from services.outcome import STYLES
from services.system import build_system

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
ORCHESTRATOR = "saga-orchestrator"

# -- the CLI as the installed entry point builds it ------------------------------------------

_DUMP_CLI = r"""
import contextlib, enum, io, json, sys
import typer
from sagakit import cli

sys.argv = ["sagakit", "--help"]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        cli.main()  # registers every command, prints help, exits
    except SystemExit:
        pass

def plain(value):
    if isinstance(value, enum.Enum):
        value = value.value
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

def choices(p):
    kind = getattr(p, "type", None)  # click's ParamType, or typer's own descriptor
    if kind is None:
        kind = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [str(m.value) for m in kind]
    return [str(c) for c in kind.choices] if hasattr(kind, "choices") else None

def walk(cmd, path, out):
    params = []
    for p in cmd.params:
        envvar = p.envvar if isinstance(p.envvar, (list, tuple)) else [p.envvar]
        params.append({
            "name": p.name,
            "option": p.param_type_name == "option",
            "opts": [*p.opts, *p.secondary_opts],
            "negative": list(p.secondary_opts),
            "flag": bool(getattr(p, "is_flag", False)),
            "required": bool(p.required),
            "envvars": [e for e in envvar if e],
            "choices": choices(p),
            "default": plain(p.default),
        })
    out[" ".join(path)] = {"group": hasattr(cmd, "commands"), "params": params}
    for name, sub in getattr(cmd, "commands", {}).items():
        walk(sub, [*path, name], out)

tree = {}
walk(typer.main.get_command(cli.app), [], tree)
print(json.dumps(tree))
"""


@dataclass(frozen=True)
class Cli:
    commands: dict[str, dict[str, Any]]

    def all_envvars(self) -> set[str]:
        return {e for c in self.commands.values() for p in c["params"] for e in p["envvars"]}


@pytest.fixture(scope="module")
def cli() -> Cli:
    done = subprocess.run(
        [sys.executable, "-c", _DUMP_CLI], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return Cli(json.loads(done.stdout.strip().splitlines()[-1]))


@dataclass
class Parsed:
    command: str  # "service run"
    options: dict[str, Any] = field(default_factory=dict)  # param name -> value
    arguments: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_argv(cli: Cli, argv: list[str], env: dict[str, str], where: str) -> Parsed:
    """Parse `sagakit ARGV` the way the real CLI would, reporting what it would reject."""
    path: list[str] = []
    rest = list(argv)
    while rest and cli.commands.get(" ".join(path), {}).get("group"):
        candidate = " ".join([*path, rest[0]])
        if candidate not in cli.commands:
            break
        path.append(rest.pop(0))
    parsed = Parsed(" ".join(path))
    if rest == ["--help"]:
        return parsed
    command = cli.commands.get(parsed.command)
    if command is None or command["group"]:
        parsed.errors.append(f"{where}: `sagakit {shlex.join(argv)}` names no command")
        return parsed
    by_opt = {o: p for p in command["params"] if p["option"] for o in p["opts"]}
    while rest:
        token = rest.pop(0)
        if not token.startswith("-"):
            parsed.arguments.append(token)
            continue
        opt, eq, value = token.partition("=")
        param = by_opt.get(opt)
        if param is None:
            parsed.errors.append(f"{where}: `sagakit {parsed.command}` has no option {opt}")
            continue
        if param["flag"]:
            parsed.options[param["name"]] = opt not in param["negative"]
            continue
        if not eq:
            if not rest:
                parsed.errors.append(f"{where}: {opt} needs a value")
                continue
            value = rest.pop(0)
        if param["choices"] is not None and value not in param["choices"]:
            parsed.errors.append(f"{where}: {opt} {value!r} is not one of {param['choices']}")
        parsed.options[param["name"]] = value
    arguments = [p for p in command["params"] if not p["option"]]
    if len(parsed.arguments) != len(arguments):
        parsed.errors.append(
            f"{where}: `sagakit {parsed.command}` takes {len(arguments)} argument(s), "
            f"got {parsed.arguments}"
        )
    for p in command["params"]:
        if not p["option"] or p["name"] in parsed.options:
            continue
        from_env = [e for e in p["envvars"] if e in env]
        if from_env:
            value = env[from_env[0]]
            if p["choices"] is not None and value not in p["choices"]:
                parsed.errors.append(f"{where}: {from_env[0]}={value!r} not in {p['choices']}")
            parsed.options[p["name"]] = value
        elif p["required"]:
            parsed.errors.append(f"{where}: `sagakit {parsed.command}` needs {p['opts'][0]}")
        else:
            parsed.options[p["name"]] = p["default"]
    return parsed


# -- the artefacts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """One sagakit container, from docker-compose.yml or from a Deployment."""

    where: str
    argv: list[str]
    env: dict[str, str]
    spec: dict[str, Any]  # the compose service, or the Deployment


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def compose_builder(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    builders = [(n, s) for n, s in compose["services"].items() if "build" in s]
    assert len(builders) == 1, "one service builds the sagakit image (same-tag builds collide)"
    return builders[0]


@pytest.fixture(scope="module")
def compose_containers(compose: dict[str, Any]) -> list[Container]:
    builder, built = compose_builder(compose)
    found = [
        Container(f"docker-compose.yml:{name}", list(s["command"]), s["environment"], s)
        for name, s in compose["services"].items()
        if s.get("image") == built["image"] and name != builder
    ]
    assert found
    return found


def kubectl() -> str | None:
    return shutil.which("kubectl")


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/` when kubectl is there, else the raw resource files."""
    if kubectl() is not None:
        done = subprocess.run(
            [kubectl(), "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        docs = list(yaml.safe_load_all(done.stdout))
    else:
        resources = load_yaml(DEPLOY / "kustomization.yaml")["resources"]
        docs = [d for r in resources for d in yaml.safe_load_all((DEPLOY / r).read_text())]
    return [d for d in docs if d]


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests if d["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(manifests, kind) if d["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def k8s_containers(manifests: list[dict[str, Any]]) -> list[Container]:
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(manifests, "ConfigMap")}
    found = []
    for d in of_kind(manifests, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if not c["image"].split(":")[0].endswith("sagakit"):
                continue
            assert "command" not in c, "the image's ENTRYPOINT is sagakit: use args"
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                env.update(configmaps[source["configMapRef"]["name"]])
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            found.append(Container(f"deploy/{d['metadata']['name']}", list(c["args"]), env, d))
    assert found
    return found


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def parse_all(cli: Cli, containers: list[Container]) -> Iterator[tuple[Container, Parsed]]:
    for c in containers:
        yield c, parse_argv(cli, c.argv, c.env, c.where)


# -- topics --------------------------------------------------------------------------------


def code_topics(saga_spec: str, partitions: int, namespace: str) -> dict[str, int]:
    """Every topic the orchestrator and the services create, in either style."""

    async def collect() -> dict[str, int]:
        transport = MemoryTransport(MemoryBroker())
        saga = load_saga(saga_spec)
        orchestrator = Orchestrator(saga, transport, partitions=partitions, namespace=namespace)
        await orchestrator.ensure_topics()
        for style in STYLES:
            system = build_system(partitions=partitions, namespace=namespace, style=style)
            try:
                for service in system.services():
                    await service.ensure_topics(transport)
            finally:
                system.close()
        return await transport.existing_topics()

    return anyio.run(collect)


def expected_topics(cli: Cli, containers: list[Container]) -> dict[str, int]:
    """The topics of the saga and partition count the containers really run with."""
    runs = [
        p for _, p in parse_all(cli, containers) if p.command in ("orchestrator run", "service run")
    ]
    (saga,) = {p.options["saga"] for p in runs if p.command == "orchestrator run"}
    (partitions,) = {int(p.options["partitions"]) for p in runs}
    (namespace,) = {p.options["namespace"] for p in runs}
    topics = code_topics(saga, partitions, namespace)
    assert topics[f"{namespace}place-order.inbox"] == partitions
    return topics


def is_state_kept_for_ever(topic: str) -> bool:
    return topic.endswith((".journal", ".dlq"))


def test_every_topic_the_code_creates_is_a_kafka_topic_with_its_partitions(
    cli: Cli, manifests: list[dict[str, Any]], k8s_containers: list[Container]
) -> None:
    wanted = expected_topics(cli, k8s_containers)
    (kafka,) = of_kind(manifests, "Kafka")
    topics = of_kind(manifests, "KafkaTopic")
    declared = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in topics}
    assert len(declared) == len(topics), "a topic declared twice"
    assert {n: t["spec"]["partitions"] for n, t in declared.items()} == wanted
    assert {n for n in wanted if n.endswith(".dlq")} and all(
        wanted[n] == 1 for n in wanted if n.endswith(".dlq")
    )
    for name, topic in declared.items():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["replicas"] == 1
        retention = topic["spec"].get("config", {}).get("retention.ms")
        assert (retention == -1) == is_state_kept_for_ever(name), name


def compose_topic_specs(compose: dict[str, Any]) -> list[tuple[str, int, str]]:
    init = compose["services"]["kafka-init"]
    specs = []
    for spec in init["environment"]["TOPICS"].split():
        name, partitions, *config = spec.split(":")
        specs.append((name, int(partitions), config[0] if config else ""))
    return specs


def test_compose_creates_the_same_topics(
    cli: Cli, compose: dict[str, Any], compose_containers: list[Container]
) -> None:
    wanted = expected_topics(cli, compose_containers)
    specs = compose_topic_specs(compose)
    assert len(specs) == len({n for n, _, _ in specs})
    assert {n: p for n, p, _ in specs} == wanted
    for name, _, config in specs:
        assert (config == "retention.ms=-1") == is_state_kept_for_ever(name), name
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for c in compose_containers:
        if c.argv[0] not in ("orchestrator", "service"):
            continue  # the load generator speaks HTTP to the orders service only
        assert "kafka-init" in c.spec["depends_on"], c.where
        assert c.spec["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_compose_topic_job_creates_each_missing_topic_once(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Run kafka-init's script with a kafka-topics.sh that records its calls."""
    init = compose["services"]["kafka-init"]
    script = init["command"][0]
    assert re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")) is None, (
        "every $ is doubled, or Compose would substitute it from the host's environment"
    )
    calls = tmp_path / "calls"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(
        '#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n'
        'if [[ "$*" == *--list* ]]; then echo orders.commands; echo __consumer_offsets; fi\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "TOPICS": init["environment"]["TOPICS"], "KAFKA_BIN": str(tmp_path)}
    env["CALLS"] = str(calls)
    done = subprocess.run(
        [*init["entrypoint"], script.replace("$$", "$")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    created = {}
    for line in calls.read_text().splitlines():
        args = line.split()
        assert args[:2] == ["--bootstrap-server", "kafka:9092"]
        if "--create" in args:
            name = args[args.index("--topic") + 1]
            assert name not in created
            config = args[args.index("--config") + 1] if "--config" in args else ""
            created[name] = (int(args[args.index("--partitions") + 1]), config)
    expected = {n: (p, c) for n, p, c in compose_topic_specs(compose) if n != "orders.commands"}
    assert created == expected


# -- the HTTP contract ---------------------------------------------------------------------


def test_deployments_probe_and_expose_the_http_contract(
    cli: Cli, manifests: list[dict[str, Any]], k8s_containers: list[Container]
) -> None:
    services = of_kind(manifests, "Service")
    serving = 0
    for c in k8s_containers:
        container = the_container(c.spec)
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
        labels = c.spec["spec"]["template"]["metadata"]["labels"]
        selecting = [s for s in services if s["spec"]["selector"].items() <= labels.items()]
        probes = {
            "livenessProbe": HEALTH_PATH,
            "readinessProbe": READY_PATH,
            "startupProbe": HEALTH_PATH,
        }
        if not serves_http(cli, parse_argv(cli, c.argv, c.env, c.where)):
            # nothing listens: a probe would only restart it for ever
            assert not {"ports", *probes} & set(container), c.where
            assert selecting == [], c.where
            continue
        serving += 1
        (port,) = container["ports"]
        assert port == {"name": "http", "containerPort": DEFAULT_HTTP_PORT}, c.where
        assert c.env["SAGAKIT_HTTP_PORT"] == str(DEFAULT_HTTP_PORT)
        for probe, path in probes.items():
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, (c.where, probe)
        (service,) = selecting
        assert service["spec"]["ports"] == [
            {"name": "http", "port": DEFAULT_HTTP_PORT, "targetPort": "http"}
        ], c.where
    assert serving == 1 + len(SERVICES)


def test_compose_healthchecks_use_the_http_contract(
    cli: Cli, compose_containers: list[Container]
) -> None:
    serving = 0
    for c in compose_containers:
        if not serves_http(cli, parse_argv(cli, c.argv, c.env, c.where)):
            assert c.spec["healthcheck"] == {"disable": True}, c.where
            continue
        serving += 1
        test = c.spec["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], c.where
        (url,) = re.findall(r"'(http://[^']+)'", test[3])
        parts = urlsplit(url)
        assert (parts.port, parts.path) == (DEFAULT_HTTP_PORT, HEALTH_PATH), c.where
        assert c.env["SAGAKIT_HTTP_PORT"] == str(DEFAULT_HTTP_PORT)
    assert serving == 1 + 2 * len(SERVICES)  # the orchestrator, the services in both styles
    orders = [c for c in compose_containers if c.argv[:3] == ["service", "run", "orders"]]
    assert len(orders) == 2
    for c in orders:  # POST /orders from the host
        assert f"{DEFAULT_HTTP_PORT}:{DEFAULT_HTTP_PORT}" in c.spec["ports"]


def test_the_load_generator_posts_to_the_orders_service(
    compose: dict[str, Any],
    compose_containers: list[Container],
    manifests: list[dict[str, Any]],
    k8s_containers: list[Container],
) -> None:
    def orders_url(c: Container) -> Any:
        assert c.argv[0] == "load", c.where
        return urlsplit(c.argv[c.argv.index("--orders-url") + 1])

    loads = [c for c in compose_containers if c.argv[0] == "load"]
    assert {tuple(c.spec["profiles"]) for c in loads} == {("orchestration",), ("choreography",)}
    for c in loads:
        url = orders_url(c)
        target = compose["services"][url.hostname]
        assert target["command"][:3] == ["service", "run", "orders"]
        assert target["profiles"] == c.spec["profiles"], "the orders service of the same style"
        assert (url.port, url.path) == (DEFAULT_HTTP_PORT, ORDERS_PATH)
        assert c.spec["depends_on"][url.hostname]["condition"] == "service_healthy"
    (load,) = [c for c in k8s_containers if c.argv[0] == "load"]
    url = orders_url(load)
    service = named(manifests, "Service", str(url.hostname))
    orders = named(manifests, "Deployment", "orders")
    assert (
        service["spec"]["selector"].items()
        <= orders["spec"]["template"]["metadata"]["labels"].items()
    )
    assert the_container(orders)["args"][:3] == ["service", "run", "orders"]
    assert (url.port, url.path) == (DEFAULT_HTTP_PORT, ORDERS_PATH)
    assert load.spec["spec"]["replicas"] == 1


# -- commands, components, replicas --------------------------------------------------------


@pytest.fixture(scope="module")
def cli_uses(
    cli: Cli, compose_containers: list[Container], k8s_containers: list[Container]
) -> list[tuple[Container, Parsed]]:
    return list(parse_all(cli, [*compose_containers, *k8s_containers]))


def test_container_commands_use_real_cli_commands_and_options(
    cli: Cli, compose: dict[str, Any], cli_uses: list[tuple[Container, Parsed]]
) -> None:
    errors = [e for _, p in cli_uses for e in p.errors]
    builder, built = compose_builder(compose)
    errors += parse_argv(cli, built.get("command", []), {}, builder).errors
    assert errors == []
    for c, p in cli_uses:
        unknown = {k for k in c.env if k.startswith("SAGAKIT_") and k not in cli.all_envvars()}
        assert unknown == set(), f"{c.where}: no CLI option reads {unknown}"
        if p.command == "service run":
            (name,) = p.arguments
            assert name in SERVICES
            assert p.options["style"] in STYLES
            assert p.options["db"].startswith("/data/")
        if p.command == "orchestrator run":
            assert load_saga(p.options["saga"]).name == "place-order"
        if p.command in ("orchestrator run", "service run"):
            assert p.options["bootstrap"] and p.options["profile"] == "kafka"
    commands = {p.command for _, p in cli_uses}
    assert {"orchestrator run", "service run", "load"} <= commands


def component_of(p: Parsed) -> str | None:
    """The component a command runs (None: it is not one, e.g. the load generator)."""
    if p.command == "orchestrator run":
        return ORCHESTRATOR
    if p.command == "service run":
        return p.arguments[0]
    return None


def serves_http(cli: Cli, p: Parsed) -> bool:
    """Commands with an --http-port serve the contract of sagakit._http."""
    return any(param["name"] == "http_port" for param in cli.commands[p.command]["params"])


def test_otel_names_are_the_components_and_traces_go_to_jaeger(
    compose: dict[str, Any],
    manifests: list[dict[str, Any]],
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    names: dict[str, set[str]] = {"docker-compose.yml": set(), "deploy": set()}
    for c, p in cli_uses:
        component = component_of(p)
        if component is None:  # the load generator traces nothing of its own
            assert "OTEL_SERVICE_NAME" not in c.env, c.where
            continue
        name = c.env["OTEL_SERVICE_NAME"]
        assert name == component and name in COMPONENTS, c.where
        names[c.where.split(":")[0].split("/")[0]].add(name)
        assert c.env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert c.env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        endpoint = urlsplit(c.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "jaeger", 4318)
    assert names == {"docker-compose.yml": set(COMPONENTS), "deploy": set(COMPONENTS)}

    jaeger = compose["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    published = {int(p.split(":")[-1]) for p in jaeger["ports"]}
    assert {4317, 4318, 16686} <= published
    service = named(manifests, "Service", "jaeger")
    assert {4317, 4318, 16686} <= {p["port"] for p in service["spec"]["ports"]}
    container = the_container(named(manifests, "Deployment", "jaeger"))
    assert container["image"].startswith("jaegertracing/all-in-one:")
    assert {"name": "COLLECTOR_OTLP_ENABLED", "value": "true"} in container["env"]


def test_two_orchestrators(
    compose: dict[str, Any],
    manifests: list[dict[str, Any]],
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    orchestrators = [c for c, p in cli_uses if p.command == "orchestrator run"]
    assert {c.where for c in orchestrators} == {
        "docker-compose.yml:orchestrator",
        "deploy/orchestrator",
    }
    assert compose["services"]["orchestrator"]["deploy"]["replicas"] == 2
    assert named(manifests, "Deployment", "orchestrator")["spec"]["replicas"] == 2


def test_both_styles_run_every_service_once(
    compose: dict[str, Any], cli_uses: list[tuple[Container, Parsed]]
) -> None:
    env_file = dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env_file["COMPOSE_PROFILES"] == "orchestration"  # what `docker compose up` runs
    runs: dict[str, list[tuple[str, str]]] = {style: [] for style in STYLES}
    for c, p in cli_uses:
        if not c.where.startswith("docker-compose.yml"):
            continue
        (profile,) = c.spec["profiles"]
        assert profile in STYLES
        if p.command == "service run":
            assert p.options["style"] == profile, c.where
        runs[profile].append((p.command, p.arguments[0] if p.arguments else ""))
    for style, commands in runs.items():
        services = sorted(a for cmd, a in commands if cmd == "service run")
        assert services == sorted(SERVICES), style
        assert commands.count(("load", "")) == 1
    assert ("orchestrator run", "") in runs["orchestration"]
    assert ("orchestrator run", "") not in runs["choreography"]
    unprofiled = {n for n, s in compose["services"].items() if "profiles" not in s}
    assert unprofiled == {"sagakit-image", "kafka", "kafka-init", "jaeger"}
    k8s = [p for c, p in cli_uses if c.where.startswith("deploy/") and p.command == "service run"]
    assert sorted(p.arguments[0] for p in k8s) == sorted(SERVICES)


def test_the_services_sqlite_files_are_on_volumes(
    compose: dict[str, Any],
    manifests: list[dict[str, Any]],
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    seen: set[tuple[str, str]] = set()
    for c, p in cli_uses:
        if p.command != "service run":
            continue
        db = Path(p.options["db"])
        if c.where.startswith("docker-compose.yml"):
            mounts = dict(v.split(":")[::-1] for v in c.spec["volumes"])
            volume = mounts[str(db.parent)]
            assert volume in compose["volumes"], c.where
        else:
            container = the_container(c.spec)
            pod = c.spec["spec"]["template"]["spec"]
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(db.parent)]
            (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            volume = vol["persistentVolumeClaim"]["claimName"]
            named(manifests, "PersistentVolumeClaim", volume)
            assert c.spec["spec"]["replicas"] == 1, "one writer per SQLite file"
            assert c.spec["spec"]["strategy"]["type"] == "Recreate"
        artefact = c.where.split(":")[0].split("/")[0]
        assert (artefact, volume) not in seen, f"{c.where}: shares {volume}"
        seen.add((artefact, volume))


def test_bootstrap_points_at_the_kafka_of_the_artefact(
    compose: dict[str, Any],
    manifests: list[dict[str, Any]],
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in advertised.split(",")
    (kafka,) = of_kind(manifests, "Kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    plain = [x for x in kafka["spec"]["kafka"]["listeners"] if not x["tls"]]
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    k8s_bootstrap = {f"{kafka['metadata']['name']}-kafka-bootstrap:{x['port']}" for x in plain}
    (pool,) = of_kind(manifests, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    for c, _ in cli_uses:
        if c.where.startswith("docker-compose.yml"):
            assert c.env["SAGAKIT_BOOTSTRAP"] == "kafka:9092", c.where
        else:
            assert c.env["SAGAKIT_BOOTSTRAP"] in k8s_bootstrap, c.where
        assert c.env["SAGAKIT_PROFILE"] == "kafka"


# -- the image -----------------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_the_dockerfile_installs_the_project_as_a_non_root_sagakit_entrypoint() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    project = pyproject()
    assert project["project"]["requires-python"] == ">=3.11"
    installs = [line for line in lines if "pip install" in line]
    assert installs and all(re.search(r"pip install \.(\s|$)", i) for i in installs), installs
    assert not any("[" in i or "calfkit" in i for i in installs), "runtime dependencies only"
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")][-1:]
    assert user.split(":")[0] not in ("root", "0")
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    command = json.loads(entrypoint.removeprefix("ENTRYPOINT "))
    assert command == ["sagakit"] and "sagakit" in project["project"]["scripts"]
    copied = {
        p
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for p in line.split()[1:-1]
    }
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {
        p.split("/")[0] for p in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    }
    assert needed <= copied
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not needed & ignored
    assert {".git", ".venv"} <= ignored
    assert re.search(rf"EXPOSE {DEFAULT_HTTP_PORT}$", "\n".join(lines), re.MULTILINE)


def test_the_image_tag_is_the_project_version(
    compose: dict[str, Any], manifests: list[dict[str, Any]], k8s_containers: list[Container]
) -> None:
    version = pyproject()["project"]["version"]
    kustomization = load_yaml(DEPLOY / "kustomization.yaml")
    (image,) = [i for i in kustomization["images"] if i["name"] == "sagakit"]
    assert image["newTag"] == version
    if kubectl() is not None:
        for c in k8s_containers:
            assert the_container(c.spec)["image"] == f"sagakit:{version}"
    _, built = compose_builder(compose)
    assert built["build"]["context"] == "."
    assert (ROOT / built["build"].get("dockerfile", "Dockerfile")).is_file()


# -- the tools themselves ------------------------------------------------------------------


@pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: cannot render deploy/")
def test_kustomize_renders_every_resource_into_one_namespace(
    manifests: list[dict[str, Any]],
) -> None:
    kustomization = load_yaml(DEPLOY / "kustomization.yaml")
    files = {DEPLOY / r for r in kustomization["resources"]}
    assert files == set(DEPLOY.glob("*.yaml")) - {DEPLOY / "kustomization.yaml"}
    raw = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(manifests) == len(raw)
    for d in manifests:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == kustomization["namespace"], d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sagakit"


def docker_compose_works() -> str | None:
    """Why `docker compose` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    done = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        return f"`docker compose version` failed: {said[0][:200]}"
    return None


@pytest.mark.parametrize("profile", STYLES)
def test_docker_compose_config_accepts_the_file(profile: str) -> None:
    reason = docker_compose_works()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    services = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--profile", profile, "config", "--services"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert services.returncode == 0, services.stderr
    assert ("orchestrator" in services.stdout.split()) == (profile == "orchestration")
