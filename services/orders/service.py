"""Orders in SQLite; the order API that starts sagas, and the approve/reject handlers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from sagakit import Event, HandlerContext, SagaClient, Service, SqliteStore, Transport
from sagakit.tracing import Tracing
from services.db import Connection, Handlers, Store, in_transaction, store_for
from services.outcome import Style
from services.payments import events as payments_events
from services.shipping import events as shipping_events

from . import events
from .api import ORDERS_PATH
from .events import OrderInfo
from .messages import ApproveOrder, ManagerApproved, OrderApproved, OrderRejected, RejectOrder
from .saga import OrderState, approval, place_order_v2

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_ms REAL NOT NULL,
    ended_ms REAL,
    trace TEXT
);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders(status);
"""

TERMINAL = ("APPROVED", "REJECTED")


@dataclass(frozen=True, slots=True)
class NewOrder:
    order_id: str
    customer_id: str
    product_id: str
    quantity: int
    amount: int
    address: str


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: str
    customer_id: str
    product_id: str
    quantity: int
    amount: int
    status: str
    reason: str | None
    created_ms: float
    ended_ms: float | None


def now_ms() -> float:
    return time.time() * 1000


class OrderRepository:
    def __init__(self, db: Connection) -> None:
        self.db = db

    def create(
        self, orders: Sequence[NewOrder], traces: dict[str, str | None] | None = None
    ) -> list[NewOrder]:
        """Insert PENDING orders (with the trace each one started); returns the new ones."""
        created = []
        traces = traces or {}
        for o in orders:
            cur = self.db.execute(
                "INSERT INTO orders (id, customer_id, product_id, quantity, amount, address, "
                "status, created_ms, trace) VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    o.order_id,
                    o.customer_id,
                    o.product_id,
                    o.quantity,
                    o.amount,
                    o.address,
                    now_ms(),
                    traces.get(o.order_id),
                ),
            )
            if cur.rowcount:
                created.append(o)
        return created

    def end(self, order_id: str, status: str, reason: str | None = None) -> bool:
        """Set a PENDING order's final status; False if it had one already."""
        cur = self.db.execute(
            "UPDATE orders SET status = ?, reason = ?, ended_ms = ? "
            "WHERE id = ? AND status = 'PENDING'",
            (status, reason, now_ms(), order_id),
        )
        return bool(cur.rowcount)

    def traces(self, order_ids: Sequence[str]) -> dict[str, str | None]:
        """The trace (traceparent) each order started, by order id."""
        found: dict[str, str | None] = {}
        for order_id in order_ids:
            row = self.db.execute("SELECT trace FROM orders WHERE id = ?", (order_id,)).fetchone()
            found[order_id] = None if row is None else row[0]
        return found

    def pending(self) -> list[NewOrder]:
        return self.with_status("PENDING")

    def with_status(self, status: str) -> list[NewOrder]:
        rows = self.db.execute(
            "SELECT id, customer_id, product_id, quantity, amount, address FROM orders "
            "WHERE status = ?",
            (status,),
        )
        return [NewOrder(*r) for r in rows]

    def mark_expiring(self, created_before_ms: float) -> list[NewOrder]:
        """PENDING orders created before the cutoff become EXPIRING; returns them."""
        rows = self.db.execute(
            "SELECT id, customer_id, product_id, quantity, amount, address FROM orders "
            "WHERE status = 'PENDING' AND created_ms < ?",
            (created_before_ms,),
        ).fetchall()
        for r in rows:
            self.db.execute("UPDATE orders SET status = 'EXPIRING' WHERE id = ?", (r[0],))
        return [NewOrder(*r) for r in rows]

    def finish_expiry(self, order_id: str) -> bool:
        cur = self.db.execute(
            "UPDATE orders SET status = 'REJECTED', reason = 'expired: no outcome in time', "
            "ended_ms = ? WHERE id = ? AND status = 'EXPIRING'",
            (now_ms(), order_id),
        )
        return bool(cur.rowcount)

    def all(self) -> list[OrderRow]:
        rows = self.db.execute(
            "SELECT id, customer_id, product_id, quantity, amount, status, reason, "
            "created_ms, ended_ms FROM orders ORDER BY id"
        )
        return [OrderRow(*r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        return {
            s: int(n)
            for s, n in self.db.execute("SELECT status, COUNT(*) FROM orders GROUP BY status")
        }


def saga_state(order: NewOrder) -> OrderState:
    return OrderState(
        order_id=order.order_id,
        customer_id=order.customer_id,
        product_id=order.product_id,
        quantity=order.quantity,
        amount=order.amount,
        address=order.address,
    )


def order_info(order: NewOrder) -> OrderInfo:
    return OrderInfo(
        order_id=order.order_id,
        customer_id=order.customer_id,
        product_id=order.product_id,
        quantity=order.quantity,
        amount=order.amount,
        address=order.address,
    )


class OrdersApp:
    """The orders service: its order API, plus the participant that ends orders.

    In orchestration it starts a place-order saga per order and ends orders on the
    orchestrator's commands; in choreography it publishes OrderCreated, ends orders on
    the other services' events, and expires orders that get no outcome in time.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        partitions: int = 8,
        namespace: str = "",
        style: Style = "orchestration",
        on_ended: Callable[[str, str], None] | None = None,
        tracing: Tracing | None = None,
        order_deadline_s: float = 60.0,
        auto_approve: bool = True,
    ) -> None:
        if store is None:
            store = store_for("orders", SCHEMA)
        elif isinstance(store, SqliteStore):
            store.add_schema(SCHEMA)
        self.store: Store = store
        self.on_ended = on_ended
        self.style = style
        self.order_deadline_s = order_deadline_s
        #: approve the large orders version 2 of the saga waits for (else a person does:
        #: ``sagakit sagas signal ORDER orders.ManagerApproved --data '{"approver": "me"}'``)
        self.auto_approve = auto_approve
        self.service: Service[Any] = Service(
            "orders",
            self.store,
            partitions=partitions,
            namespace=namespace,
            tracing=tracing,
            sync_handlers="inline",  # SQLite: a thread hop costs more than the handler
        )
        self.handlers = Handlers(self.service)  # bridged on PostgreSQL (services.db)
        self.service.route("POST", ORDERS_PATH)(self._place_request)
        if style == "orchestration":
            self._orchestrated()
        else:
            self._choreographed()
            self.service.task(self._run_deadlines)

    @property
    def repository(self) -> OrderRepository:
        """The orders table, read outside any transaction (SQLite only: what the sample's
        checks and tests read)."""
        assert isinstance(self.store, SqliteStore), "the orders repository reads SQLite only"
        return OrderRepository(self.store.connection)

    @property
    def namespace(self) -> str:
        return self.service.namespace

    @property
    def tracing(self) -> Tracing:
        return self.service.tracing

    async def _place_request(self, request: Any, transport: Transport) -> Any:
        from .http import place_request

        return await place_request(self, transport, request)

    async def _run_deadlines(self, transport: Transport) -> None:
        await self.run_deadlines(transport, self.order_deadline_s)

    def _end(self, db: Connection, order_id: str, status: str, reason: str | None) -> bool:
        ended = OrderRepository(db).end(order_id, status, reason)
        if ended and self.on_ended is not None:
            self.on_ended(order_id, status)
        return ended

    def _orchestrated(self) -> None:
        @self.handlers.handles(ApproveOrder)
        def approve(cmd: ApproveOrder, ctx: HandlerContext[Connection]) -> OrderApproved:
            self._end(ctx.db, cmd.order_id, "APPROVED", None)
            return OrderApproved(order_id=cmd.order_id)

        @self.handlers.handles(RejectOrder)
        def reject(cmd: RejectOrder, ctx: HandlerContext[Connection]) -> OrderRejected:
            self._end(ctx.db, cmd.order_id, "REJECTED", cmd.reason)
            return OrderRejected(order_id=cmd.order_id)

    def _choreographed(self) -> None:
        @self.handlers.on(shipping_events.ShipmentScheduled)
        def on_shipped(
            evt: shipping_events.ShipmentScheduled, ctx: HandlerContext[Connection]
        ) -> Event | None:
            if self._end(ctx.db, evt.order.order_id, "APPROVED", None):
                return events.OrderApproved(order=evt.order)
            return None

        def reject(ctx: HandlerContext[Connection], order: OrderInfo, reason: str) -> Event | None:
            if self._end(ctx.db, order.order_id, "REJECTED", reason):
                return events.OrderRejected(order=order, reason=reason)
            return None

        @self.handlers.on(payments_events.CreditLimitExceeded)
        def on_no_credit(
            evt: payments_events.CreditLimitExceeded, ctx: HandlerContext[Connection]
        ) -> Event | None:
            return reject(ctx, evt.order, evt.reason)

        @self.handlers.on(payments_events.CreditReleased)
        def on_released(
            evt: payments_events.CreditReleased, ctx: HandlerContext[Connection]
        ) -> Event | None:
            return reject(ctx, evt.order, evt.reason)

    # -- the order API ----------------------------------------------------------------------
    async def place(self, transport: Transport, orders: Sequence[NewOrder]) -> None:
        """Create the orders PENDING, then start their sagas or announce them (one batch)."""
        traces = {o.order_id: self._start_trace(o) for o in orders}
        created = await in_transaction(
            self.store, lambda db: OrderRepository(db).create(orders, traces)
        )
        await self._announce(transport, created)

    def _start_trace(self, order: NewOrder) -> str | None:
        """Open the order's trace (its saga's, in either style); its traceparent."""
        if not self.tracing.enabled:
            return None
        with self.tracing.root("place order", saga_id=order.order_id, order_amount=order.amount):
            return self.tracing.current_traceparent()

    async def _announce(self, transport: Transport, orders: Sequence[NewOrder]) -> None:
        if not orders:
            return
        traces = await self._traces(orders)
        if self.style == "orchestration":
            client = SagaClient(transport, namespace=self.namespace, tracing=self.tracing)
            states = [(o.order_id, saga_state(o)) for o in orders]
            await client.start_many(place_order_v2, states, traces)
            if self.auto_approve:
                # a standing approval for the large orders: sent now, kept by each saga
                # until it reaches its wait (its id makes a resent one a duplicate)
                await transport.send(
                    [
                        client.operator_record(
                            place_order_v2.name,
                            order_id,
                            ManagerApproved(approver="standing approval"),
                            f"{order_id}:approval",
                            parent=traces.get(order_id),
                        )
                        for order_id, state in states
                        if approval(state) == "manager"
                    ]
                )
            return
        await transport.send(
            [
                self.service.event_record(
                    events.OrderCreated(order=order_info(o)),
                    saga_id=o.order_id,
                    message_id=f"{o.order_id}:created",
                    parent=traces.get(o.order_id),
                )
                for o in orders
            ]
        )

    async def resume_pending(self, transport: Transport) -> int:
        """Announce every PENDING order again, and finish expiries that were under way.

        Creating an order and announcing it are two writes; if the process died between
        them, this sends the announcement. Its id is deterministic, so where it already
        arrived it is a duplicate and changes nothing.
        """
        pending = await in_transaction(self.store, lambda db: OrderRepository(db).pending())
        await self._announce(transport, pending)
        expiring = await in_transaction(
            self.store, lambda db: OrderRepository(db).with_status("EXPIRING")
        )
        await self._publish_expiries(transport, expiring)
        return len(pending)

    async def _traces(self, orders: Sequence[NewOrder]) -> dict[str, str | None]:
        ids = [o.order_id for o in orders]
        return await in_transaction(self.store, lambda db: OrderRepository(db).traces(ids))

    # -- the choreography's safety net ----------------------------------------------------
    async def expire_overdue(self, transport: Transport, deadline_s: float) -> int:
        """Expire PENDING orders older than `deadline_s`: everyone undoes their part.

        The order is marked EXPIRING first (so a late success cannot approve it), then
        OrderExpired is published, then the order is REJECTED. A crash in between is
        finished by `resume_pending`.
        """
        cutoff = now_ms() - deadline_s * 1000
        expiring = await in_transaction(
            self.store, lambda db: OrderRepository(db).mark_expiring(cutoff)
        )
        await self._publish_expiries(transport, expiring)
        return len(expiring)

    async def _publish_expiries(self, transport: Transport, orders: Sequence[NewOrder]) -> None:
        if not orders:
            return
        traces = await self._traces(orders)
        await transport.send(
            [
                self.service.event_record(
                    events.OrderExpired(order=order_info(o)),
                    saga_id=o.order_id,
                    message_id=f"{o.order_id}:expired",
                    correlation_id=f"{o.order_id}:created",
                    parent=traces.get(o.order_id),
                )
                for o in orders
            ]
        )

        def finish(db: Connection) -> list[str]:
            repository = OrderRepository(db)
            return [o.order_id for o in orders if repository.finish_expiry(o.order_id)]

        for order_id in await in_transaction(self.store, finish):
            if self.on_ended is not None:
                self.on_ended(order_id, "REJECTED")

    async def run_deadlines(
        self,
        transport: Transport,
        deadline_s: float,
        *,
        every_s: float = 0.5,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Expire overdue orders every `every_s` until cancelled (choreography only)."""
        await self.resume_pending(transport)
        task_status.started()
        while True:
            await self.expire_overdue(transport, deadline_s)
            await anyio.sleep(every_s)
