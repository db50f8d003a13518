"""Stock levels in SQLite, and the handlers of the inventory service."""

from __future__ import annotations

import sqlite3

from sagakit import BusinessFailure, HandlerContext, Service, SqliteStore

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
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def add_product(self, product_id: str, stock: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO products (id, stock, initial) VALUES (?, ?, ?)",
            (product_id, stock, stock),
        )

    def stock(self, product_id: str) -> int:
        row = self.db.execute("SELECT stock FROM products WHERE id = ?", (product_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def seen(self, order_id: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM stock_reservations WHERE order_id = ? LIMIT 1", (order_id,)
        ).fetchone()
        return row is not None

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
        if not self.seen(order_id):
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


def build(
    store: SqliteStore, *, partitions: int = 8, namespace: str = ""
) -> Service[sqlite3.Connection]:
    store.connection.executescript(SCHEMA)
    service = Service("inventory", store, partitions=partitions, namespace=namespace)

    @service.handles(ReserveStock)
    def reserve_stock(cmd: ReserveStock, ctx: HandlerContext[sqlite3.Connection]) -> StockReserved:
        stock = StockRepository(ctx.db)
        if stock.seen(cmd.order_id):
            # a retry of a reservation already made, or one arriving after its release
            return StockReserved(order_id=cmd.order_id)
        available = stock.stock(cmd.product_id)
        if cmd.quantity > available:
            raise BusinessFailure(
                OutOfStock(
                    order_id=cmd.order_id,
                    product_id=cmd.product_id,
                    requested=cmd.quantity,
                    available=available,
                )
            )
        stock.reserve(cmd.order_id, cmd.product_id, cmd.quantity)
        return StockReserved(order_id=cmd.order_id)

    @service.handles(ReleaseStock)
    def release_stock(cmd: ReleaseStock, ctx: HandlerContext[sqlite3.Connection]) -> StockReleased:
        StockRepository(ctx.db).release(cmd.order_id, cmd.product_id)
        return StockReleased(order_id=cmd.order_id)

    return service
