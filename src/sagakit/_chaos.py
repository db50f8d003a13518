"""`sagakit chaos`: an app as processes, SIGKILLed at random while a scenario's sagas run;
then nothing may be lost, nothing applied twice, and every saga must have ended."""

from __future__ import annotations

import random
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ._app import App
from ._dlq import DeadLetter
from ._evaluator import SagaInstance, SagaStatus
from ._flows import data_directory
from ._inspect import journal_topics, read_journal, read_topic
from ._processes import ProcessSystem
from .broker import EmbeddedBroker
from .scenario import Scenario, Start, World
from .transport._base import Transport
from .transport.kafka import KafkaSettings, KafkaTransport

ProgressFn = Callable[[str, int, int], None]


@dataclass
class ChaosResult:
    scenario: str
    count: int
    kills: int
    unfinished: int
    consistent: bool
    violations: list[str]
    dlq: dict[str, dict[str, int]]
    journal_anomalies: int
    outcomes: dict[str, int]
    killed: dict[str, int] = field(default_factory=dict)
    #: Processes that exited without being killed (each one is also a violation).
    crashes: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    #: Sagas by how they ended, from the journal: "completed", "compensated:
    #: reserve-credit: business failure CreditLimitExceeded", "compensated: reserve-stock:
    #: timeout after 3 attempts", "parked: ...".
    reasons: dict[str, int] = field(default_factory=dict)
    #: Sagas the journal does not show settled when the check ran (0 when every saga is
    #: completed, compensated or parked), and records the consumer groups had not
    #: committed yet.
    unsettled_in_journal: int = 0
    lag: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.consistent
            and self.unfinished == 0
            and self.unsettled_in_journal == 0
            and not self.violations
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_GAVE_UP = re.compile(r"gave up after (\d+) attempt")


def reason_of(instance: SagaInstance) -> str:
    """How a saga ended, in words a report can count: its status, step and kind of failure."""
    if instance.status is SagaStatus.COMPLETED:
        return "completed"
    status = {
        SagaStatus.COMPENSATED: "compensated",
        SagaStatus.FAILED_NEEDS_ATTENTION: "parked",
    }.get(instance.status, instance.status.value.lower())
    failure = instance.failure or "unknown"
    gave_up = _GAVE_UP.search(failure)
    if "got no reply within" in failure and gave_up:
        step = failure.split(" attempt ", 1)[0]
        return f"{status}: {step}: timeout after {gave_up.group(1)} attempts"
    if failure.startswith("compensation of "):
        step = failure[len("compensation of ") :].split(" ", 1)[0].rstrip(":")
        return f"{status}: {step}: compensation failed"
    step, _, kind = failure.partition(": ")
    if gave_up:
        return f"{status}: {step}: retries ran out after {gave_up.group(1)} attempts"
    if kind:
        return f"{status}: {step}: business failure {kind.rsplit('.', 1)[-1]}"
    return f"{status}: {failure}"


async def journal_instances(
    transport: Transport, app: App, namespace: str
) -> tuple[dict[str, SagaInstance], list[str]]:
    """Every saga in the app's journals, and the journals' anomalies."""
    instances: dict[str, SagaInstance] = {}
    anomalies: list[str] = []
    wanted = {namespace + s.journal_topic for s in app.sagas}
    for topic, partitions in (await journal_topics(transport, namespace)).items():
        if topic in wanted:
            view = await read_journal(transport, topic, partitions)
            instances.update(view.instances)
            anomalies.extend(view.anomalies)
    return instances, anomalies


async def total_lag(transport: KafkaTransport, app: App, namespace: str) -> int:
    """Records the app's orchestrators' and services' groups have not committed yet."""
    groups = {
        f"{namespace}{saga.name}.orchestrator": [namespace + saga.inbox_topic] for saga in app.sagas
    }
    for service in app.services:
        groups[f"{namespace}{service.name}.service"] = service.subscribed_topics() or [
            service.commands_topic
        ]
    lag = 0
    for group, topics in groups.items():
        lag += sum((await transport.group_lag(group, topics)).values())
    return lag


