"""The pivot that times out although it took effect: the saga must not undo the steps
before it (that left rejected orders with a shipment); it parks for a person instead."""

from __future__ import annotations

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    HandlerContext,
    KafkaTransport,
    MemoryStore,
    Orchestrator,
    Reply,
    RetryPolicy,
    Saga,
    SagaClient,
    SagaStatus,
    Service,
    Step,
)

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


class Hold(Command, type="pivtest.Hold"):
    ref: str


class Held(Reply, type="pivtest.Held"):
    pass


class Unhold(Command, type="pivtest.Unhold"):
    ref: str


class Unheld(Reply, type="pivtest.Unheld"):
    pass


class Ship(Command, type="pivtest.Ship"):
    ref: str


class Shipped(Reply, type="pivtest.Shipped"):
    pass


class ShipFailed(Reply, type="pivtest.ShipFailed"):
    pass


class Ref(BaseModel):
    ref: str


ship = Saga(
    "ship",
    state=Ref,
    steps=[
        Step("hold", invoke=Hold, on_reply={Held: None}, compensate=Unhold),
        Step(
            "ship",
            invoke=Ship,
            on_reply={Shipped: None},
            failures=[ShipFailed],
            retry=RetryPolicy(max_attempts=2, timeout_s=0.6, initial_backoff_s=0),
            pivot=True,
        ),
    ],
)


async def test_a_pivot_that_timed_out_is_never_followed_by_undoing_the_steps_before(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    gate = anyio.Event()
    shipments: set[str] = set()
    unholds: list[str] = []
    service: Service[None] = Service("pivtest", MemoryStore(), namespace=ns, partitions=2)

    @service.handles(Hold)
    def hold(cmd: Hold, ctx: HandlerContext[None]) -> Held:
        return Held()

    @service.handles(Unhold)
    def unhold(cmd: Unhold, ctx: HandlerContext[None]) -> Unheld:
        unholds.append(cmd.ref)
        return Unheld()

    @service.handles(Ship)
    async def do_ship(cmd: Ship, ctx: HandlerContext[None]) -> Shipped:
        await gate.wait()  # shipping is stalled, then comes back
        shipments.add(cmd.ref)  # idempotent per order, whatever the attempt
        return Shipped()

    orchestrator = Orchestrator(ship, kafka_transport, namespace=ns, partitions=2)
    client = SagaClient(kafka_transport, namespace=ns)
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await tg.start(service.run, kafka_transport)
        await orchestrator.wait_ready()
        await client.start(ship, "o-1", Ref(ref="o-1"))
        with anyio.fail_after(30):
            while (i := orchestrator.instance("o-1")) is None or not i.status.settled:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        parked = orchestrator.instance("o-1")
        gate.set()  # shipping resumes: both attempts take effect (once, per order)
        with anyio.fail_after(30):
            while not shipments:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await client.resume("ship", "o-1", "shipping is back")
        with anyio.fail_after(30):
            while not (i := orchestrator.instance("o-1")) or not i.status.terminal:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        final = orchestrator.instance("o-1")
        tg.cancel_scope.cancel()

    assert parked is not None and parked.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert parked.failure is not None and "may have taken effect" in parked.failure
    assert parked.compensated == ()
    assert final is not None and final.status is SagaStatus.COMPLETED
    assert shipments == {"o-1"} and unholds == []  # shipped, and the hold was never undone
