"""The orders service's contract."""

from sagakit import Command, Reply


class OrderApproved(Reply, type="orders.OrderApproved"):
    order_id: str


class OrderRejected(Reply, type="orders.OrderRejected"):
    order_id: str


class ApproveOrder(Command, type="orders.ApproveOrder", replies=(OrderApproved,)):
    order_id: str


class RejectOrder(Command, type="orders.RejectOrder", replies=(OrderRejected,)):
    order_id: str
    reason: str
