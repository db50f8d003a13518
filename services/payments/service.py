"""Customer credit in SQLite; the payments service in both coordination styles."""

from __future__ import annotations

from typing import Any

from sagakit import BusinessFailure, Event, HandlerContext, Service
from sagakit.tracing import Tracing
from services.db import Connection, Handlers, Store
from services.inventory import events as inventory_events
from services.orders.events import OrderCreated, OrderExpired, OrderInfo
from services.outcome import Outcome, Style, assemble

from . import events
from .messages import (
    CreditLimitExceeded,
    CreditReleased,
    CreditReserved,
    ReleaseCredit,
    ReserveCredit,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, credit_limit INTEGER NOT NULL, held INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS credit_reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credit_by_order ON credit_reservations(order_id);
CREATE INDEX IF NOT EXISTS credit_by_customer ON credit_reservations(customer_id, status);
"""


class CreditRepository:
    def __init__(self, db: Connection) -> None:
        self.db = db

    def add_customer(self, customer_id: str, credit_limit: int) -> None:
        self.db.execute(
            "INSERT INTO customers (id, credit_limit) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET credit_limit = excluded.credit_limit",
            (customer_id, credit_limit),
        )

    def available(self, customer_id: str) -> int:
        row = self.db.execute(
            "SELECT credit_limit - held FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def status(self, order_id: str) -> str | None:
        """RESERVED or RELEASED if this order was seen before, else None."""
        row = self.db.execute(
            "SELECT status FROM credit_reservations WHERE order_id = ? ORDER BY id DESC LIMIT 1",
            (order_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def reserve(self, order_id: str, customer_id: str, amount: int) -> None:
        self.db.execute(
            "INSERT INTO credit_reservations (order_id, customer_id, amount, status) "
            "VALUES (?, ?, ?, 'RESERVED')",
            (order_id, customer_id, amount),
        )
        self.db.execute("UPDATE customers SET held = held + ? WHERE id = ?", (amount, customer_id))

    def release(self, order_id: str, customer_id: str) -> None:
        """Release the order's credit; for an order never seen, leave a tombstone so a
        reservation arriving late is refused."""
        if self.status(order_id) is None:
            self.db.execute(
                "INSERT INTO credit_reservations (order_id, customer_id, amount, status) "
                "VALUES (?, ?, 0, 'RELEASED')",
                (order_id, customer_id),
            )
            return
        rows = self.db.execute(
            "SELECT id, customer_id, amount FROM credit_reservations "
            "WHERE order_id = ? AND status = 'RESERVED'",
            (order_id,),
        ).fetchall()
        for rid, holder, amount in rows:
            self.db.execute("UPDATE customers SET held = held - ? WHERE id = ?", (amount, holder))
            self.db.execute(
                "UPDATE credit_reservations SET status = 'RELEASED' WHERE id = ?", (rid,)
            )

    def held_by_customer(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT customer_id, SUM(amount) FROM credit_reservations WHERE status = 'RESERVED' "
            "GROUP BY customer_id"
        )
        return {c: int(a) for c, a in rows}

    def reservations_per_order(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT order_id, COUNT(*) FROM credit_reservations GROUP BY order_id"
        )
        return {o: int(n) for o, n in rows}


# -- the business rules, the same in both coordination styles ---------------------------------


def reserve_credit(
    credit: CreditRepository, order_id: str, customer_id: str, amount: int
) -> Outcome:
    """Hold `amount` for the order. Seen before (a retry, or after a release): no effect."""
    seen = credit.status(order_id)
    if seen == "RELEASED":
        return Outcome.ALREADY_UNDONE
    if seen == "RESERVED":
        return Outcome.DONE
    available = credit.available(customer_id)
    if amount > available:
        return Outcome.refusal(f"credit limit exceeded: {amount} requested, {available} available")
    credit.reserve(order_id, customer_id, amount)
    return Outcome.DONE


# -- orchestration: commands and replies ---------------------------------------------------------


def _orchestrated(service: Handlers) -> None:
    @service.handles(ReserveCredit)
    def on_reserve(cmd: ReserveCredit, ctx: HandlerContext[Connection]) -> CreditReserved:
        credit = CreditRepository(ctx.db)
        outcome = reserve_credit(credit, cmd.order_id, cmd.customer_id, cmd.amount)
        if outcome.refused:
            raise BusinessFailure(
                CreditLimitExceeded(
                    order_id=cmd.order_id,
                    requested=cmd.amount,
                    available=credit.available(cmd.customer_id),
                )
            )
        return CreditReserved(order_id=cmd.order_id)

    @service.handles(ReleaseCredit)
    def on_release(cmd: ReleaseCredit, ctx: HandlerContext[Connection]) -> CreditReleased:
        CreditRepository(ctx.db).release(cmd.order_id, cmd.customer_id)
        return CreditReleased(order_id=cmd.order_id)


# -- choreography: events and reactions -----------------------------------------------------------


def _choreographed(service: Handlers) -> None:
    @service.on(OrderCreated)
    def on_order(evt: OrderCreated, ctx: HandlerContext[Connection]) -> Event | None:
        o = evt.order
        outcome = reserve_credit(CreditRepository(ctx.db), o.order_id, o.customer_id, o.amount)
        if outcome.refused:
            return events.CreditLimitExceeded(order=o, reason=outcome.reason)
        return events.CreditReserved(order=o) if outcome is Outcome.DONE else None

    def release(ctx: HandlerContext[Connection], order: OrderInfo, reason: str) -> Event:
        CreditRepository(ctx.db).release(order.order_id, order.customer_id)
        return events.CreditReleased(order=order, reason=reason)

    @service.on(inventory_events.OutOfStock)
    def on_out_of_stock(evt: inventory_events.OutOfStock, ctx: HandlerContext[Connection]) -> Event:
        return release(ctx, evt.order, evt.reason)

    @service.on(inventory_events.StockReleased)
    def on_stock_released(
        evt: inventory_events.StockReleased, ctx: HandlerContext[Connection]
    ) -> Event:
        return release(ctx, evt.order, evt.reason)

    @service.on(OrderExpired)
    def on_expired(evt: OrderExpired, ctx: HandlerContext[Connection]) -> None:
        CreditRepository(ctx.db).release(evt.order.order_id, evt.order.customer_id)


def build(
    store: Store | None = None,
    *,
    partitions: int = 8,
    namespace: str = "",
    style: Style = "orchestration",
    tracing: Tracing | None = None,
) -> Service[Any]:
    return assemble(
        "payments",
        store,
        SCHEMA,
        _orchestrated,
        _choreographed,
        partitions=partitions,
        namespace=namespace,
        style=style,
        tracing=tracing,
    )
