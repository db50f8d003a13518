"""Helpers for tests that run the sample app as OS processes on the embedded broker."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio

from sagakit import KafkaEventLog, KafkaTransport, SagaStatus
from sagakit._chaos import dead_letters, journal_instances
from sagakit._dlq import DeadLetter
from sagakit._inspect import read_topic
from sagakit._journal import Replayer, decode_instance, decode_transition
from sagakit._processes import ProcessSystem
from sagakit._snapshots import replay_from_latest_snapshot
from services.app import app, choreography
from services.system import SampleSystem, build_system, check_consistency, seed_orders

ROOT = Path(__file__).resolve().parents[2]


def sample_processes(
    bootstrap: str,
    data_dir: Path,
    *,
    namespace: str,
    orchestrators: int = 2,
    style: str = "orchestration",
    **options: object,
) -> ProcessSystem:
    """The sample app's components as processes (`sagakit run services.app:...`)."""
    chosen, spec = (
        (app, "services.app:app")
        if style == "orchestration"
        else (
            choreography,
            "services.app:choreography",
        )
    )
    return ProcessSystem(
        chosen,
        spec,
        bootstrap,
        data_dir,
        app_dir=ROOT,
        namespace=namespace,
        orchestrators=orchestrators,
        **options,  # type: ignore[arg-type]
    )


async def prepare(
    transport: KafkaTransport, db_dir: Path, namespace: str, orders: int, seed: int = 1
) -> tuple[SampleSystem, list]:  # type: ignore[type-arg]
    """The sample system on `db_dir` (the files the processes use), seeded, topics made."""
    system = build_system(db_dir=db_dir, namespace=namespace)
    new_orders = seed_orders(system, orders, seed=seed, run=namespace.rstrip("."))
    await app.runner(transport, namespace=namespace).ensure_topics()
    return system, new_orders


async def wait_all_ended(system: SampleSystem, timeout: float = 90.0) -> None:
    """Poll the orders database (other processes write it) until no order is PENDING."""
    with anyio.fail_after(timeout):
        while system.orders.repository.count_by_status().get("PENDING", 0):  # noqa: ASYNC110
            await anyio.sleep(0.2)


def duplicated_effects(system: SampleSystem) -> int:
    """Orders with a business effect applied more than once."""
    from services.inventory.service import StockRepository
    from services.payments.service import CreditRepository
    from services.shipping.service import ShipmentRepository

    counts = [
        CreditRepository(system.db("payments")).reservations_per_order(),
        StockRepository(system.db("inventory")).reservations_per_order(),
        ShipmentRepository(system.db("shipping")).shipments_per_order(),
    ]
    return sum(1 for per_order in counts for n in per_order.values() if n > 1)


async def dead_letter_reasons(transport: KafkaTransport, namespace: str) -> list[str]:
    """What each dead letter of the namespace says, for a failing test's message."""
    reasons = []
    for topic in await transport.existing_topics():
        if topic.startswith(namespace) and topic.endswith(".dlq"):
            for r in await read_topic(transport, topic):
                d = DeadLetter.of(r)
                reasons.append(f"{topic}@{r.offset}: {d.error_type}: {d.error_message}")
    return reasons


async def assert_invariants(
    transport: KafkaTransport, system: SampleSystem, namespace: str, orders: int
) -> None:
    """Every order ended, consistent, no effect twice, the journal (if orchestrated)
    agrees and has no gap, and nothing was dead-lettered."""
    counts = system.orders.repository.count_by_status()
    assert sum(counts.values()) == orders
    assert set(counts) <= {"APPROVED", "REJECTED"}, counts
    assert check_consistency(system) == []
    assert duplicated_effects(system) == 0
    dlq, reasonless = await dead_letters(transport, namespace)
    assert dlq == {} and reasonless == [], await dead_letter_reasons(transport, namespace)
    if system.orders.style == "choreography":
        return
    expected = {"APPROVED": SagaStatus.COMPLETED, "REJECTED": SagaStatus.COMPENSATED}
    with anyio.fail_after(30):
        while True:  # the orchestrator records the last replies after the orders ended
            instances, anomalies = await journal_instances(transport, app, namespace)
            wrong = [
                f"{o.order_id}: journal {getattr(instances.get(o.order_id), 'status', None)}, "
                f"order {o.status}"
                for o in system.orders.repository.all()
                if o.order_id not in instances
                or instances[o.order_id].status is not expected[o.status]
            ]
            if not wrong:
                break
            await anyio.sleep(0.5)
    assert anomalies == []
    await snapshots_agree(transport, namespace)


async def snapshots_agree(transport: KafkaTransport, namespace: str) -> int:
    """Check that each journal partition restored from its latest valid snapshot and the
    tail equals a full replay (the live sagas whole, the ended ones by id and status);
    return how many partitions have a snapshot."""
    with_snapshot = 0
    for saga in app.sagas:
        transitions = functools.partial(decode_transition, saga=saga)
        instances = functools.partial(decode_instance, saga=saga)
        journal = KafkaEventLog(transport, namespace + saga.journal_topic)
        checkpoints = KafkaEventLog(transport, namespace + saga.checkpoints_topic)
        for p in range(app.partitions):
            _, snap = await replay_from_latest_snapshot(
                journal,
                checkpoints,
                p,
                transitions,
                instances,
            )
            if snap is None:
                continue
            with_snapshot += 1
            full = Replayer(transitions)
            async for batch in journal.read(p):
                full.feed(batch)
            assert set(snap.instances) | set(snap.ended) == set(full.instances), p
            for saga_id, instance in snap.instances.items():
                assert instance == full.instances[saga_id], saga_id
            for saga_id, ended in snap.ended.items():
                assert ended.status is full.instances[saga_id].status, saga_id
    return with_snapshot
