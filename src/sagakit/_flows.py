"""`sagakit demo` and `sagakit compare`: a scenario's app run in this process, measured.

A run: fresh topics (a namespace per run) and a fresh data directory; the scenario's
reference data; the app's components in this process; `count` seeded start requests
(at most `concurrency` in flight); then the outcomes, latency percentiles and the
scenario's check of the business state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ._app import App
from ._evaluator import SagaInstance, Transition
from ._idempotency import SqliteStore
from ._inspect import read_topic
from .scenario import Ended, Scenario, Start, Style, World
from .tracing import Tracing
from .transport._base import Transport

ProgressFn = Callable[[int, int], None]
STYLES: tuple[Style, ...] = ("orchestration", "choreography")


@dataclass
class FlowResult:
    """One run of a scenario in one style."""

    scenario: str
    style: str
    count: int
    outcomes: dict[str, int]
    unfinished: int
    latency_ms: dict[str, float]
    consistent: bool
    violations: list[str]
    duration_s: float
    throughput_per_s: float = 0.0
    saga_outcomes: dict[str, int] = field(default_factory=dict)
    outcomes_digest: str = ""
    namespace: str = ""

    @property
    def ok(self) -> bool:
        return self.unfinished == 0 and self.consistent

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    if len(values) == 1:
        v = round(values[0], 2)
        return {"p50": v, "p95": v, "p99": v, "max": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(q[49], 2),
        "p95": round(q[94], 2),
        "p99": round(q[98], 2),
        "max": round(max(values), 2),
    }


def app_of(scenario: Scenario, style: Style) -> App:
    app = scenario.app if style == "orchestration" else scenario.choreography
    if app is None:
        raise ValueError(
            f"{type(scenario).__name__} has no choreography app: set its `choreography` "
            "to compare the styles"
        )
    return app


@contextlib.contextmanager
def data_directory(app: App, path: Path | None = None) -> Iterator[Path]:
    """A data directory for one run (a fresh temporary one unless `path`), set as
    SAGAKIT_DATA_DIR for this process; the app's SQLite stores are closed before and
    after, so they open there."""
    _close_stores(app)
    previous = os.environ.get("SAGAKIT_DATA_DIR")
    with contextlib.ExitStack() as stack:
        where = path or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sagakit-")))
        os.environ["SAGAKIT_DATA_DIR"] = str(where)
        try:
            yield where
        finally:
            _close_stores(app)
            if previous is None:
                os.environ.pop("SAGAKIT_DATA_DIR", None)
            else:
                os.environ["SAGAKIT_DATA_DIR"] = previous


def _close_stores(app: App) -> None:
    for service in app.services:
        if isinstance(service.store, SqliteStore):
            service.store.close()


class _Ended:
    """The sagas (business transactions) that ended, and whoever waits for more."""

    def __init__(self, ids: set[str], progress: ProgressFn | None) -> None:
        self.wanted = ids
        self.progress = progress
        self.ended: dict[str, str] = {}
        self.latency_ms: dict[str, float] = {}
        self.changed = anyio.Event()

    def add(self, saga_id: str, status: str, latency_ms: float | None) -> None:
        if saga_id in self.ended or saga_id not in self.wanted:
            return
        self.ended[saga_id] = status
        if latency_ms is not None:
            self.latency_ms[saga_id] = latency_ms
        if self.progress is not None:
            self.progress(len(self.ended), len(self.wanted))
        self.changed.set()
        self.changed = anyio.Event()

    def transition(self, t: Transition) -> None:
        if t.status.settled:
            self.add(t.saga_id, t.status.value, float(t.at_ms - t.started_ms))

    async def wait_until(self, count: int) -> None:
        while len(self.ended) < count:
            await self.changed.wait()


async def run_flow(
    scenario: Scenario,
    transport: Transport,
    *,
    style: Style = "orchestration",
    count: int = 100,
    seed: int = 7,
    run: str | None = None,
    namespace: str | None = None,
    partitions: int | None = None,
    concurrency: int | None = None,
    timeout_s: float = 120.0,
    progress: ProgressFn | None = None,
    tracing: Callable[[str], Tracing] | None = None,
    data_dir: Path | None = None,
) -> FlowResult:
    """Run `count` of the scenario's sagas in `style`, in this process, and check them."""
    app = app_of(scenario, style)
    run = run or uuid.uuid4().hex[:8]
    ns = namespace if namespace is not None else f"{style}-{run}."
    with data_directory(app, data_dir) as where:
        runner_transitions: list[Callable[[Transition], None]] = []
        runner = app.runner(
            transport,
            namespace=ns,
            partitions=partitions,
            tracing=tracing,
            on_transition=lambda t: [f(t) for f in runner_transitions] and None,
        )
        world = World(app, style, transport, ns, run, where)
        starts = list(scenario.starts(count, seed=seed, run=run))
        ended = _Ended({s.saga_id for s in starts}, progress)
        # the journal's view: the business state may show an end before the orchestrator
        # has recorded the last reply, and the check compares both
        settled = _Ended({s.saga_id for s in starts}, None)
        business = scenario.outcomes(world, []) is not None
        if style == "orchestration":
            runner_transitions.append(settled.transition)
            if not business:
                runner_transitions.append(ended.transition)
        scenario.prepare(world, starts)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            with anyio.fail_after(max(timeout_s, 30.0)):
                await runner.wait_ready()
            if business:
                tg.start_soon(_poll_outcomes, scenario, world, starts, ended)
            started = time.perf_counter()
            with anyio.move_on_after(timeout_s) as waited:
                window = concurrency or len(starts)
                placed = 0
                while placed < len(starts):
                    room = window - (placed - len(ended.ended))
                    if room > 0:
                        await scenario.start(world, starts[placed : placed + room])
                        placed += room
                    else:
                        await ended.wait_until(len(ended.ended) + 1)
                await ended.wait_until(len(starts))
            duration = time.perf_counter() - started
            if style == "orchestration" and not waited.cancelled_caught:
                with anyio.move_on_after(max(5.0, timeout_s - duration)):
                    await settled.wait_until(len(starts))
            outcome_counts = dict(sorted(Counter(ended.ended.values()).items()))
            unfinished = len(starts) - len(ended.ended)
            world.instances = _instances(runner.orchestrators.values())
            tg.cancel_scope.cancel()
        violations = scenario.check(world, starts)
        saga_outcomes = Counter(i.status.value for i in world.instances.values())
    return FlowResult(
        scenario=type(scenario).__name__,
        style=style,
        count=len(starts),
        outcomes=outcome_counts,
        unfinished=unfinished,
        latency_ms=percentiles(list(ended.latency_ms.values())),
        consistent=not violations,
        violations=violations,
        duration_s=round(duration, 3),
        throughput_per_s=round(len(ended.ended) / duration, 1) if duration > 0 else 0.0,
        saga_outcomes=dict(sorted(saga_outcomes.items())),
        outcomes_digest=outcome_digest(ended.ended, run),
        namespace=ns,
    )


