"""Domain events of the shipping service (choreography)."""

from sagakit import Event
from services.orders.events import OrderInfo


class ShipmentScheduled(Event, type="shipping.events.ShipmentScheduled"):
    order: OrderInfo
    shipment_id: str


class ShipmentFailed(Event, type="shipping.events.ShipmentFailed"):
    order: OrderInfo
    reason: str
