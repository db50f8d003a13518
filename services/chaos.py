"""`sagakit chaos`: kill processes of a running sample system at random, then check that
nothing was lost, nothing applied twice, and every saga ended."""

from __future__ import annotations

import random
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from sagakit import KafkaSettings, KafkaTransport, Orchestrator, SagaInstance, SagaStatus
from sagakit._inspect import header, journal_topics, read_journal, read_topic
from sagakit.broker import EmbeddedBroker

from .orders.saga import place_order
from .processes import ProcessSystem
from .system import SampleSystem, build_system, check_consistency, seed_orders

ProgressFn = Callable[[str, int, int], None]


@dataclass
class ChaosResult:
    orders: int
    kills: int
    unfinished: int
    duplicated_effects: int
    consistent: bool
    violations: list[str]
    dlq: dict[str, dict[str, int]]
    journal_anomalies: int
    outcomes: dict[str, int]
    killed: dict[str, int] = field(default_factory=dict)
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


def duplicated_effects(system: SampleSystem) -> int:
    """Orders with a business effect applied more than once."""
    from .inventory.service import StockRepository
    from .payments.service import CreditRepository
    from .shipping.service import ShipmentRepository

    counts = [
        CreditRepository(system.db("payments")).reservations_per_order(),
        StockRepository(system.db("inventory")).reservations_per_order(),
        ShipmentRepository(system.db("shipping")).shipments_per_order(),
    ]
    return sum(1 for per_order in counts for n in per_order.values() if n > 1)


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
    transport: KafkaTransport, namespace: str
) -> tuple[dict[str, SagaInstance], list[str]]:
    """Every saga in the journals of `namespace`, and the journals' anomalies."""
    instances: dict[str, SagaInstance] = {}
    anomalies: list[str] = []
    for topic, partitions in (await journal_topics(transport, namespace)).items():
        view = await read_journal(transport, topic, partitions)
        instances.update(view.instances)
        anomalies.extend(view.anomalies)
    return instances, anomalies


async def total_lag(transport: KafkaTransport, system: SampleSystem, namespace: str) -> int:
    """Records the orchestrators' and services' groups have not committed yet."""
    groups = {f"{namespace}{place_order.name}.orchestrator": [namespace + place_order.inbox_topic]}
    for service in system.services():
        groups[f"{namespace}{service.name}.service"] = service.subscribed_topics()
    lag = 0
    for group, topics in groups.items():
        lag += sum((await transport.group_lag(group, topics)).values())
    return lag


async def audit(
    transport: KafkaTransport, system: SampleSystem, namespace: str
) -> tuple[list[str], int, dict[str, dict[str, int]]]:
    """Journal and DLQ checks: (violations, journal anomalies, dead letters by topic)."""
    violations: list[str] = []
    anomalies = 0
    statuses = {o.order_id: o.status for o in system.orders.repository.all()}
    expected = {"APPROVED": SagaStatus.COMPLETED, "REJECTED": SagaStatus.COMPENSATED}
    for topic, partitions in (await journal_topics(transport, namespace)).items():
        view = await read_journal(transport, topic, partitions)
        anomalies += len(view.anomalies)
        violations.extend(f"journal: {a}" for a in view.anomalies[:20])
        for saga_id, status in statuses.items():
            instance = view.instances.get(saga_id)
            if instance is None:
                violations.append(f"saga {saga_id}: no journal record")
            elif expected.get(status) is not instance.status:
                violations.append(
                    f"saga {saga_id}: journal says {instance.status.value}, order is {status}"
                )
    dlq: dict[str, dict[str, int]] = {}
    for topic in await transport.existing_topics():
        if not (topic.startswith(namespace) and topic.endswith(".dlq")):
            continue
        letters = await read_topic(transport, topic)
        if letters:
            dlq[topic] = dict(Counter(header(r, "error-type") or "?" for r in letters))
        for r in letters:
            if not header(r, "error-type") or not header(r, "error-message"):
                violations.append(f"{topic}@{r.offset}: dead letter without a reason")
    return violations, anomalies, dlq


