"""The system under test, running and ready for load: a scenario's app as OS processes on
Kafka (`KafkaRig`), or all of it in this process on `MemoryTransport` (`MemoryRig`, the
framework's own CPU cost with no client or broker).

Either way the driver starts sagas as the scenario says (`Scenario.start`) and sees them
end as a client would: orchestrated sagas by following their journals, choreographed
ones through the scenario's view of the business state (`Scenario.outcomes`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import orjson
from anyio.abc import TaskGroup

from .._app import App
from .._flows import app_of, data_directory
from .._journal import TRANSITION, TRANSITIONS
from .._processes import ProcessSystem
from ..eventlog.kafka import EPOCH_HEADER, KIND_HEADER
from ..scenario import Scenario, Start, Style, World
from ..tracing import Tracing
from ..transport._base import Record, Transport
from ..transport.kafka import KafkaSettings, KafkaTransport
from ..transport.memory import MemoryTransport
from .baseline import ProgressFn
from .cpu import cpu_seconds, own_cpu_seconds

_SETTLED = (b'"status":"COMPLETED"', b'"status":"COMPENSATED"', b'"status":"RESOLVED"')


@dataclass(frozen=True, slots=True)
class RigSetup:
    """What runs: style, scale-out, namespace, and the environment of every component."""

    style: Style = "orchestration"
    orchestrators: int = 1
    partitions: int = 8
    namespace: str = ""
    profile: str = "embedded"
    env: Mapping[str, str] | None = None
    service_concurrency: int | None = None
    simulated_io_s: float = 0.0

    def component_env(self) -> dict[str, str]:
        """The environment of every component process (`sagakit run` reads these)."""
        env = dict(self.env or {})
        if self.service_concurrency is not None:
            env["SAGAKIT_SERVICE_CONCURRENCY"] = str(self.service_concurrency)
        if self.simulated_io_s:
            env["SAGAKIT_SIMULATED_IO_MS"] = repr(self.simulated_io_s * 1000)
        return env


class Rig(Protocol):
    """A running system the load drivers can start sagas on and watch."""

    async def place(self, count: int) -> None: ...

    def pending(self) -> int: ...

    def rows(self) -> list[tuple[float, float | None]]: ...

    def cpu(self) -> dict[str, float]: ...


class StartSource:
    """The scenario's start requests, `count` at a time, with ids unique in the run."""

    def __init__(self, scenario: Scenario, run: str, seed: int = 7) -> None:
        self.scenario = scenario
        self.run = run
        self.seed = seed
        self.issued = 0

    def take(self, count: int) -> Sequence[Start]:
        starts = self.scenario.starts(count, seed=self.seed, run=self.run, first=self.issued)
        self.issued += count
        return starts


class _Driver:
    """The driver's side: start sagas, count the pending ones, read (started, ended)."""

    def __init__(
        self, scenario: Scenario, world: World, source: StartSource, tg: TaskGroup
    ) -> None:
        self.scenario = scenario
        self.world = world
        self.source = source
        self.placed: dict[str, float] = {}  # saga id -> when it was started (ms)
        self.ended: dict[str, float] = {}  # saga id -> when it ended (ms, its last record)
        self._starts: list[Start] = []
        if world.style == "choreography":
            tg.start_soon(self._poll_outcomes)

    async def place(self, count: int) -> None:
        starts = self.source.take(count)
        now = time.time() * 1000
        for s in starts:
            self.placed[s.saga_id] = now
        self._starts.extend(starts)
        await self.scenario.start(self.world, starts)

    def pending(self) -> int:
        return len(self.placed) - len(self.ended)

    def rows(self) -> list[tuple[float, float | None]]:
        return [(at, self.ended.get(saga_id)) for saga_id, at in self.placed.items()]

    def saw_ended(self, saga_id: str, at_ms: float) -> None:
        if saga_id in self.placed and saga_id not in self.ended:
            self.ended[saga_id] = at_ms

    async def _poll_outcomes(self) -> None:
        while True:
            outcomes = self.scenario.outcomes(self.world, self._starts) or {}
            for saga_id, outcome in outcomes.items():
                self.saw_ended(saga_id, outcome.ended_ms or time.time() * 1000)
            await anyio.sleep(0.1)


async def follow_journals(
    transport: Transport, topics: Sequence[str], driver: _Driver, *, group: str
) -> None:
    """Note every saga the journals show settled, as the records arrive (until cancelled)."""
    async with transport.subscribe(list(topics), group_id=group) as sub:
        while True:
            for record in await sub.getmany(timeout=0.05, max_records=2000):
                _settled(record, driver)


def _settled(record: Record, driver: _Driver) -> None:
    kind = epoch = None
    for name, value in record.headers:
        if name == KIND_HEADER:
            kind = value
        elif name == EPOCH_HEADER:
            epoch = value
    if kind not in (TRANSITION.encode(), TRANSITIONS.encode()) or epoch is None:
        return  # a claim or a snapshot
    if record.value is None:
        return
    lines = record.value.split(b"\n") if kind == TRANSITIONS.encode() else [record.value]
    for line in lines:
        if any(marker in line for marker in _SETTLED):
            t = orjson.loads(line)
            driver.saw_ended(t["saga_id"], float(t["at"]))