async def _poll_outcomes(
    scenario: Scenario, world: World, starts: list[Start], ended: _Ended
) -> None:
    """Follow the business state (other tasks write it): every 50 ms, what ended."""
    while True:
        outcomes = scenario.outcomes(world, starts) or {}
        for saga_id, outcome in outcomes.items():
            ended.add(saga_id, outcome.status, _latency(outcome))
        await anyio.sleep(0.05)


def _latency(outcome: Ended) -> float | None:
    if outcome.started_ms is None or outcome.ended_ms is None:
        return None
    return outcome.ended_ms - outcome.started_ms


def _instances(orchestrators: Any) -> dict[str, SagaInstance]:
    found: dict[str, SagaInstance] = {}
    for orchestrator in orchestrators:
        found.update({i.saga_id: i for i in orchestrator.instances()})
    return found


def outcome_digest(ended: dict[str, str], run: str) -> str:
    """A hash of the sorted (saga id without the run, outcome) pairs: equal when the
    outcomes are, whichever style produced them."""
    pairs = sorted((saga_id.replace(run, "", 1), status) for saga_id, status in ended.items())
    return hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


# -- compare ------------------------------------------------------------------------------


@dataclass
class Traffic:
    messages: int
    bytes: int
    by_kind: dict[str, int]


