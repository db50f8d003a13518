"""Shipments in SQLite, and the handler of the shipping service."""

from __future__ import annotations

import sqlite3

from sagakit import BusinessFailure, HandlerContext, Service, SqliteStore

from .messages import ScheduleShipment, ShipmentFailed, ShipmentScheduled

SCHEMA = """
CREATE TABLE IF NOT EXISTS undeliverable_regions (region TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS shipments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    address TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shipments_by_order ON shipments(order_id);
"""


class ShipmentRepository:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def block_region(self, region: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO undeliverable_regions (region) VALUES (?)", (region,)
        )

    def deliverable(self, address: str) -> bool:
        region = address.rpartition(",")[2].strip()
        row = self.db.execute(
            "SELECT 1 FROM undeliverable_regions WHERE region = ?", (region,)
        ).fetchone()
        return row is None

    def shipment_of(self, order_id: str) -> str | None:
        row = self.db.execute(
            "SELECT id FROM shipments WHERE order_id = ? AND status = 'SCHEDULED'", (order_id,)
        ).fetchone()
        return None if row is None else f"SHP-{row[0]}"

    def schedule(self, order_id: str, address: str) -> str:
        cur = self.db.execute(
            "INSERT INTO shipments (order_id, address, status) VALUES (?, ?, 'SCHEDULED')",
            (order_id, address),
        )
        return f"SHP-{cur.lastrowid}"

    def shipments_per_order(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT order_id, COUNT(*) FROM shipments WHERE status = 'SCHEDULED' GROUP BY order_id"
        )
        return {o: int(n) for o, n in rows}


def build(
    store: SqliteStore, *, partitions: int = 8, namespace: str = ""
) -> Service[sqlite3.Connection]:
    store.connection.executescript(SCHEMA)
    service = Service("shipping", store, partitions=partitions, namespace=namespace)

    @service.handles(ScheduleShipment)
    def schedule(
        cmd: ScheduleShipment, ctx: HandlerContext[sqlite3.Connection]
    ) -> ShipmentScheduled:
        shipments = ShipmentRepository(ctx.db)
        existing = shipments.shipment_of(cmd.order_id)
        if existing is not None:  # a retry of a shipment already scheduled
            return ShipmentScheduled(order_id=cmd.order_id, shipment_id=existing)
        if not shipments.deliverable(cmd.address):
            raise BusinessFailure(
                ShipmentFailed(order_id=cmd.order_id, reason=f"cannot deliver to {cmd.address!r}")
            )
        return ShipmentScheduled(
            order_id=cmd.order_id, shipment_id=shipments.schedule(cmd.order_id, cmd.address)
        )

    return service
