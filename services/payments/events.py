"""Domain events of the payments service (choreography)."""

from sagakit import Event
from services.orders.events import OrderInfo


class CreditReserved(Event, type="payments.events.CreditReserved"):
    order: OrderInfo


class CreditLimitExceeded(Event, type="payments.events.CreditLimitExceeded"):
    order: OrderInfo
    reason: str


class CreditReleased(Event, type="payments.events.CreditReleased"):
    order: OrderInfo
    reason: str
