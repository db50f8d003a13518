"""Stock levels in SQLite; the inventory service in both coordination styles."""

from __future__ import annotations

from typing import Any

from sagakit import BusinessFailure, Event, HandlerContext, Service
from sagakit.tracing import Tracing
from services.db import Connection, Handlers, Store
from services.orders.events import OrderExpired
from services.outcome import Outcome, Style, assemble
from services.payments import events as payments_events
from services.shipping import events as shipping_events

from . import events
from .messages import OutOfStock, ReleaseStock, ReserveStock, StockReleased, StockReserved

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY, stock INTEGER NOT NULL, initial INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS stock_by_order ON stock_reservations(order_id);
"""


class StockRepository:
    def __init__(self, db: Connection) -> None:
        self.db = db

    def add_product(self, product_id: str, stock: int) -> None:
        self.db.execute(
            "INSERT INTO products (id, stock, initial) VALUES (?, ?, ?) ON CONFLICT(id) "
            "DO UPDATE SET stock = excluded.stock, initial = excluded.initial",
            (product_id, stock, stock),
        )

    def stock(self, product_id: str) -> int:
        row = self.db.execute("SELECT stock FROM products WHERE id = ?", (product_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def status(self, order_id: str) -> str | None:
        """RESERVED or RELEASED if this order was seen before, else None."""
        row = self.db.execute(
            "SELECT status FROM stock_reservations WHERE order_id = ? ORDER BY id DESC LIMIT 1",
            (order_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def reserve(self, order_id: str, product_id: str, quantity: int) -> None:
        self.db.execute(
            "UPDATE products SET stock = stock - ? WHERE id = ?", (quantity, product_id)
        )
        self.db.execute(
            "INSERT INTO stock_reservations (order_id, product_id, quantity, status) "
            "VALUES (?, ?, ?, 'RESERVED')",
            (order_id, product_id, quantity),
        )

    def release(self, order_id: str, product_id: str) -> None:
        """Put the order's stock back; for an order never seen, leave a tombstone so a
        reservation arriving late is refused."""
        if self.status(order_id) is None:
            self.db.execute(
                "INSERT INTO stock_reservations (order_id, product_id, quantity, status) "
                "VALUES (?, ?, 0, 'RELEASED')",
                (order_id, product_id),
            )
            return
        rows = self.db.execute(
            "SELECT id, product_id, quantity FROM stock_reservations "
            "WHERE order_id = ? AND status = 'RESERVED'",
            (order_id,),
        ).fetchall()
        for rid, product_id, quantity in rows:
            self.db.execute(
                "UPDATE products SET stock = stock + ? WHERE id = ?", (quantity, product_id)
            )
            self.db.execute(
                "UPDATE stock_reservations SET status = 'RELEASED' WHERE id = ?", (rid,)
            )

    def products(self) -> dict[str, tuple[int, int]]:
        """product id -> (stock left, initial stock)."""
        return {
            p: (int(s), int(i))
            for p, s, i in self.db.execute("SELECT id, stock, initial FROM products")
        }

    def reserved_by_product(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT product_id, SUM(quantity) FROM stock_reservations WHERE status = 'RESERVED' "
            "GROUP BY product_id"
        )
        return {p: int(q) for p, q in rows}

    def reservations_per_order(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT order_id, COUNT(*) FROM stock_reservations GROUP BY order_id"
        )
        return {o: int(n) for o, n in rows}


# -- the business rules, the same in both coordination styles ---------------------------------


def reserve_stock(stock: StockRepository, order_id: str, product_id: str, quantity: int) -> Outcome:
    """Take `quantity` off the shelf for the order. Seen before: no second effect."""
    seen = stock.status(order_id)
    if seen == "RELEASED":
        return Outcome.ALREADY_UNDONE
    if seen == "RESERVED":
        return Outcome.DONE
    available = stock.stock(product_id)
    if quantity > available:
        return Outcome.refusal(
            f"out of stock: {quantity} of {product_id} requested, {available} left"
        )
    stock.reserve(order_id, product_id, quantity)
    return Outcome.DONE


# -- orchestration: commands and replies ---------------------------------------------------------


def _orchestrated(service: Handlers) -> None:
    @service.handles(ReserveStock)
    def on_reserve(cmd: ReserveStock, ctx: HandlerContext[Connection]) -> StockReserved:
        stock = StockRepository(ctx.db)
        outcome = reserve_stock(stock, cmd.order_id, cmd.product_id, cmd.quantity)
        if outcome.refused:
            raise BusinessFailure(
                OutOfStock(
                    order_id=cmd.order_id,
                    product_id=cmd.product_id,
                    requested=cmd.quantity,
                    available=stock.stock(cmd.product_id),
                )
            )
        return StockReserved(order_id=cmd.order_id)

    @service.handles(ReleaseStock)
    def on_release(cmd: ReleaseStock, ctx: HandlerContext[Connection]) -> StockReleased:
        StockRepository(ctx.db).release(cmd.order_id, cmd.product_id)
        return StockReleased(order_id=cmd.order_id)


# -- choreography: events and reactions -----------------------------------------------------------


def _choreographed(service: Handlers) -> None:
    @service.on(payments_events.CreditReserved)
    def on_credit(
        evt: payments_events.CreditReserved, ctx: HandlerContext[Connection]
    ) -> Event | None:
        o = evt.order
        outcome = reserve_stock(StockRepository(ctx.db), o.order_id, o.product_id, o.quantity)
        if outcome.refused:
            return events.OutOfStock(order=o, reason=outcome.reason)
        return events.StockReserved(order=o) if outcome is Outcome.DONE else None

    @service.on(shipping_events.ShipmentFailed)
    def on_shipment_failed(
        evt: shipping_events.ShipmentFailed, ctx: HandlerContext[Connection]
    ) -> Event:
        StockRepository(ctx.db).release(evt.order.order_id, evt.order.product_id)
        return events.StockReleased(order=evt.order, reason=evt.reason)

    @service.on(OrderExpired)
    def on_expired(evt: OrderExpired, ctx: HandlerContext[Connection]) -> None:
        StockRepository(ctx.db).release(evt.order.order_id, evt.order.product_id)


def build(
    store: Store | None = None,
    *,
    partitions: int = 8,
    namespace: str = "",
    style: Style = "orchestration",
    tracing: Tracing | None = None,
) -> Service[Any]:
    return assemble(
        "inventory",
        store,
        SCHEMA,
        _orchestrated,
        _choreographed,
        partitions=partitions,
        namespace=namespace,
        style=style,
        tracing=tracing,
    )
