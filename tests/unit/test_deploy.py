"""The deployment artefacts agree with the code.

Dockerfile, docker-compose.yml and deploy/ (kustomize) are checked against what the code
says: the HTTP contract of `sagakit._http` (and the orders service's POST /orders), the
topics the sample apps create (and their partition counts), the real subcommands and
options of the CLI and of the sample's load generator, the components of the apps the
containers run, the OpenTelemetry component names and the orchestrator's replica count;
the console's deployment (its read model, tokens and Jaeger link), and the Prometheus alert
rules (every metric they query is one sagakit registers).
"""

from __future__ import annotations

import base64
import functools
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
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sagakit import App, History, SagaStatus, SqliteStore
from sagakit._console import Role, parse_tokens
from sagakit._http import DEFAULT_HTTP_PORT, HEALTH_PATH, READY_PATH
from sagakit._loader import load_as, load_object
from sagakit._metrics import Metrics
from sagakit._postgres import DSN_ENV as POSTGRES_DSN_ENV
from sagakit.cli import _console as console_cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
#: The OpenTelemetry service name of every orchestrator (a service's is its name).
ORCHESTRATOR = "saga-orchestrator"
#: The app each compose profile (a style of the sample) runs.
PROFILE_APPS = {
    "orchestration": "services.app:app",
    "choreography": "services.app:choreography",
}
#: What runs a container: the image's ENTRYPOINT, or the sample's load generator.
SAGAKIT = ("sagakit",)
LOAD = ("python", "-m", "services.load")
PROGRAMS = {SAGAKIT: "sagakit", LOAD: "services.load"}
#: The console, the web UI (`sagakit run APP --component console`), run beside the
#: orchestration style's components; it reads its settings from the environment
#: (`sagakit.cli._console.ENV`), not from options of `sagakit run`.
CONSOLE = console_cli.CONSOLE
CONSOLE_OTEL_NAME = "sagakit-console"
READ_MODEL_ENV = console_cli.ENV["read_model"]  # a PostgreSQL URL: its own database
TOKENS_FILE_ENV = console_cli.ENV["tokens_file"]  # NAME:ROLE:TOKEN a line, # comments
JAEGER_URL_ENV = console_cli.ENV["jaeger_url"]  # the Jaeger UI, for trace links
CONSOLE_ENV = frozenset(console_cli.ENV.values())
CONSOLE_ROLES = tuple(r.name for r in Role)
RULES = DEPLOY / "prometheus-rules.yaml"

# -- the sample app, imported from the repository (the image copies services/ as is) ----------


@functools.cache
def sample(spec: str) -> Any:
    """`MODULE:ATTR` of the sample app, imported the way `sagakit run` imports it."""
    return load_object(spec, directory=ROOT)


@functools.cache
def sample_app(spec: str) -> App:
    return load_as(spec, App, directory=ROOT)


def otel_name(component: str) -> str:
    """The OpenTelemetry service name of a component (``orchestrator:x``, ``service:y``,
    ``console``)."""
    if component == CONSOLE:
        return CONSOLE_OTEL_NAME
    kind, _, name = component.partition(":")
    return ORCHESTRATOR if kind == "orchestrator" else name


# -- the CLIs as the installed entry point and `python -m services.load` build them -----------

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
            "multiple": bool(getattr(p, "multiple", False)),
            "required": bool(p.required),
            "envvars": [e for e in envvar if e],
            "choices": choices(p),
            "default": plain(p.default),
        })
    out[" ".join(path)] = {"group": hasattr(cmd, "commands"), "params": params}
    for name, sub in getattr(cmd, "commands", {}).items():
        walk(sub, [*path, name], out)

trees = {"sagakit": {}, "services.load": {}}
walk(typer.main.get_command(cli.app), [], trees["sagakit"])

