"""Shipments in SQLite; the shipping service in both coordination styles."""

from __future__ import annotations

from typing import Any

from sagakit import BusinessFailure, Event, HandlerContext, Service
from sagakit.tracing import Tracing
from services.db import Connection, Handlers, Store
from services.inventory import events as inventory_events
from services.orders.events import OrderExpired
from services.outcome import Outcome, Style, assemble

from . import events
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
    def __init__(self, db: Connection) -> None:
        self.db = db

    def block_region(self, region: str) -> None:
        self.db.execute(
            "INSERT INTO undeliverable_regions (region) VALUES (?) ON CONFLICT DO NOTHING",
            (region,),
        )

    def deliverable(self, address: str) -> bool:
        region = address.rpartition(",")[2].strip()
        row = self.db.execute(
            "SELECT 1 FROM undeliverable_regions WHERE region = ?", (region,)
        ).fetchone()
        return row is None

    def shipment_of(self, order_id: str) -> tuple[str, str] | None:
        """(shipment id, SCHEDULED or CANCELLED) of the order's shipment, if it has one."""
        row = self.db.execute(
            "SELECT id, status FROM shipments WHERE order_id = ? ORDER BY id DESC LIMIT 1",
            (order_id,),
        ).fetchone()
        return None if row is None else (f"SHP-{row[0]}", str(row[1]))

    def cancel(self, order_id: str, address: str) -> None:
        """Cancel the order's shipment; for an order never seen, leave a tombstone so a
        request arriving late is refused."""
        if self.shipment_of(order_id) is None:
            self.db.execute(
                "INSERT INTO shipments (order_id, address, status) VALUES (?, ?, 'CANCELLED')",
                (order_id, address),
            )
        else:
            self.db.execute(
                "UPDATE shipments SET status = 'CANCELLED' WHERE order_id = ?", (order_id,)
            )

    def schedule(self, order_id: str, address: str) -> str:
        row = self.db.execute(
            "INSERT INTO shipments (order_id, address, status) VALUES (?, ?, 'SCHEDULED') "
            "RETURNING id",
            (order_id, address),
        ).fetchone()
        return f"SHP-{row[0]}"

    def shipments_per_order(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT order_id, COUNT(*) FROM shipments WHERE status = 'SCHEDULED' GROUP BY order_id"
        )
        return {o: int(n) for o, n in rows}


# -- the business rules, the same in both coordination styles ---------------------------------


def schedule_shipment(
    shipments: ShipmentRepository, order_id: str, address: str
) -> tuple[Outcome, str]:
    """Schedule the order's shipment; (outcome, shipment id). Seen before: no second one."""
    existing = shipments.shipment_of(order_id)
    if existing is not None:
        shipment_id, status = existing
        return (Outcome.DONE if status == "SCHEDULED" else Outcome.ALREADY_UNDONE), shipment_id
    if not shipments.deliverable(address):
        return Outcome.refusal(f"cannot deliver to {address!r}"), ""
    return Outcome.DONE, shipments.schedule(order_id, address)


# -- orchestration: commands and replies ---------------------------------------------------------


def _orchestrated(service: Handlers) -> None:
    @service.handles(ScheduleShipment)
    def on_schedule(cmd: ScheduleShipment, ctx: HandlerContext[Connection]) -> ShipmentScheduled:
        outcome, shipment_id = schedule_shipment(
            ShipmentRepository(ctx.db), cmd.order_id, cmd.address
        )
        if outcome.refused:
            raise BusinessFailure(ShipmentFailed(order_id=cmd.order_id, reason=outcome.reason))
        return ShipmentScheduled(order_id=cmd.order_id, shipment_id=shipment_id)


# -- choreography: events and reactions -----------------------------------------------------------


def _choreographed(service: Handlers) -> None:
    @service.on(inventory_events.StockReserved)
    def on_stock(
        evt: inventory_events.StockReserved, ctx: HandlerContext[Connection]
    ) -> Event | None:
        o = evt.order
        outcome, shipment_id = schedule_shipment(ShipmentRepository(ctx.db), o.order_id, o.address)
        if outcome.refused:
            return events.ShipmentFailed(order=o, reason=outcome.reason)
        if outcome is Outcome.DONE:
            return events.ShipmentScheduled(order=o, shipment_id=shipment_id)
        return None

    @service.on(OrderExpired)
    def on_expired(evt: OrderExpired, ctx: HandlerContext[Connection]) -> None:
        ShipmentRepository(ctx.db).cancel(evt.order.order_id, evt.order.address)


def build(
    store: Store | None = None,
    *,
    partitions: int = 8,
    namespace: str = "",
    style: Style = "orchestration",
    tracing: Tracing | None = None,
) -> Service[Any]:
    return assemble(
        "shipping",
        store,
        SCHEMA,
        _orchestrated,
        _choreographed,
        partitions=partitions,
        namespace=namespace,
        style=style,
        tracing=tracing,
    )
