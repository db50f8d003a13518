"""The orders service's contract."""

from sagakit import Command, Reply


class ApproveOrder(Command, type="orders.ApproveOrder"):
    order_id: str


class OrderApproved(Reply, type="orders.OrderApproved"):
    order_id: str


class RejectOrder(Command, type="orders.RejectOrder"):
    order_id: str
    reason: str


class OrderRejected(Reply, type="orders.OrderRejected"):
    order_id: str