async def run_chaos(
    *,
    orders: int = 200,
    kill_every_s: float = 5.0,
    seed: int = 7,
    bootstrap: str | None = None,
    timeout_s: float = 300.0,
    partitions: int = 8,
    progress: ProgressFn | None = None,
    work_dir: Path | None = None,
) -> ChaosResult:
    """Run the sample system as processes, kill one every `kill_every_s`, check invariants."""
    if bootstrap is None:
        async with EmbeddedBroker() as broker:
            return await run_chaos(
                orders=orders,
                kill_every_s=kill_every_s,
                seed=seed,
                bootstrap=broker.bootstrap_servers,
                timeout_s=timeout_s,
                partitions=partitions,
                progress=progress,
                work_dir=work_dir,
            )
    run = uuid.uuid4().hex[:8]
    namespace = f"chaos-{run}."
    rng = random.Random(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sagakit-chaos-", dir=work_dir) as tmp:
        db_dir = Path(tmp)
        system = build_system(db_dir=db_dir, partitions=partitions, namespace=namespace)
        new_orders = seed_orders(system, orders, seed=seed, run=run)
        settings = KafkaSettings.embedded(bootstrap, client_id="sagakit-chaos")
        async with KafkaTransport(settings) as transport:
            await Orchestrator(
                place_order, transport, partitions=partitions, namespace=namespace
            ).ensure_topics()
            for service in system.services():
                await service.ensure_topics(transport)
            killed: Counter[str] = Counter()
            async with ProcessSystem(
                bootstrap, db_dir, namespace=namespace, partitions=partitions
            ) as processes:
                if progress:
                    progress("starting processes", 0, len(new_orders))
                await processes.start_all()

                def unfinished() -> int:
                    return system.orders.repository.count_by_status().get("PENDING", 0)

                async def chaos_monkey() -> None:
                    while True:
                        await anyio.sleep(kill_every_s)
                        victim = rng.choice(sorted(processes.members))
                        await processes.kill(victim)
                        killed[victim] += 1
                        await processes.start(victim, wait_ready=None)

                deadline = anyio.current_time() + timeout_s
                async with anyio.create_task_group() as tg:
                    tg.start_soon(chaos_monkey)
                    chunk = max(1, len(new_orders) // 20)
                    for i in range(0, len(new_orders), chunk):
                        await system.orders.place(transport, new_orders[i : i + chunk])
                        await anyio.sleep(0.25)
                    while unfinished() and anyio.current_time() < deadline:
                        if progress:
                            done = len(new_orders) - unfinished()
                            progress(f"{sum(killed.values())} kills", done, len(new_orders))
                        await anyio.sleep(0.5)
                    tg.cancel_scope.cancel()
                # the monkey is gone: let every member come back and the rest finish
                for name, member in processes.members.items():
                    if not member.alive:
                        await processes.start(name, wait_ready=None)
                # other processes write the orders database: polling it is the only way
                while unfinished() and anyio.current_time() < deadline:  # noqa: ASYNC110
                    await anyio.sleep(0.5)
                # the orders may have ended before the orchestrator consumed the last
                # replies: check only once the journal shows every saga settled and no
                # group has records left to read
                ids = {o.order_id for o in new_orders}
                unsettled, lag = len(ids), -1
                while anyio.current_time() < deadline:
                    instances, _ = await journal_instances(transport, namespace)
                    unsettled = sum(
                        1 for i in ids if i not in instances or not instances[i].status.settled
                    )
                    if progress:
                        progress("waiting for the journal", len(ids) - unsettled, len(ids))
                    if not unsettled:
                        lag = await total_lag(transport, system, namespace)
                        if lag == 0:
                            break
                    await anyio.sleep(1.0)
                if progress:
                    progress("checking", len(new_orders) - unfinished(), len(new_orders))
                violations = check_consistency(system)
                audit_violations, anomalies, dlq = await audit(transport, system, namespace)
                violations.extend(audit_violations)
                instances, _ = await journal_instances(transport, namespace)
                reasons = Counter(reason_of(instances[i]) for i in ids if i in instances)
        outcomes = dict(sorted(system.orders.repository.count_by_status().items()))
        result = ChaosResult(
            orders=len(new_orders),
            kills=sum(killed.values()),
            unfinished=outcomes.get("PENDING", 0),
            duplicated_effects=duplicated_effects(system),
            consistent=not violations,
            violations=violations,
            dlq=dlq,
            journal_anomalies=anomalies,
            outcomes=outcomes,
            killed=dict(sorted(killed.items())),
            duration_s=round(time.perf_counter() - started, 2),
            reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            unsettled_in_journal=unsettled,
            lag=max(lag, 0),
        )
        system.close()
        return result
