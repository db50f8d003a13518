"""The shipping service's contract."""

from sagakit import Command, Reply


class ShipmentScheduled(Reply, type="shipping.ShipmentScheduled"):
    order_id: str
    shipment_id: str


class ShipmentFailed(Reply, type="shipping.ShipmentFailed"):
    order_id: str
    reason: str


class ScheduleShipment(
    Command, type="shipping.ScheduleShipment", replies=(ShipmentScheduled, ShipmentFailed)
):
    order_id: str
    address: str
