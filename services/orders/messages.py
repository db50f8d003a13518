"""The orders service's contract."""

from sagakit import Command, Event, Reply


class OrderApproved(Reply, type="orders.OrderApproved"):
    order_id: str


class OrderRejected(Reply, type="orders.OrderRejected"):
    order_id: str


class ApproveOrder(Command, type="orders.ApproveOrder", replies=(OrderApproved,)):
    order_id: str


class RejectOrder(Command, type="orders.RejectOrder", replies=(OrderRejected,)):
    order_id: str
    reason: str


class ManagerApproved(Event, type="orders.ManagerApproved"):
    """A manager approves a large order (what version 2 of place-order waits for)."""

    approver: str


class ManagerDeclined(Event, type="orders.ManagerDeclined"):
    """A manager declines a large order: it is rejected."""

    reason: str