async def dead_letters(
    transport: KafkaTransport, namespace: str
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Dead letters by topic and error type, and those without a reason (violations)."""
    dlq: dict[str, dict[str, int]] = {}
    violations: list[str] = []
    for topic in await transport.existing_topics():
        if not (topic.startswith(namespace) and topic.endswith(".dlq")):
            continue
        letters = [DeadLetter.of(r) for r in await read_topic(transport, topic)]
        if letters:
            dlq[topic] = dict(Counter(d.error_type or "?" for d in letters))
        for d in letters:
            if not d.error_type or not d.error_message:
                violations.append(f"{topic}@{d.record.offset}: dead letter without a reason")
    return dlq, violations


async def run_chaos(
    scenario: Scenario,
    app_spec: str,
    *,
    count: int = 200,
    kill_every_s: float = 5.0,
    max_kills: int | None = None,
    seed: int = 7,
    bootstrap: str | None = None,
    timeout_s: float = 300.0,
    partitions: int = 8,
    orchestrators: int = 2,
    app_dir: Path | None = None,
    progress: ProgressFn | None = None,
    work_dir: Path | None = None,
) -> ChaosResult:
    """Run the scenario's app as processes (`app_spec` is how they import it), kill one
    every `kill_every_s` (`max_kills` at most, then let it settle), then check the journal,
    the DLQs and the business state."""
    if bootstrap is None:
        async with EmbeddedBroker() as broker:
            return await run_chaos(
                scenario,
                app_spec,
                count=count,
                kill_every_s=kill_every_s,
                max_kills=max_kills,
                seed=seed,
                bootstrap=broker.bootstrap_servers,
                timeout_s=timeout_s,
                partitions=partitions,
                orchestrators=orchestrators,
                app_dir=app_dir,
                progress=progress,
                work_dir=work_dir,
            )
    app = scenario.app
    run = uuid.uuid4().hex[:8]
    namespace = f"chaos-{run}."
    rng = random.Random(seed)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="sagakit-chaos-", dir=work_dir) as tmp,
        data_directory(app, Path(tmp)) as data_dir,
    ):
        settings = KafkaSettings.embedded(bootstrap, client_id="sagakit-chaos")
        async with KafkaTransport(settings) as transport:
            world = World(app, "orchestration", transport, namespace, run, data_dir)
            for service in app.services:
                service.configure(namespace=namespace, partitions=partitions)
            starts = list(scenario.starts(count, seed=seed, run=run))
            scenario.prepare(world, starts)
            await app.runner(transport, namespace=namespace, partitions=partitions).ensure_topics()
            killed: Counter[str] = Counter()
            async with ProcessSystem(
                app,
                app_spec,
                bootstrap,
                data_dir,
                app_dir=app_dir,
                namespace=namespace,
                partitions=partitions,
                orchestrators=orchestrators,
            ) as processes:
                if progress:
                    progress("starting processes", 0, len(starts))
                await processes.start_all()
                deadline = anyio.current_time() + timeout_s
                ended = _Ending(scenario, world, starts)

                async def chaos_monkey() -> None:
                    while max_kills is None or sum(killed.values()) < max_kills:
                        await anyio.sleep(kill_every_s)
                        for name in processes.crashed():  # as a supervisor would
                            await processes.start(name, wait_ready=None)
                        victim = rng.choice(sorted(processes.members))
                        await processes.kill(victim)
                        killed[victim] += 1
                        await processes.start(victim, wait_ready=None)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(chaos_monkey)
                    chunk = max(1, len(starts) // 20)
                    for i in range(0, len(starts), chunk):
                        await scenario.start(world, starts[i : i + chunk])
                        await anyio.sleep(0.25)
                    while await ended.unfinished() and anyio.current_time() < deadline:
                        if progress:
                            done = len(starts) - await ended.unfinished()
                            progress(f"{sum(killed.values())} kills", done, len(starts))
                        await anyio.sleep(0.5)
                    tg.cancel_scope.cancel()
                # the monkey is gone: let every member come back and the rest finish
                for name, member in processes.members.items():
                    if not member.alive:
                        await processes.start(name, wait_ready=None)
                # only once the journal shows every saga settled and no group has records
                # left to read is the business state final
                unsettled, lag = len(starts), -1
                while anyio.current_time() < deadline:
                    unsettled = await ended.unfinished()
                    if progress:
                        progress("waiting for the journal", len(starts) - unsettled, len(starts))
                    if not unsettled:
                        lag = await total_lag(transport, app, namespace)
                        if lag == 0:
                            break
                    await anyio.sleep(1.0)
                if progress:
                    progress("checking", len(starts) - unsettled, len(starts))
                world.instances, anomalies = await journal_instances(transport, app, namespace)
                violations = list(scenario.check(world, starts))
                violations.extend(f"journal: {a}" for a in anomalies[:20])
                for s in starts:
                    if s.saga_id not in world.instances and app.sagas:
                        violations.append(f"saga {s.saga_id}: no journal record")
                dlq, reasonless = await dead_letters(transport, namespace)
                violations.extend(reasonless)
                crashes = list(processes.crashes)
                violations.extend(str(crash) for crash in crashes)
        wanted = {s.saga_id for s in starts}
        instances = {k: v for k, v in world.instances.items() if k in wanted}
        outcomes = scenario.outcomes(world, starts)
        if outcomes is not None:
            counts = Counter(e.status for e in outcomes.values())
        else:
            counts = Counter(i.status.value for i in instances.values())
        return ChaosResult(
            scenario=type(scenario).__name__,
            count=len(starts),
            kills=sum(killed.values()),
            unfinished=len(starts) - sum(counts.values()) if outcomes is not None else unsettled,
            consistent=not violations,
            violations=violations,
            dlq=dlq,
            journal_anomalies=len(anomalies),
            outcomes=dict(sorted(counts.items())),
            killed=dict(sorted(killed.items())),
            crashes=dict(sorted(Counter(c.name for c in crashes).items())),
            duration_s=round(time.perf_counter() - started, 2),
            reasons=dict(
                sorted(
                    Counter(reason_of(i) for i in instances.values()).items(),
                    key=lambda kv: (-kv[1], kv[0]),
                )
            ),
            unsettled_in_journal=unsettled,
            lag=max(lag, 0),
        )


class _Ending:
    """Which sagas have not ended yet: in the journal (orchestration) and, when the
    scenario can tell, in the business state."""

    def __init__(self, scenario: Scenario, world: World, starts: Sequence[Start]) -> None:
        self.scenario = scenario
        self.world = world
        self.ids = {s.saga_id for s in starts}
        self.starts = starts

    async def unfinished(self) -> int:
        outcomes = self.scenario.outcomes(self.world, self.starts)
        if outcomes is not None:
            waiting = self.ids - set(outcomes)
            if waiting:
                return len(waiting)
        instances, _ = await journal_instances(
            self.world.transport,
            self.world.app,
            self.world.namespace,
        )
        return sum(1 for i in self.ids if i not in instances or not instances[i].status.settled)
