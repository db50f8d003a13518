"""One measurement: a fresh broker (unless one is given) and a fresh namespace, the raw
baseline on that broker, the system started, a load applied, and every figure derived:
sagas and steps per second, latency percentiles, CPU per step of every process, messages
and bytes per saga, and the ratios to the baseline.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._flows import Traffic, measure_traffic, percentiles
from ..broker import EmbeddedBroker
from ..scenario import Style
from ..transport._base import Transport
from ..transport.kafka import KafkaSettings
from ..transport.memory import MemoryTransport
from .baseline import Baseline, ProgressFn, measure_baseline
from .cpu import children_named
from .hops import hop_latencies
from .load import Window, closed_loop, open_loop
from .rig import Rig, RigSetup, kafka_rig, memory_rig

if TYPE_CHECKING:
    from ..scenario import Scenario


#: The latency the design asks for at 70 % of peak load (p99, ms).
P99_TARGET_MS = 75.0

Mode = Literal["closed", "open"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one measurement depends on."""

    style: Style = "orchestration"
    mode: Mode = "closed"
    concurrency: int = 8
    rate: float = 0.0
    transport: Literal["kafka", "memory"] = "kafka"
    orchestrators: int = 1
    partitions: int = 8
    trace_sample: float = 0.0
    duration_s: float = 10.0
    warmup_s: float = 2.0
    drain_s: float = 30.0
    bootstrap: str | None = None
    baseline_messages: int = 20_000
    baseline_round_trips: int = 200
    #: every service record waits this long first (simulated I/O of a handler)
    participant_latency_ms: float = 0.0
    #: records each service handles at once (None: the app's own setting; 1: serially)
    service_concurrency: int | None = None

    def describe(self) -> str:
        load = f"{self.concurrency} in flight" if self.mode == "closed" else f"{self.rate:.0f}/s"
        extra = ""
        if self.participant_latency_ms:
            extra = f", handlers +{self.participant_latency_ms:g} ms"
        if self.service_concurrency is not None:
            extra += f", services {self.service_concurrency} at a time"
        return f"{self.style}, {self.transport}, {self.mode} {load}{extra}"


@dataclass(frozen=True)
class Target:
    """What is measured: a scenario, how other processes import its app (per style:
    ``MODULE:ATTR``), and the steps of its saga (what CPU per step divides by)."""

    scenario: Scenario
    app_specs: Mapping[str, str]
    app_dir: Path | None = None

    @property
    def steps_per_saga(self) -> int:
        sagas = self.scenario.app.sagas
        return max(1, len(sagas[0].steps)) if sagas else 1


