"""The choreographed place-order flow on the in-memory transport: every path, duplicate
events, the order deadline, and the rules of reactions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from sagakit import (
    DefinitionError,
    Event,
    HandlerContext,
    MemoryStore,
    MemoryTransport,
    OutgoingRecord,
    Service,
)
from services.orders.events import OrderCreated, OrderInfo
from services.system import SampleSystem, build_system, check_consistency, seed_orders

pytestmark = pytest.mark.anyio


class Flow:
    def __init__(self, system: SampleSystem, transport: MemoryTransport) -> None:
        self.system = system
        self.transport = transport
        self.ended: dict[str, str] = {}
        self.changed = anyio.Event()
        system.orders.on_ended = self._ended

    def _ended(self, order_id: str, status: str) -> None:
        self.ended[order_id] = status
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_ended(self, count: int) -> None:
        """Until `count` orders ended and their final events are out."""
        with anyio.fail_after(5):
            while len(self.ended) < count:
                await self.changed.wait()
        await self.transport.broker.wait_until(
            lambda: len(self.transport.broker.records("orders.events")) >= 2 * count
        )

    def events_of(self, order_id: str) -> list[str]:
        """Event type names about one order, in the order they were published per topic."""
        names = []
        for topic in sorted(self.transport.broker.topics()):
            if topic.endswith(".events"):
                for r in self.transport.broker.records(topic):
                    headers = dict(r.headers)
                    if headers["saga-id"] == order_id.encode():
                        names.append(headers["message-type"].decode().rsplit(".", 1)[1])
        return sorted(names)


@pytest.fixture
async def flow() -> AsyncIterator[Flow]:
    transport = MemoryTransport()
    system = build_system(style="choreography", partitions=2)
    flow = Flow(system, transport)
    async with anyio.create_task_group() as tg:
        for service in system.services():
            await tg.start(service.run, transport)
        await tg.start(
            lambda task_status: system.orders.run_deadlines(
                transport, 60.0, task_status=task_status
            )
        )
        yield flow
        tg.cancel_scope.cancel()
    system.close()


async def test_every_path_ends_each_order_and_undoes_what_was_done(flow: Flow) -> None:
    # the first three orders of a seed fail on credit, stock and shipping; then a mix
    orders = seed_orders(flow.system, 40, seed=2, run="c")
    await flow.system.orders.place(flow.transport, orders)
    await flow.wait_ended(40)
    assert check_consistency(flow.system) == []
    credit, stock, shipping = (o.order_id for o in orders[:3])
    assert flow.ended[credit] == flow.ended[stock] == flow.ended[shipping] == "REJECTED"
    assert flow.events_of(credit) == ["CreditLimitExceeded", "OrderCreated", "OrderRejected"]
    assert flow.events_of(stock) == [
        "CreditReleased",
        "CreditReserved",
        "OrderCreated",
        "OrderRejected",
        "OutOfStock",
    ]
    assert flow.events_of(shipping) == [
        "CreditReleased",
        "CreditReserved",
        "OrderCreated",
        "OrderRejected",
        "ShipmentFailed",
        "StockReleased",
        "StockReserved",
    ]
    approved = [o.order_id for o in orders if flow.ended[o.order_id] == "APPROVED"]
    assert approved, "the mix should approve most orders"
    assert flow.events_of(approved[0]) == [
        "CreditReserved",
        "OrderApproved",
        "OrderCreated",
        "ShipmentScheduled",
        "StockReserved",
    ]
    reasons = {o.order_id: o.reason for o in flow.system.orders.repository.all()}
    assert reasons[credit] is not None and "credit limit exceeded" in reasons[credit]
    assert reasons[stock] is not None and "out of stock" in reasons[stock]
    assert reasons[shipping] is not None and "cannot deliver" in reasons[shipping]


async def test_a_redelivered_event_has_no_second_effect(flow: Flow) -> None:
    [order] = seed_orders(flow.system, 4, seed=5, run="d")[3:4]
    await flow.system.orders.place(flow.transport, [order])
    await flow.wait_ended(1)
    services = flow.system.services()
    handled = [s.stats.handled for s in services]
    events = [
        r
        for topic in flow.transport.broker.topics()
        if topic.endswith(".events")
        for r in flow.transport.broker.records(topic)
    ]
    ids_before = {dict(r.headers)["message-id"] for r in events}
    # deliver every event about the order again, as a broker would after a lost commit
    await flow.transport.send([OutgoingRecord(r.topic, r.key, r.value, r.headers) for r in events])
    await flow.transport.broker.wait_until(
        lambda: sum(s.stats.duplicates for s in services) >= len(events)
    )
    assert [s.stats.handled for s in services] == handled  # no reaction ran again
    assert check_consistency(flow.system) == []
    # the stored outputs went out again under the same ids, so downstream they are
    # duplicates too: no event with a new id appeared
    ids_after = {
        dict(r.headers)["message-id"]
        for topic in flow.transport.broker.topics()
        if topic.endswith(".events")
        for r in flow.transport.broker.records(topic)
    }
    assert ids_after == ids_before


async def test_orders_without_an_outcome_expire_and_everyone_undoes_their_part() -> None:
    transport = MemoryTransport()
    system = build_system(style="choreography", partitions=2)
    orders = seed_orders(system, 10, seed=4, run="e", mix={})
    async with anyio.create_task_group() as tg:
        # no shipping service: no order can be approved
        for service in (system.orders.service, system.payments, system.inventory):
            await tg.start(service.run, transport)
        await system.orders.place(transport, orders)
        with anyio.fail_after(5):
            while True:
                credit = system.payments.stats.handled
                stock = system.inventory.stats.handled
                if credit >= 10 and stock >= 10:
                    break
                await anyio.sleep(0.01)
        await tg.start(
            lambda task_status: system.orders.run_deadlines(
                transport, 0.0, every_s=0.05, task_status=task_status
            )
        )
        await transport.broker.wait_until(
            lambda: system.payments.stats.handled >= 20 and system.inventory.stats.handled >= 20
        )
        tg.cancel_scope.cancel()
    rows = system.orders.repository.all()
    assert {r.status for r in rows} == {"REJECTED"}
    assert all(r.reason and r.reason.startswith("expired") for r in rows)
    # payments released the credit and inventory the stock of every expired order
    assert check_consistency(system) == []
    system.close()


def test_a_reaction_must_be_to_a_registered_event() -> None:
    service: Service[None] = Service("rtest", MemoryStore())
    with pytest.raises(DefinitionError, match="is not an Event model"):
        service.on(OrderInfo)  # type: ignore[type-var]


async def test_a_reaction_publishing_another_services_event_is_dead_lettered() -> None:
    class Poked(Event, type="rtest.events.Poked"):
        pass

    service: Service[None] = Service("rtest", MemoryStore(), handler_attempts=1)

    @service.on(Poked)
    def impostor(evt: Poked, ctx: HandlerContext[None]) -> Event:
        return OrderCreated(
            order=OrderInfo(
                order_id="o", customer_id="c", product_id="p", quantity=1, amount=1, address="a"
            )
        )

    transport = MemoryTransport()
    async with anyio.create_task_group() as tg:
        await tg.start(service.run, transport)
        await transport.send([service.event_record(Poked(), saga_id="s", message_id="s:poked")])
        await transport.broker.wait_until(
            lambda: bool(transport.broker.records("rtest.events.dlq"))
        )
        tg.cancel_scope.cancel()
    [dead] = transport.broker.records("rtest.events.dlq")
    headers = dict(dead.headers)
    assert headers["error-type"] == b"TypeError"
    assert b"publishes only its own events" in headers["error-message"]
    assert headers["failed-consumer"] == b"rtest"