def topic_kind(topic: str) -> str:
    for suffix in (".journal", ".inbox", ".commands", ".events", ".dlq"):
        if topic.endswith(suffix):
            return suffix[1:]
    return "other"


async def measure_traffic(transport: Transport, namespace: str) -> Traffic:
    """Every record the run wrote under `namespace`: count, bytes, and count per topic kind."""
    messages = size = 0
    by_kind: Counter[str] = Counter()
    for topic in await transport.existing_topics():
        if not topic.startswith(namespace):
            continue
        records = await read_topic(transport, topic)
        messages += len(records)
        by_kind[topic_kind(topic)] += len(records)
        for r in records:
            size += len(r.key or b"") + len(r.value or b"")
            size += sum(len(k) + len(v or b"") for k, v in r.headers)
    return Traffic(messages, size, dict(sorted(by_kind.items())))


def coupling(app: App) -> dict[str, dict[str, Any]]:
    """Per component: the topics it reads and writes, and the services it must know.

    Derived from the definitions (subscriptions, saga steps), not written down; topic
    names without a namespace.
    """
    services = {s.name for s in app.services}
    result: dict[str, dict[str, Any]] = {}
    for saga in app.sagas:
        commands = sorted(saga.command_topics())
        result[f"{saga.name} orchestrator"] = {
            "reads": [saga.inbox_topic],
            "writes": sorted([saga.journal_topic, *commands]),
            "knows": sorted({t.split(".")[0] for t in commands}),
        }
    for service in app.services:
        saved, service.namespace = service.namespace, ""
        try:
            reads = service.subscribed_topics()
            writes = {
                saga.inbox_topic  # replies go to the inbox of the saga that commands it
                for saga in app.sagas
                if service.command_types() and service.commands_topic in saga.command_topics()
            }
            if service.event_types():
                writes.add(service.events_topic)
        finally:
            service.namespace = saved
        knows = sorted({t.split(".")[0] for t in reads} & services - {service.name})
        result[service.name] = {"reads": reads, "writes": sorted(writes), "knows": knows}
    return result


def _per_style(progress: Callable[[str, int, int], None] | None, style: str) -> ProgressFn | None:
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(style, done, total)


async def compare(
    scenario: Scenario,
    connect: Callable[[Style], Any],
    *,
    count: int = 200,
    seed: int = 7,
    concurrency: int | None = None,
    timeout_s: float = 300.0,
    progress: Callable[[str, int, int], None] | None = None,
    tracing: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Both styles on the same seeded starts, each on fresh topics (and whatever
    `connect(style)` gives: an async context manager of a transport), measured the same
    way."""
    run = uuid.uuid4().hex[:8]
    results: dict[str, dict[str, Any]] = {}
    for style in STYLES:
        app = app_of(scenario, style)
        namespace = f"{style}-{run}."
        tracings = tracing() if tracing is not None else None
        async with connect(style) as transport:
            result = await run_flow(
                scenario,
                transport,
                style=style,
                count=count,
                seed=seed,
                run=run,
                namespace=namespace,
                concurrency=concurrency,
                timeout_s=timeout_s,
                progress=_per_style(progress, style),
                tracing=tracings,
            )
            if tracings is not None:
                tracings.shutdown()
            if progress:
                progress(f"{style}: measuring traffic", count, count)
            traffic = await measure_traffic(transport, namespace)
        data = result.to_json()
        n = max(result.count, 1)
        data.update(
            messages_per_saga=round(traffic.messages / n, 2),
            bytes_per_saga=round(traffic.bytes / n, 1),
            messages_by_topic_kind=traffic.by_kind,
            coupling=coupling(app),
        )
        results[style] = data
    return results