@dataclass
class Measurement:
    plan: dict[str, Any]
    namespace: str
    completed: int
    placed: int
    unfinished: int
    censored: int
    window_s: float
    sagas_per_s: float
    steps_per_s: float
    arrival_per_s: float
    latency_ms: dict[str, float]
    cpu_us_per_step: dict[str, float]
    cpu_cores: dict[str, float]
    messages_per_saga: float
    bytes_per_saga: float
    messages_by_kind: dict[str, int]
    baseline: dict[str, Any] | None
    ratios: dict[str, float] = field(default_factory=dict)
    hops: list[dict[str, Any]] = field(default_factory=list)
    traces_exported: dict[str, Any] | None = None
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def git_revision() -> str | None:
    """`git describe --always --dirty` of the repository: the code a measurement ran."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except OSError:
        return None
    return described.stdout.strip() or None


def trace_env(sample: float, endpoint: str | None) -> dict[str, str]:
    """The standard OpenTelemetry variables for `sample` (0 turns export off)."""
    env = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{sample:g}",
        "OTEL_TRACES_EXPORTER": "otlp" if sample > 0 else "none",
    }
    if sample > 0 and endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    return env


@contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables of this process for a while (the driver's own tracing)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@asynccontextmanager
async def broker_for(plan: Plan) -> AsyncIterator[tuple[KafkaSettings, int | None]]:
    """(client settings, broker pid): a fresh embedded broker unless `plan.bootstrap`."""
    if plan.bootstrap is not None:
        yield KafkaSettings(plan.bootstrap, client_id="sagakit-bench"), None
        return
    async with EmbeddedBroker() as broker:
        pids = children_named("tansu")
        settings = KafkaSettings.embedded(broker.bootstrap_servers, client_id="sagakit-bench")
        yield settings, (max(pids) if pids else None)


def topic_kind(topic: str) -> str:
    """journal, inbox, commands, events, dlq or other, as `measure_traffic` counts them."""
    for suffix in (".journal", ".inbox", ".commands", ".events", ".dlq"):
        if topic.endswith(suffix):
            return suffix[1:]
    return "other"


def memory_traffic(transport: MemoryTransport, namespace: str) -> Traffic:
    """`measure_traffic` for the in-memory broker."""
    messages = size = 0
    by_kind: dict[str, int] = {}
    for topic in transport.broker.topics():
        if not topic.startswith(namespace):
            continue
        records = transport.broker.records(topic)
        messages += len(records)
        by_kind[topic_kind(topic)] = by_kind.get(topic_kind(topic), 0) + len(records)
        for r in records:
            size += len(r.key or b"") + len(r.value or b"")
            size += sum(len(k) + len(v or b"") for k, v in r.headers)
    return Traffic(messages, size, dict(sorted(by_kind.items())))


def summarize(
    plan: Plan,
    steps_per_saga: int,
    namespace: str,
    window: Window,
    rows: list[tuple[float, float | None]],
    traffic: Traffic,
    baseline: Baseline | None,
) -> Measurement:
    """Figures of the measured window, from the orders database and the CPU readings."""
    start, end = window.start_ms, window.end_ms
    completed = sum(1 for _, e in rows if e is not None and start <= e < end)
    latencies, censored = [], 0
    for created, ended in rows:
        if start <= created < end:
            if ended is None:
                # unfinished when the drain gave up: at least this late, never left out
                censored += 1
                latencies.append(window.drain_end_ms - created)
            else:
                latencies.append(ended - created)
    seconds = window.seconds
    sagas_per_s = completed / seconds if seconds > 0 else 0.0
    steps = completed * steps_per_saga
    used = window.cpu_used()
    orchestrators = [n for n in used if n.startswith("orchestrator-")]
    if orchestrators:
        used["orchestrator"] = sum(used[n] for n in orchestrators)
        if len(orchestrators) == 1:
            del used[orchestrators[0]]
    used["total"] = sum(v for n, v in used.items() if n not in orchestrators)
    ended = sum(1 for _, e in rows if e is not None)
    result = Measurement(
        plan=asdict(plan),
        namespace=namespace,
        completed=completed,
        placed=window.placed,
        unfinished=window.left_pending,
        censored=censored,
        window_s=round(seconds, 3),
        sagas_per_s=round(sagas_per_s, 1),
        steps_per_s=round(sagas_per_s * steps_per_saga, 1),
        arrival_per_s=round(window.placed / seconds, 1) if seconds > 0 else 0.0,
        latency_ms=percentiles(latencies),
        cpu_us_per_step={n: round(v / steps * 1e6, 1) if steps else 0.0 for n, v in used.items()},
        cpu_cores={n: round(v / seconds, 3) if seconds else 0.0 for n, v in used.items()},
        messages_per_saga=round(traffic.messages / ended, 2) if ended else 0.0,
        bytes_per_saga=round(traffic.bytes / ended, 1) if ended else 0.0,
        messages_by_kind=traffic.by_kind,
        baseline=baseline.to_json() if baseline is not None else None,
    )
    if baseline is not None:
        result.ratios = ratios(result, baseline)
    return result


def ratios(m: Measurement, baseline: Baseline) -> dict[str, float]:
    """The saga figures divided by the raw ones measured on the same broker."""
    raw_rate = baseline.produce_msgs_per_s
    rt = baseline.round_trip_ms
    out = {
        # a saga per second for each raw message per second the broker and client manage
        "sagas_per_raw_msg": m.sagas_per_s / raw_rate if raw_rate else 0.0,
        # the share of the raw message rate the saga traffic uses
        "msg_rate_per_raw_msg_rate": (
            m.sagas_per_s * m.messages_per_saga / raw_rate if raw_rate else 0.0
        ),
        "latency_p50_per_round_trip_p50": m.latency_ms["p50"] / rt["p50"] if rt["p50"] else 0.0,
        "latency_p99_per_round_trip_p99": m.latency_ms["p99"] / rt["p99"] if rt["p99"] else 0.0,
    }
    return {k: round(v, 4) for k, v in out.items()}


async def measure(
    plan: Plan,
    target: Target,
    *,
    otlp_endpoint: str | None = None,
    baseline: Baseline | None = None,
    progress: ProgressFn | None = None,
) -> Measurement:
    """Run one measurement as `plan` says.

    On Kafka the baseline is measured first on the same fresh broker; on the memory
    transport there is no broker, and the `baseline` given (the run's) is used for ratios.
    """
    revision = git_revision()
    run = uuid.uuid4().hex[:8]
    namespace = f"bench-{run}."
    env = trace_env(plan.trace_sample, otlp_endpoint)
    setup = RigSetup(
        style=plan.style,
        orchestrators=plan.orchestrators,
        partitions=plan.partitions,
        namespace=namespace,
        profile="embedded" if plan.bootstrap is None else "kafka",
        env=env,
        service_concurrency=plan.service_concurrency,
        simulated_io_s=plan.participant_latency_ms / 1000,
    )
    label = plan.describe()

    def report(what: str, done: float, total: float) -> None:
        if progress:
            progress(f"{label} · {what}", done, total)

    async def drive(rig: Rig) -> Window:
        options: dict[str, Any] = dict(
            warmup_s=plan.warmup_s, duration_s=plan.duration_s, drain_s=plan.drain_s
        )
        if plan.mode == "closed":
            return await closed_loop(rig, plan.concurrency, progress=report, **options)
        return await open_loop(rig, plan.rate, progress=report, **options)

    with environ(env):
        if plan.transport == "memory":
            async with memory_rig(target.scenario, setup) as mrig:
                window = await drive(mrig)
                traffic = memory_traffic(mrig.transport, namespace)
                hops = await hops_of(mrig.transport, namespace, window, traffic)
                rows = mrig.rows()
            result = summarize(
                plan, target.steps_per_saga, namespace, window, rows, traffic, baseline
            )
            result.hops, result.revision = hops, revision
            return result
        async with broker_for(plan) as (settings, broker_pid):
            report("baseline", 0, 1)
            own = await measure_baseline(
                settings,
                partitions=plan.partitions,
                messages=plan.baseline_messages,
                round_trip_count=plan.baseline_round_trips,
                progress=report,
            )
            report("starting processes", 0, 1)
            async with kafka_rig(
                target.scenario,
                target.app_specs[plan.style],
                setup,
                settings,
                app_dir=target.app_dir,
                broker_pid=broker_pid,
                progress=report,
            ) as krig:
                window = await drive(krig)
                report("counting messages", 0, 1)
                traffic = await measure_traffic(krig.transport, namespace)
                report("timing hops", 0, 1)
                hops = await hops_of(krig.transport, namespace, window, traffic)
                rows = krig.rows()
        result = summarize(plan, target.steps_per_saga, namespace, window, rows, traffic, own)
        result.hops, result.revision = hops, revision
        return result


async def hops_of(
    transport: Transport, namespace: str, window: Window, traffic: Traffic
) -> list[dict[str, Any]]:
    """The hop latencies of the sagas started in the window (empty topics not read)."""
    empty = {kind for kind, n in traffic.by_kind.items() if n == 0}
    return await hop_latencies(transport, namespace, window.start_ms, window.end_ms, empty)