# `python -m services.load` is `typer.run(load)`: one command of its own, no group
from services.load import load
loader = typer.Typer(add_completion=False)
loader.command()(load)
walk(typer.main.get_command(loader), [], trees["services.load"])
print(json.dumps(trees))
"""


@dataclass(frozen=True)
class Cli:
    prog: str  # "sagakit", "services.load"
    commands: dict[str, dict[str, Any]]

    def all_envvars(self) -> set[str]:
        return {e for c in self.commands.values() for p in c["params"] for e in p["envvars"]}


@pytest.fixture(scope="module")
def clis() -> dict[tuple[str, ...], Cli]:
    """The command trees of every program a container runs, by its argv prefix."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as the image's PYTHONPATH=/app
    done = subprocess.run(
        [sys.executable, "-c", _DUMP_CLI],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    trees = json.loads(done.stdout.strip().splitlines()[-1])
    return {program: Cli(prog, trees[prog]) for program, prog in PROGRAMS.items()}


def all_envvars(clis: dict[tuple[str, ...], Cli]) -> set[str]:
    return {e for c in clis.values() for e in c.all_envvars()}


@dataclass
class Parsed:
    prog: str  # "sagakit", "services.load"
    command: str  # "run", "sagas list"; "" for a program that is one command
    options: dict[str, Any] = field(default_factory=dict)  # param name -> value
    arguments: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_argv(cli: Cli, argv: list[str], env: dict[str, str], where: str) -> Parsed:
    """Parse `PROG ARGV` the way the real CLI would, reporting what it would reject."""
    path: list[str] = []
    rest = list(argv)
    while rest and cli.commands.get(" ".join(path), {}).get("group"):
        candidate = " ".join([*path, rest[0]])
        if candidate not in cli.commands:
            break
        path.append(rest.pop(0))
    parsed = Parsed(cli.prog, " ".join(path))
    said = f"`{shlex.join([cli.prog, *path])}`"
    if rest == ["--help"]:
        return parsed
    command = cli.commands.get(parsed.command)
    if command is None or command["group"]:
        parsed.errors.append(f"{where}: `{shlex.join([cli.prog, *argv])}` names no command")
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
            parsed.errors.append(f"{where}: {said} has no option {opt}")
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
        if param["multiple"]:
            parsed.options.setdefault(param["name"], []).append(value)
        else:
            parsed.options[param["name"]] = value
    arguments = [p for p in command["params"] if not p["option"]]
    if len(parsed.arguments) != len(arguments):
        parsed.errors.append(
            f"{where}: {said} takes {len(arguments)} argument(s), got {parsed.arguments}"
        )
    for p in command["params"]:
        if not p["option"] or p["name"] in parsed.options:
            continue
        from_env = [e for e in p["envvars"] if e in env]
        if from_env:
            value = env[from_env[0]]
            if p["choices"] is not None and value not in p["choices"]:
                parsed.errors.append(f"{where}: {from_env[0]}={value!r} not in {p['choices']}")
            parsed.options[p["name"]] = value.split() if p["multiple"] else value
        elif p["required"]:
            parsed.errors.append(f"{where}: {said} needs {p['opts'][0]}")
        else:
            default = p["default"]
            parsed.options[p["name"]] = [] if p["multiple"] and default is None else default
    return parsed


# -- the image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """What ./Dockerfile says about the final image (and the stage building the wheel)."""

    stages: list[list[str]]  # the instructions of each stage, comments dropped
    env: dict[str, str]  # ENV of the final stage
    copies: list[tuple[str, str]]  # COPY SOURCE DEST (not --from) of the final stage
    entrypoint: tuple[str, ...]
    workdir: str

    def copied_to(self, directory: str, package: str) -> bool:
        """Does the image hold the repository's `package` directory under `directory`?"""
        dest = PurePosixPath(directory) / package
        return any(
            PurePosixPath(src) == PurePosixPath(package) and PurePosixPath(dst) == dest
            for src, dst in self.copies
        )


def instructions(stage: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split()[0] == name]


@pytest.fixture(scope="module")
def image() -> Image:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    final = stages[-1]
    env: dict[str, str] = {}
    for spec in instructions(final, "ENV"):
        for item in shlex.split(spec):
            name, _, value = item.partition("=")
            env[name] = value
    copies = [
        (src, words[-1])
        for words in (spec.split() for spec in instructions(final, "COPY"))
        if not any(w.startswith("--from") for w in words)
        for src in words[:-1]
        if not src.startswith("--")
    ]
    (entrypoint,) = instructions(final, "ENTRYPOINT")
    workdirs = instructions(final, "WORKDIR")
    return Image(stages, env, copies, tuple(json.loads(entrypoint)), workdirs[-1])


# -- the artefacts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """One sagakit container, from docker-compose.yml or from a Deployment."""

    where: str
    program: tuple[str, ...]  # the entrypoint: ("sagakit",), or the load generator's
    argv: list[str]  # what follows it
    env: dict[str, str]  # the image's ENV, overridden by the container's
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
def compose_containers(compose: dict[str, Any], image: Image) -> list[Container]:
    builder, built = compose_builder(compose)
    found = [
        Container(
            f"docker-compose.yml:{name}",
            tuple(s.get("entrypoint", image.entrypoint)),
            list(s["command"]),
            {**image.env, **s["environment"]},
            s,
        )
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
def k8s_containers(manifests: list[dict[str, Any]], image: Image) -> list[Container]:
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(manifests, "ConfigMap")}
    found = []
    for d in of_kind(manifests, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if not c["image"].split(":")[0].endswith("sagakit"):
                continue
            # the image's ENTRYPOINT is sagakit: a container says only its args, unless it
            # runs the load generator instead
            program = tuple(c.get("command", image.entrypoint))
            env: dict[str, str] = dict(image.env)
            for source in c.get("envFrom", []):
                env.update(configmaps[source["configMapRef"]["name"]])
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            where = f"deploy/{d['metadata']['name']}"
            found.append(Container(where, program, list(c["args"]), env, d))
    assert found
    return found


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def parse(clis: dict[tuple[str, ...], Cli], c: Container) -> Parsed:
    cli = clis.get(c.program)
    if cli is None:
        return Parsed(shlex.join(c.program), "", errors=[f"{c.where}: runs {c.program}"])
    return parse_argv(cli, c.argv, c.env, c.where)


def parse_all(
    clis: dict[tuple[str, ...], Cli], containers: list[Container]
) -> Iterator[tuple[Container, Parsed]]:
    for c in containers:
        yield c, parse(clis, c)


def is_run(p: Parsed) -> bool:
    """`sagakit run MODULE:ATTR ...`: components of an app (not the load generator)."""
    return (p.prog, p.command) == ("sagakit", "run")


def is_load(p: Parsed) -> bool:
    return (p.prog, p.command) == ("services.load", "")


def components_of(p: Parsed) -> list[str]:
    return list(p.options["component"]) if is_run(p) else []


def app_of(p: Parsed) -> App:
    (spec,) = p.arguments
    return sample_app(spec)


def component_of(p: Parsed) -> str | None:
    """The one component a command runs (None: it is not one, e.g. the load generator)."""
    if not is_run(p):
        return None
    (component,) = components_of(p)
    return component


def service_of(p: Parsed) -> Any:
    """The `Service` a container runs (None for an orchestrator or the load generator)."""
    component = component_of(p)
    if component is None or not component.startswith("service:"):
        return None
    return app_of(p).service(component.partition(":")[2])


def deployed_components(spec: str) -> list[str]:
    """What the containers of a style run, one each: every component of its app, and the
    console beside the orchestration style."""
    app = sample_app(spec)
    console = [CONSOLE] if spec == PROFILE_APPS["orchestration"] else []
    return list(dict.fromkeys([*app.components, *console]))


# -- topics --------------------------------------------------------------------------------


def code_topics(namespace: str) -> dict[str, int]:
    """Every topic the sample creates in either style, with its partition count."""
    topics: dict[str, int] = {}
    for spec in PROFILE_APPS.values():
        for name, partitions in sample_app(spec).topics(namespace=namespace).items():
            assert topics.setdefault(name, partitions) == partitions, name
    return topics


def expected_topics(
    clis: dict[tuple[str, ...], Cli], containers: list[Container]
) -> dict[str, int]:
    """The topics of the apps and partition counts the containers really run with."""
    runs = [p for _, p in parse_all(clis, containers) if is_run(p)]
    assert {spec for p in runs for spec in p.arguments} <= set(PROFILE_APPS.values())
    for p in runs:  # App.topics() counts the app's partitions: nothing may override them
        assert p.options["partitions"] in (None, str(app_of(p).partitions)), p.arguments
    (namespace,) = {p.options["namespace"] or app_of(p).namespace for p in runs}
    topics = code_topics(namespace)
    app = sample_app(PROFILE_APPS["orchestration"])
    assert topics[f"{namespace}place-order.inbox"] == app.partitions
    return topics


def expected_configs(
    clis: dict[tuple[str, ...], Cli], containers: list[Container]
) -> dict[str, dict[str, str]]:
    """The settings the apps create their topics with, under the History settings the
    orchestrator containers run with (SAGAKIT_JOURNAL_RETENTION_S, ...)."""
    runs = [(c, p) for c, p in parse_all(clis, containers) if is_run(p)]
    (namespace,) = {p.options["namespace"] or app_of(p).namespace for _, p in runs}
    histories = {
        History.from_env(c.env)
        for c, p in runs
        if any(x.startswith("orchestrator") for x in p.options["component"] or ())
    }
    (history,) = histories or {History()}
    configs: dict[str, dict[str, str]] = {}
    for spec in PROFILE_APPS.values():
        for name, config in sample_app(spec).topic_configs(namespace, history).items():
            assert configs.setdefault(name, config) == config, name
    assert configs[f"{namespace}place-order.inbox.dlq"] == {"retention.ms": "-1"}
    assert configs[f"{namespace}place-order.journal"]["retention.ms"] != "-1"
    return configs


def test_every_topic_the_code_creates_is_a_kafka_topic_with_its_partitions(
    clis: dict[tuple[str, ...], Cli],
    manifests: list[dict[str, Any]],
    k8s_containers: list[Container],
) -> None:
    wanted = expected_topics(clis, k8s_containers)
    configs = expected_configs(clis, k8s_containers)
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
        config = {k: str(v) for k, v in topic["spec"].get("config", {}).items()}
        assert config == configs.get(name, {}), name


def compose_topic_specs(compose: dict[str, Any]) -> list[tuple[str, int, str]]:
    init = compose["services"]["kafka-init"]
    specs = []
    for spec in init["environment"]["TOPICS"].split():
        name, partitions, *config = spec.split(":")
        specs.append((name, int(partitions), config[0] if config else ""))
    return specs


def test_compose_creates_the_same_topics(
    clis: dict[tuple[str, ...], Cli],
    compose: dict[str, Any],
    compose_containers: list[Container],
) -> None:
    wanted = expected_topics(clis, compose_containers)
    configs = expected_configs(clis, compose_containers)
    specs = compose_topic_specs(compose)
    assert len(specs) == len({n for n, _, _ in specs})
    assert {n: p for n, p, _ in specs} == wanted
    for name, _, config in specs:
        # the script passes one --config: name:partitions[:key=value]
        assert config == ",".join(f"{k}={v}" for k, v in configs.get(name, {}).items()), name
        assert len(configs.get(name, {})) <= 1, f"{name}: kafka-init passes one --config"
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for c, p in parse_all(clis, compose_containers):
        if not is_run(p):
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


def serves_http(clis: dict[tuple[str, ...], Cli], p: Parsed) -> bool:
    """Commands with an --http-port serve the contract of sagakit._http."""
    (cli,) = [c for c in clis.values() if c.prog == p.prog]
    return any(param["name"] == "http_port" for param in cli.commands[p.command]["params"])


def routes_of(p: Parsed) -> set[tuple[str, str]]:
    """The extra routes (``POST /orders``) the service a container runs serves."""
    service = service_of(p)
    return set() if service is None else {(m, path) for m, path, _ in service.routes}


def orders_path() -> str:
    path = sample("services.orders.api:ORDERS_PATH")
    assert isinstance(path, str)
    return path


def test_deployments_probe_and_expose_the_http_contract(
    clis: dict[tuple[str, ...], Cli],
    manifests: list[dict[str, Any]],
    k8s_containers: list[Container],
) -> None:
    services = of_kind(manifests, "Service")
    serving = 0
    for c, p in parse_all(clis, k8s_containers):
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
        if not serves_http(clis, p):
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
    assert serving == len(deployed_components(PROFILE_APPS["orchestration"]))


def test_compose_healthchecks_use_the_http_contract(
    clis: dict[tuple[str, ...], Cli], compose_containers: list[Container]
) -> None:
    serving = 0
    for c, p in parse_all(clis, compose_containers):
        if not serves_http(clis, p):
            assert c.spec["healthcheck"] == {"disable": True}, c.where
            continue
        serving += 1
        test = c.spec["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], c.where
        (url,) = re.findall(r"'(http://[^']+)'", test[3])
        parts = urlsplit(url)
        assert (parts.port, parts.path) == (DEFAULT_HTTP_PORT, HEALTH_PATH), c.where
        assert c.env["SAGAKIT_HTTP_PORT"] == str(DEFAULT_HTTP_PORT)
    # the orchestrator, the services and the console of the orchestration style, the
    # choreography's services
    assert serving == sum(len(deployed_components(spec)) for spec in PROFILE_APPS.values())
    with_routes = [
        c for c, p in parse_all(clis, compose_containers) if ("POST", orders_path()) in routes_of(p)
    ]
    assert len(with_routes) == len(PROFILE_APPS)  # the orders service of each style
    for c in with_routes:  # POST /orders from the host
        assert f"{DEFAULT_HTTP_PORT}:{DEFAULT_HTTP_PORT}" in c.spec["ports"]


def test_the_load_generator_posts_to_the_orders_service(
    clis: dict[tuple[str, ...], Cli],
    compose: dict[str, Any],
    compose_containers: list[Container],
    manifests: list[dict[str, Any]],
    k8s_containers: list[Container],
) -> None:
    def orders_url(p: Parsed, where: str) -> Any:
        assert is_load(p), where
        return urlsplit(p.options["orders_url"])

    both = [*compose_containers, *k8s_containers]
    parsed = {c.where: (c, p) for c, p in parse_all(clis, both)}
    loads = [(c, p) for c, p in parsed.values() if is_load(p)]
    assert {c.program for c, _ in loads} == {LOAD}
    compose_loads = [(c, p) for c, p in loads if c.where.startswith("docker-compose.yml")]
    assert {tuple(c.spec["profiles"]) for c, _ in compose_loads} == {(s,) for s in PROFILE_APPS}
    for c, p in compose_loads:
        url = orders_url(p, c.where)
        target, orders = parsed[f"docker-compose.yml:{url.hostname}"]
        assert ("POST", url.path) in routes_of(orders), c.where
        assert target.spec["profiles"] == c.spec["profiles"], "the orders service of its style"
        assert (url.port, url.path) == (DEFAULT_HTTP_PORT, orders_path())
        assert c.spec["depends_on"][url.hostname]["condition"] == "service_healthy"
    ((load, p),) = [(c, p) for c, p in loads if c.where.startswith("deploy/")]
    url = orders_url(p, load.where)
    service = named(manifests, "Service", str(url.hostname))
    (deployment,) = [
        d
        for d in of_kind(manifests, "Deployment")
        if service["spec"]["selector"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    _, orders = parsed[f"deploy/{deployment['metadata']['name']}"]
    assert ("POST", url.path) in routes_of(orders), load.where
    assert (url.port, url.path) == (DEFAULT_HTTP_PORT, orders_path())
    assert load.spec["spec"]["replicas"] == 1


# -- commands, components, replicas --------------------------------------------------------


@pytest.fixture(scope="module")
def cli_uses(
    clis: dict[tuple[str, ...], Cli],
    compose_containers: list[Container],
    k8s_containers: list[Container],
) -> list[tuple[Container, Parsed]]:
    return list(parse_all(clis, [*compose_containers, *k8s_containers]))


def test_container_commands_use_real_cli_commands_and_options(
    clis: dict[tuple[str, ...], Cli],
    compose: dict[str, Any],
    image: Image,
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    errors = [e for _, p in cli_uses for e in p.errors]
    builder, built = compose_builder(compose)
    errors += parse_argv(clis[SAGAKIT], built.get("command", []), {}, builder).errors
    assert errors == []
    known = all_envvars(clis) | {POSTGRES_DSN_ENV}  # the one PostgresStore reads itself
    for c, p in cli_uses:
        # the console's settings: only its containers have them
        reads = known | (CONSOLE_ENV if CONSOLE in components_of(p) else set())
        unknown = {k for k in c.env if k.startswith("SAGAKIT_") and k not in reads}
        assert unknown == set(), f"{c.where}: no CLI option reads {unknown}"
        if is_run(p):
            (spec,) = p.arguments
            app = app_of(p)  # imports as `sagakit run` would
            chosen = components_of(p)
            assert len(chosen) == 1, f"{c.where}: one component, so OTEL_SERVICE_NAME is its"
            assert set(chosen) <= {*app.components, CONSOLE}, f"{c.where}: {app!r}"
            assert p.options["bootstrap"] and p.options["profile"] == "kafka"
            assert not p.options["embedded"], c.where
            # MODULE is imported from --app-dir (SAGAKIT_APP_DIR), else the cwd
            where = p.options["app_dir"] or image.workdir
            package = spec.partition(":")[0].split(".")[0]
            assert image.copied_to(where, package), f"{c.where}: no {package}/ in {where}"
        elif is_load(p):
            package = c.program[-1].split(".")[0]
            path = c.env.get("PYTHONPATH", "").split(":")
            assert any(image.copied_to(d, package) for d in path if d), c.where
        else:
            pytest.fail(f"{c.where}: runs neither `sagakit run` nor the load generator")
    programs = {(p.prog, p.command) for _, p in cli_uses}
    assert programs == {("sagakit", "run"), ("services.load", "")}


def reference_data_seeded(service: Any) -> int:
    """How many rows PLACE_ORDER_DEMO_DATA=1 makes the service seed."""
    store = SqliteStore(":memory:", schema=getattr(service.store, "schema", None))
    try:
        db = store.connection
        before = db.total_changes
        sample("services.system:seed_reference")(service.name, db, sample("services.app:DEMO_RUN"))
        return db.total_changes - before
    finally:
        store.close()


def test_the_services_with_reference_data_seed_it(
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    """What `--demo-data` did: the orders the load generator places need it."""
    seeding: set[str] = set()
    for c, p in cli_uses:
        service = service_of(p)
        if service is not None and reference_data_seeded(service):
            assert c.env.get("PLACE_ORDER_DEMO_DATA") == "1", c.where
            seeding.add(service.name)
    assert seeding == {"payments", "inventory", "shipping"}


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
        assert name == otel_name(component), c.where
        names[c.where.split(":")[0].split("/")[0]].add(name)
        assert c.env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert c.env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        endpoint = urlsplit(c.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "jaeger", 4318)
    components = {otel_name(c) for c in sample_app(PROFILE_APPS["orchestration"]).components}
    assert components == {ORCHESTRATOR, "orders", "payments", "inventory", "shipping"}
    deployed = {otel_name(c) for c in deployed_components(PROFILE_APPS["orchestration"])}
    assert deployed == components | {CONSOLE_OTEL_NAME}
    assert names == {"docker-compose.yml": deployed, "deploy": deployed}

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
    orchestrators = [c for c, p in cli_uses if (component_of(p) or "").startswith("orchestrator:")]
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
    assert tuple(PROFILE_APPS) == sample("services.outcome:STYLES")  # a profile a style
    assert sample_app(PROFILE_APPS["choreography"]).sagas == ()  # no orchestrator
    runs: dict[str, list[str]] = {style: [] for style in PROFILE_APPS}
    loads = dict.fromkeys(PROFILE_APPS, 0)
    for c, p in cli_uses:
        if not c.where.startswith("docker-compose.yml"):
            continue
        (profile,) = c.spec["profiles"]
        assert profile in PROFILE_APPS
        if is_load(p):
            loads[profile] += 1
            continue
        assert p.arguments == [PROFILE_APPS[profile]], c.where
        runs[profile] += components_of(p)
    for style, components in runs.items():
        assert sorted(components) == sorted(deployed_components(PROFILE_APPS[style])), style
        assert loads[style] == 1
    unprofiled = {n for n, s in compose["services"].items() if "profiles" not in s}
    assert unprofiled == {"sagakit-image", "kafka", "kafka-init", "jaeger", "postgres"}
    k8s = [p for c, p in cli_uses if c.where.startswith("deploy/") and is_run(p)]
    assert {spec for p in k8s for spec in p.arguments} == {PROFILE_APPS["orchestration"]}
    assert sorted(c for p in k8s for c in components_of(p)) == sorted(
        deployed_components(PROFILE_APPS["orchestration"])
    )


_STORES = """
import json, services.app as a
print(json.dumps({
    f"{app.name}/{s.name}": [type(s.store).__name__, s.store.dsn, s.store.table]
    for app in (a.app, a.choreography) for s in app.services
}))
"""


def test_with_a_postgres_dsn_every_sample_service_keeps_its_state_in_postgres() -> None:
    dsn = "postgresql://u:p@db.example:5432/x"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGAKIT_POSTGRES_DSN": dsn}
    done = subprocess.run(
        [sys.executable, "-c", _STORES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    stores = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(stores) == 8, stores
    for where, (kind, used, table) in stores.items():
        assert (kind, used, table) == ("PostgresStore", dsn, f"{where.split('/')[1]}_replies")


def init_databases() -> set[str]:
    """The databases deploy/postgres-init.sql creates."""
    sql = (DEPLOY / "postgres-init.sql").read_text()
    return set(re.findall(r"^CREATE DATABASE (\w+);", sql, flags=re.M))


def test_the_services_keep_their_state_in_their_own_postgres_database(
    compose: dict[str, Any],
    manifests: list[dict[str, Any]],
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    created = init_databases()
    seen: set[tuple[str, str]] = set()
    for c, p in cli_uses:
        service = service_of(p)
        if service is None:
            continue
        dsn = urlsplit(c.env["SAGAKIT_POSTGRES_DSN"])
        assert (dsn.scheme, dsn.hostname, dsn.port) == ("postgresql", "postgres", 5432), c.where
        database = dsn.path.lstrip("/")
        app = app_of(p)
        suffix = "_choreography" if app.name.endswith("choreography") else ""
        assert database == f"{service.name}{suffix}", c.where
        assert database in created, f"{c.where}: postgres-init.sql creates no {database}"
        artefact = c.where.split(":")[0].split("/")[0]
        assert (artefact, database) not in seen, f"{c.where}: shares {database}"
        seen.add((artefact, database))
        if artefact == "docker-compose.yml":
            assert c.spec["depends_on"]["postgres"]["condition"] == "service_healthy", c.where
            assert dsn.password == "${POSTGRES_PASSWORD:-sagakit}", (
                "the password comes from one place"
            )
        else:
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in the_container(c.spec)["env"]
                if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
            }
            secrets = {r["name"] for r in refs.values()}
            assert len(secrets) == 1 and secrets.pop().startswith("postgres-credentials")
            assert {r["key"] for r in refs.values()} == {"username", "password"}
            assert (dsn.username, dsn.password) == ("$(POSTGRES_USER)", "$(POSTGRES_PASSWORD)")
            assert list(refs) == ["POSTGRES_USER", "POSTGRES_PASSWORD"], "defined before the DSN"

    # the server: its data on a volume, the databases created on first start
    pg = compose["services"]["postgres"]
    mounts = {target: source for source, target, *_mode in (v.split(":") for v in pg["volumes"])}
    assert mounts["/var/lib/postgresql/data"] in compose["volumes"]
    assert mounts["/docker-entrypoint-initdb.d/init.sql"] == "./deploy/postgres-init.sql"
    assert (ROOT / "deploy/postgres-init.sql").is_file()
    sts = named(manifests, "StatefulSet", "postgres")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mounted["/var/lib/postgresql/data"] in claims
    (svc,) = [d for d in of_kind(manifests, "Service") if d["metadata"]["name"] == "postgres"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [5432]
    if kubectl() is not None:  # the generated ConfigMap holds the same script
        init = next(
            v
            for v in sts["spec"]["template"]["spec"]["volumes"]
            if v["name"] == mounted["/docker-entrypoint-initdb.d"]
        )
        (cm,) = [
            d
            for d in of_kind(manifests, "ConfigMap")
            if d["metadata"]["name"] == init["configMap"]["name"]
        ]
        assert cm["data"]["init.sql"] == (DEPLOY / "postgres-init.sql").read_text()


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
    for c, p in cli_uses:
        if not is_run(p):
            continue  # the load generator talks HTTP only
        if c.where.startswith("docker-compose.yml"):
            assert p.options["bootstrap"] == "kafka:9092", c.where
        else:
            assert p.options["bootstrap"] in k8s_bootstrap, c.where
        assert p.options["profile"] == "kafka"


# -- the console ----------------------------------------------------------------------------


def console_tokens(text: str, where: str) -> list[tuple[str, str, str]]:
    """The NAME:ROLE:TOKEN lines of a console tokens file (``#`` comments), checked."""
    tokens = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        assert len(parts) == 3 and all(parts), f"{where}: {line!r} is not NAME:ROLE:TOKEN"
        assert parts[1] in CONSOLE_ROLES, f"{where}: {line!r}"
        tokens.append((parts[0], parts[1], parts[2]))
    assert tokens, f"{where}: no token"
    assert len(parse_tokens(text, where)) == len(tokens)  # as the console reads it
    assert len({t for *_, t in tokens}) == len(tokens), f"{where}: a token twice"
    # demo tokens, plainly so: nothing that looks like a real secret is shipped
    assert all("change-me" in t for *_, t in tokens), where
    return tokens


def compose_secret_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Where a compose service's secrets are mounted: path -> secret."""
    mounts = {}
    for entry in service.get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        mounts[target if target.startswith("/") else f"/run/secrets/{target}"] = source
    return mounts


def test_the_console_has_its_read_model_tokens_and_trace_links(
    compose: dict[str, Any],
    manifests: list[dict[str, Any]],
    cli_uses: list[tuple[Container, Parsed]],
) -> None:
    consoles = {c.where: c for c, p in cli_uses if CONSOLE in components_of(p)}
    assert sorted(consoles) == ["deploy/console", "docker-compose.yml:console"]
    assert "console" in init_databases()
    jaeger_ui = 16686
    assert jaeger_ui in {p["port"] for p in named(manifests, "Service", "jaeger")["spec"]["ports"]}
    assert f"{jaeger_ui}:{jaeger_ui}" in compose["services"]["jaeger"]["ports"]
    for c in consoles.values():
        # its read model: a database of its own on the services' PostgreSQL server
        url = urlsplit(c.env[READ_MODEL_ENV])
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432), c.where
        assert url.path == "/console", c.where
        # trace links open the Jaeger UI in the browser: the port each artefact publishes
        jaeger = urlsplit(c.env[JAEGER_URL_ENV])
        assert (jaeger.scheme, jaeger.hostname, jaeger.port) == (
            "http",
            "localhost",
            jaeger_ui,
        ), c.where
        assert c.env[TOKENS_FILE_ENV].startswith("/"), c.where

    # docker-compose.yml: beside the orchestration style, the tokens a compose secret
    c = consoles["docker-compose.yml:console"]
    service = c.spec
    assert service["profiles"] == ["orchestration"]
    assert c.env[READ_MODEL_ENV] == (
        "postgresql://sagakit:${POSTGRES_PASSWORD:-sagakit}@postgres:5432/console"
    ), "the password comes from one place"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert service["ports"] == [f"8090:{DEFAULT_HTTP_PORT}"]
    others = [
        n
        for n, s in compose["services"].items()
        if n != "console" and any(str(p).split(":")[0] == "8090" for p in s.get("ports", []))
    ]
    assert others == [], "host port 8090 is the console's"
    mounts = compose_secret_mounts(service)
    assert c.env[TOKENS_FILE_ENV] == "/run/secrets/console-tokens"
    secret = compose["secrets"][mounts[c.env[TOKENS_FILE_ENV]]]
    tokens_file = ROOT / secret["file"]
    assert tokens_file == DEPLOY / "console-tokens.example"
    console_tokens(tokens_file.read_text(), str(tokens_file.relative_to(ROOT)))

    # deploy/: the orchestrator's security settings, the credentials of postgres-credentials,
    # the tokens a Secret mounted read-only
    c = consoles["deploy/console"]
    deployment = c.spec
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    container = the_container(deployment)
    orchestrator = named(manifests, "Deployment", "orchestrator")
    assert pod["securityContext"] == orchestrator["spec"]["template"]["spec"]["securityContext"]
    assert container["securityContext"] == the_container(orchestrator)["securityContext"]
    service = named(manifests, "Service", CONSOLE)
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    env = [e["name"] for e in container["env"]]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert list(refs) == ["POSTGRES_USER", "POSTGRES_PASSWORD"]
    assert all(r["name"].startswith("postgres-credentials") for r in refs.values())
    assert [r["key"] for r in refs.values()] == ["username", "password"]
    assert max(env.index(n) for n in refs) < env.index(READ_MODEL_ENV), "defined before the URL"
    url = urlsplit(c.env[READ_MODEL_ENV])
    assert (url.username, url.password) == ("$(POSTGRES_USER)", "$(POSTGRES_PASSWORD)")
    path = PurePosixPath(c.env[TOKENS_FILE_ENV])
    assert path == PurePosixPath("/etc/sagakit/console/tokens")
    (mount,) = [
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent
    ]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"].startswith("console-tokens")
    assert volume["secret"]["items"] == [{"key": "tokens", "path": path.name}]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "not readable by other users"
    kustomization = load_yaml(DEPLOY / "kustomization.yaml")
    assert "console-tokens" in {g["name"] for g in kustomization["secretGenerator"]}
    if kubectl() is not None:  # the generated Secret the volume names
        (generated,) = [
            d
            for d in of_kind(manifests, "Secret")
            if d["metadata"]["name"] == volume["secret"]["secretName"]
        ]
        text = base64.b64decode(generated["data"]["tokens"]).decode()
        console_tokens(text, "deploy/kustomization.yaml: console-tokens")


def test_the_port_forwards_of_the_kustomization_name_real_services(
    manifests: list[dict[str, Any]],
) -> None:
    text = (DEPLOY / "kustomization.yaml").read_text()
    forwards = re.findall(r"kubectl -n (\S+) port-forward svc/(\S+) (?:\d+:)?(\d+)", text)
    assert {name for _, name, _ in forwards} >= {"jaeger", "orders", CONSOLE}
    for namespace, name, port in forwards:
        assert namespace == load_yaml(DEPLOY / "kustomization.yaml")["namespace"]
        service = named(manifests, "Service", name)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, name


# -- the alert rules ------------------------------------------------------------------------

#: The series each metric type exposes (prometheus_client's text format).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def registered_series() -> set[str]:
    """Every series name a sagakit component's metrics expose."""
    names = set()
    for family in Metrics("x").registry.collect():
        assert family.type in SERIES_SUFFIXES, (family.name, family.type)
        names |= {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
    assert "sagakit_dead_letters_total" in names and "sagakit_dead_letters" not in names
    return names


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(RULES)
    assert set(doc) == {"groups"}
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert all(g["name"] for g in doc["groups"]) and rules
    return rules


def metrics_queried(expr: str) -> set[str]:
    """The sagakit_ metric names in a PromQL expression (label values left out)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\bsagakit_\w*", unquoted))


def test_the_alert_rules_are_complete_and_query_metrics_sagakit_registers(
    clis: dict[tuple[str, ...], Cli],
) -> None:
    registered = registered_series()
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(set(names)) == len(names)
    assert {"SagasNeedAttention", "SagaRunningTooLong", "DeadLettersGrowing"} <= set(names)
    assert "ConsumerLagHigh" in names
    for rule in rules:
        name, expr = rule["alert"], rule["expr"]
        assert isinstance(expr, str) and expr.strip(), name
        assert re.fullmatch(r"\d+[smhdwy]", str(rule["for"])), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        queried = metrics_queried(expr)
        assert queried <= registered, f"{name}: sagakit registers no {queried - registered}"
        assert queried or re.match(r"up\b", expr), f"{name} queries no sagakit metric"
        # the annotations name labels the result keeps (the `by` of its aggregation), the
        # saga type where it has one
        text = " ".join(annotations.values())
        grouped = {
            label.strip() for by in re.findall(r"\bby \(([^)]*)\)", expr) for label in by.split(",")
        }
        referenced = set(re.findall(r"\$labels\.(\w+)", text))
        if grouped:
            assert referenced <= grouped, name
        if "saga_type" in grouped:
            assert "$labels.saga_type" in annotations["summary"], name
        # what to do: real commands of the CLI, real states in the console's links
        for command in re.findall(r"`sagakit ([^`]+)`", text):
            argv = shlex.split(re.sub(r"\{\{[^}]*\}\}", "X", command))
            env = {"SAGAKIT_BOOTSTRAP": "localhost:29092"}
            assert parse_argv(clis[SAGAKIT], argv, env, name).errors == []
        for status in re.findall(r"/\?status=(\w+)", text):
            assert status in set(SagaStatus), name
    (attention,) = [r for r in rules if r["alert"] == "SagasNeedAttention"]
    said = " ".join(attention["annotations"].values())
    assert "--state FAILED_NEEDS_ATTENTION" in said and "/?status=FAILED_NEEDS_ATTENTION" in said


def test_the_alert_expressions_are_promql() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run(
            [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return
    promql = pytest.importorskip(
        "promql_parser", reason="neither promtool nor promql-parser is installed"
    )
    for rule in alert_rules():
        promql.parse(rule["expr"])  # raises on a syntax error


def test_kustomize_ships_the_alert_rules_as_a_configmap(manifests: list[dict[str, Any]]) -> None:
    kustomization = load_yaml(DEPLOY / "kustomization.yaml")
    (generator,) = [
        g for g in kustomization["configMapGenerator"] if g["name"] == "sagakit-prometheus-rules"
    ]
    assert generator["files"] == [f"sagakit-rules.yaml={RULES.name}"]
    assert generator["options"]["disableNameSuffixHash"] is True  # a name Prometheus can use
    header = RULES.read_text().split("\ngroups:")[0]
    assert "rule_files" in header and "sagakit-prometheus-rules" in header
    if kubectl() is not None:
        configmap = named(manifests, "ConfigMap", "sagakit-prometheus-rules")
        assert configmap["data"] == {"sagakit-rules.yaml": RULES.read_text()}


# -- the image -----------------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Does .dockerignore keep `path` (or a directory above it) out of the context?"""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = re.escape(pattern.removeprefix("!").strip("/"))
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def test_the_dockerfile_installs_the_project_as_a_non_root_sagakit_entrypoint(
    image: Image,
) -> None:
    build, final = image.stages[0], image.stages[-1]
    froms = [stage[0].split()[1] for stage in image.stages]
    assert len(froms) == 2 and all(f == "python:3.11-slim" for f in froms)
    project = pyproject()
    assert project["project"]["requires-python"] == ">=3.11"
    installs = [line for line in build if "pip install" in line]
    assert installs and all(
        re.search(r"pip install '\.\[postgres\]'(\s|$)", i) for i in installs
    ), installs
    # the runtime extras only: PostgresStore's driver, which the services use in containers
    assert project["project"]["optional-dependencies"]["postgres"] == ["asyncpg>=0.30"]
    assert not any(re.search(r"calfkit|[\[,]dev\b", i) for i in installs), "runtime only"
    assert not any("pip install" in line for line in final), "the wheel is built once"
    # the build stage copies what the wheel is built from (the library alone), no more
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert packages == ["src/sagakit"], "the wheel holds sagakit only: services/ is the sample"
    assert all((ROOT / p).is_dir() for p in packages), packages
    copied = {p for spec in instructions(build, "COPY") for p in spec.split()[:-1] if p[:2] != "--"}
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.split("/")[0] for p in packages}
    assert copied == needed
    # the final stage: the sample app, importable by `sagakit run` and `python -m`
    assert image.copied_to("/app", "services")
    assert image.env["SAGAKIT_APP_DIR"] == "/app"
    assert "/app" in image.env["PYTHONPATH"].split(":")
    assert image.env["SAGAKIT_DATA_DIR"] == image.workdir == "/data"
    (user,) = instructions(final, "USER")[-1:]
    assert user.split(":")[0] not in ("root", "0")
    assert image.entrypoint == SAGAKIT and "sagakit" in project["project"]["scripts"]
    assert [json.loads(c) for c in instructions(final, "CMD")] == [["--help"]]
    assert instructions(final, "EXPOSE") == [str(DEFAULT_HTTP_PORT)]
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        [
            "git",
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *needed,
            "services",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    sources = [f for f in listed.stdout.splitlines() if (ROOT / f).exists()]
    assert {f.split("/")[0] for f in sources} == {*needed, "services"}
    assert [f for f in sources if dockerignored(f, patterns)] == []
    for junk in (
        ".git/HEAD",
        ".venv/bin/python",
        "services/orders/__pycache__/api.cpython-311.pyc",
        "services/payments.sqlite3",
        "src/sagakit/__pycache__/cli.cpython-311.pyc",
        "tests/unit/test_deploy.py",
        ".env",
    ):
        assert dockerignored(junk, patterns), junk


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
    generated = [
        g for kind in ("configMapGenerator", "secretGenerator") for g in kustomization[kind]
    ]
    # a generator's file (KEY=FILE) is data, not a resource: prometheus-rules.yaml
    sources = {DEPLOY / f.rpartition("=")[2] for g in generated for f in g.get("files", [])}
    assert files == set(DEPLOY.glob("*.yaml")) - {DEPLOY / "kustomization.yaml"} - sources
    raw = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(manifests) == len(raw) + len(generated)
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


@pytest.mark.parametrize("profile", PROFILE_APPS)
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
