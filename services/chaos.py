"""`sagakit chaos`: kill processes of a running sample system at random, then check that
nothing was lost, nothing applied twice, and every saga ended."""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from sagakit import KafkaSettings, KafkaTransport, Orchestrator, SagaStatus
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

    @property
    def ok(self) -> bool:
        return self.consistent and self.unfinished == 0 and not self.violations

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
                if progress:
                    progress("checking", len(new_orders) - unfinished(), len(new_orders))
                violations = check_consistency(system)
                audit_violations, anomalies, dlq = await audit(transport, system, namespace)
                violations.extend(audit_violations)
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
        )
        system.close()
        return result
