"""The place-order saga end to end on the embedded broker."""

from __future__ import annotations

import anyio
import pytest

from sagakit import KafkaTransport, Orchestrator, SagaStatus, Transition
from sagakit._flows import run_flow
from services.orders.saga import place_order, place_order_v2
from services.scenario import PlaceOrder
from services.system import build_system, check_consistency, seed_orders

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


async def test_300_orders_all_end_and_state_is_consistent(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    result = await run_flow(
        PlaceOrder(), kafka_transport, count=300, seed=11, timeout_s=90, namespace=f"{unique}."
    )

    assert result.unfinished == 0, result.outcomes
    assert result.violations == []
    assert result.count == 300
    assert sum(result.outcomes.values()) == 300
    # every failure path happened, and each rejected order's saga was compensated
    assert result.outcomes["REJECTED"] >= 3
    assert result.saga_outcomes == {
        "COMPENSATED": result.outcomes["REJECTED"],
        "COMPLETED": result.outcomes["APPROVED"],
    }
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"]


async def test_orchestrator_cancelled_mid_run_is_resumed_by_a_new_instance(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    """A new instance restores from the journal: no saga lost, no effect applied twice."""
    ns = f"{unique}."
    system = build_system(namespace=ns)
    orders = seed_orders(system, 300, seed=3, run=unique)
    ended: dict[str, Transition] = {}
    first_hundred = anyio.Event()
    all_ended = anyio.Event()

    def track(t: Transition) -> None:
        if t.status.terminal:
            ended.setdefault(t.saga_id, t)
            if len(ended) >= 100:
                first_hundred.set()
            if len(ended) == len(orders):
                all_ended.set()

    # both versions, as the app runs them: the orders service starts version 2
    first, second = (
        Orchestrator(
            place_order_v2,
            kafka_transport,
            versions=[place_order],
            namespace=ns,
            on_transition=track,
        )
        for _ in range(2)
    )
    async with anyio.create_task_group() as tg:
        for service in system.services():
            await tg.start(service.run, kafka_transport)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as first_tg:
                await first_tg.start(first.run)
                await first.wait_ready()
                await system.orders.place(kafka_transport, orders)
                await first_hundred.wait()
                first_tg.cancel_scope.cancel()  # mid-run: the batch in hand is finished first
        stopped_at = len(ended)
        assert stopped_at < len(orders), "the first instance finished everything; nothing resumed"

        await tg.start(second.run)
        with anyio.fail_after(90):
            await all_ended.wait()
        # those that ended before the first instance stopped left memory at its last
        # snapshot: the second knows them by id and status
        final = {o.order_id: second.status(o.order_id) for o in orders}
        tg.cancel_scope.cancel()

    assert check_consistency(system) == []
    assert second.stats.restores > 0
    statuses = {o.status for o in system.orders.repository.all()}
    assert statuses <= {"APPROVED", "REJECTED"}
    assert len(final) == len(orders)
    assert set(final.values()) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    system.close()