class KafkaRig(_Driver):
    """Components as separate OS processes (`ProcessSystem`); CPU read from /proc."""

    def __init__(
        self,
        scenario: Scenario,
        world: World,
        source: StartSource,
        tg: TaskGroup,
        processes: ProcessSystem,
        broker_pid: int | None,
    ) -> None:
        super().__init__(scenario, world, source, tg)
        self.transport = world.transport
        self.processes = processes
        self.broker_pid = broker_pid

    def cpu(self) -> dict[str, float]:
        seconds = {"driver": own_cpu_seconds()}
        pids = {name: m.pid for name, m in self.processes.members.items()}
        pids["broker"] = self.broker_pid
        for name, pid in pids.items():
            used = None if pid is None else cpu_seconds(pid)
            if used is not None:
                seconds[name] = used
        return seconds


class MemoryRig(_Driver):
    """Everything in this process on `MemoryTransport`: CPU is this process's, all of it."""

    transport: MemoryTransport

    def cpu(self) -> dict[str, float]:
        return {"process": own_cpu_seconds()}


def _journals(app: App, namespace: str) -> list[str]:
    return [namespace + s.journal_topic for s in app.sagas]


@asynccontextmanager
async def kafka_rig(
    scenario: Scenario,
    app_spec: str,
    setup: RigSetup,
    settings: KafkaSettings,
    *,
    app_dir: Path | None = None,
    broker_pid: int | None = None,
    progress: ProgressFn | None = None,
    work_dir: Path | None = None,
) -> AsyncIterator[KafkaRig]:
    """Start the processes on the broker `settings` names and wait until each is READY."""
    app = app_of(scenario, setup.style)
    run = setup.namespace.rstrip(".") or "bench"
    with (
        tempfile.TemporaryDirectory(prefix="sagakit-bench-", dir=work_dir) as tmp,
        data_directory(app, Path(tmp)) as data_dir,
    ):
        async with KafkaTransport(settings) as transport, anyio.create_task_group() as tg:
            for service in app.services:
                service.configure(namespace=setup.namespace, partitions=setup.partitions)
            world = World(app, setup.style, transport, setup.namespace, run, data_dir)
            source = StartSource(scenario, run)
            scenario.prepare(world, [])
            runner = app.runner(transport, namespace=setup.namespace, partitions=setup.partitions)
            await runner.ensure_topics()
            orchestrators = setup.orchestrators if app.sagas else 0
            async with ProcessSystem(
                app,
                app_spec,
                settings.bootstrap_servers,
                data_dir,
                app_dir=app_dir,
                namespace=setup.namespace,
                partitions=setup.partitions,
                orchestrators=orchestrators,
                profile=setup.profile,
            ) as processes:
                env = setup.component_env()
                names = list(processes.members)
                # orchestrators one after another (one group), then the services together
                for i, name in enumerate(processes.orchestrators):
                    if progress:
                        progress(f"starting {name}", i, len(names))
                    await processes.start(name, env=env, wait_ready=60)
                if progress:
                    progress("starting services", orchestrators, len(names))
                async with anyio.create_task_group() as starting:
                    for name in processes.services:
                        starting.start_soon(
                            lambda n: processes.start(n, env=env, wait_ready=60), name
                        )
                rig = KafkaRig(scenario, world, source, tg, processes, broker_pid)
                if app.sagas:
                    tg.start_soon(
                        lambda: follow_journals(
                            transport,
                            _journals(app, setup.namespace),
                            rig,
                            group=f"{setup.namespace}bench-follower",
                        )
                    )
                yield rig
                tg.cancel_scope.cancel()


@asynccontextmanager
async def memory_rig(
    scenario: Scenario, setup: RigSetup, *, work_dir: Path | None = None
) -> AsyncIterator[MemoryRig]:
    """Orchestrators and services as tasks of this process, on one `MemoryTransport`."""
    app = app_of(scenario, setup.style)
    run = setup.namespace.rstrip(".") or "bench"
    tracings: dict[str, Tracing] = {}

    def tracing(component: str) -> Tracing:
        tracings.setdefault(component, Tracing.from_env(component))
        return tracings[component]

    with (
        tempfile.TemporaryDirectory(prefix="sagakit-bench-", dir=work_dir) as tmp,
        data_directory(app, Path(tmp)) as data_dir,
    ):
        transport = MemoryTransport()
        world = World(app, setup.style, transport, setup.namespace, run, data_dir)
        source = StartSource(scenario, run)
        try:
            async with anyio.create_task_group() as tg:
                rig = MemoryRig(scenario, world, source, tg)
                rig.transport = transport
                runners = [
                    app.runner(
                        transport,
                        components=[c for c in app.components if i == 0 or c.startswith("orch")],
                        namespace=setup.namespace,
                        partitions=setup.partitions,
                        tracing=tracing,
                        service_concurrency=setup.service_concurrency,
                        simulated_io_s=setup.simulated_io_s,
                        on_transition=lambda t: (
                            rig.saw_ended(t.saga_id, float(t.at_ms)) if t.status.terminal else None
                        ),
                    )
                    for i in range(setup.orchestrators if app.sagas else 1)
                ]
                scenario.prepare(world, [])
                for runner in runners:
                    await tg.start(runner.run)
                with anyio.fail_after(30):
                    for runner in runners:
                        await runner.wait_ready()
                yield rig
                tg.cancel_scope.cancel()
        finally:
            for t in tracings.values():
                t.shutdown()
