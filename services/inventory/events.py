"""Domain events of the inventory service (choreography)."""

from sagakit import Event
from services.orders.events import OrderInfo


class StockReserved(Event, type="inventory.events.StockReserved"):
    order: OrderInfo


class OutOfStock(Event, type="inventory.events.OutOfStock"):
    order: OrderInfo
    reason: str


class StockReleased(Event, type="inventory.events.StockReleased"):
    order: OrderInfo
    reason: str
