"""Domain events of the orders service (choreography), and the order facts every event
of the place-order flow carries, so each service can act on it alone."""

from pydantic import BaseModel, ConfigDict

from sagakit import Event


class OrderInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    order_id: str
    customer_id: str
    product_id: str
    quantity: int
    amount: int
    address: str


class OrderCreated(Event, type="orders.events.OrderCreated"):
    order: OrderInfo


class OrderApproved(Event, type="orders.events.OrderApproved"):
    order: OrderInfo


class OrderRejected(Event, type="orders.events.OrderRejected"):
    order: OrderInfo
    reason: str


class OrderExpired(Event, type="orders.events.OrderExpired"):
    """Published past an order's deadline: everyone undoes what they did for it."""

    order: OrderInfo
