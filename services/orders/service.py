"""Orders in SQLite; the order API that starts sagas, and the approve/reject handlers."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sagakit import HandlerContext, SagaClient, Service, SqliteStore, Transport

from .messages import ApproveOrder, OrderApproved, OrderRejected, RejectOrder
from .saga import OrderState, place_order

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
    ended_ms REAL
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
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def create(self, orders: Sequence[NewOrder]) -> list[NewOrder]:
        """Insert PENDING orders; returns those that were new."""
        created = []
        for o in orders:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO orders (id, customer_id, product_id, quantity, amount, "
                "address, status, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?)",
                (
                    o.order_id,
                    o.customer_id,
                    o.product_id,
                    o.quantity,
                    o.amount,
                    o.address,
                    now_ms(),
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

    def pending(self) -> list[NewOrder]:
        rows = self.db.execute(
            "SELECT id, customer_id, product_id, quantity, amount, address FROM orders "
            "WHERE status = 'PENDING'"
        )
        return [NewOrder(*r) for r in rows]

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


class OrdersApp:
    """The orders service: its order API, plus the participant that ends orders."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        partitions: int = 8,
        namespace: str = "",
        on_ended: Callable[[str, str], None] | None = None,
    ) -> None:
        store.connection.executescript(SCHEMA)
        self.store = store
        self.repository = OrderRepository(store.connection)
        self.on_ended = on_ended
        self.namespace = namespace
        self.service: Service[sqlite3.Connection] = Service(
            "orders", store, partitions=partitions, namespace=namespace
        )

        @self.service.handles(ApproveOrder)
        def approve(cmd: ApproveOrder, ctx: HandlerContext[sqlite3.Connection]) -> OrderApproved:
            if OrderRepository(ctx.db).end(cmd.order_id, "APPROVED"):
                self._ended(cmd.order_id, "APPROVED")
            return OrderApproved(order_id=cmd.order_id)

        @self.service.handles(RejectOrder)
        def reject(cmd: RejectOrder, ctx: HandlerContext[sqlite3.Connection]) -> OrderRejected:
            if OrderRepository(ctx.db).end(cmd.order_id, "REJECTED", cmd.reason):
                self._ended(cmd.order_id, "REJECTED")
            return OrderRejected(order_id=cmd.order_id)

    def _ended(self, order_id: str, status: str) -> None:
        if self.on_ended is not None:
            self.on_ended(order_id, status)

    async def place(self, transport: Transport, orders: Sequence[NewOrder]) -> None:
        """Create the orders PENDING and start one place-order saga each (one batch)."""
        db = self.store.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            created = self.repository.create(orders)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        await SagaClient(transport, namespace=self.namespace).start_many(
            place_order, [(o.order_id, saga_state(o)) for o in created]
        )

    async def resume_pending(self, transport: Transport) -> int:
        """Re-send the start request of every PENDING order.

        Creating an order and sending its start request are two writes; if the
        process died between them, this sends the start. The orchestrator ignores a
        start for a saga it already has, so re-sending is always safe.
        """
        pending = self.repository.pending()
        if pending:
            await SagaClient(transport, namespace=self.namespace).start_many(
                place_order, [(o.order_id, saga_state(o)) for o in pending]
            )
        return len(pending)
