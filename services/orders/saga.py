"""The place-order saga, as the orders service defines it."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from sagakit import Parallel, RetryPolicy, Saga, SagaInfo, Step, Switch, WaitFor
from services.inventory.messages import OutOfStock, ReleaseStock, ReserveStock, StockReserved
from services.payments.messages import (
    CreditLimitExceeded,
    CreditReleased,
    CreditReserved,
    ReleaseCredit,
    ReserveCredit,
)
from services.shipping.messages import ScheduleShipment, ShipmentFailed, ShipmentScheduled

from .messages import ApproveOrder, ManagerApproved, ManagerDeclined, OrderApproved, RejectOrder


class OrderState(BaseModel):
    order_id: str
    customer_id: str
    product_id: str
    quantity: int
    amount: int
    address: str
    shipment_id: str | None = None
    rejection_reason: str | None = None
    approved_by: str | None = None


def reject_order(state: OrderState, saga: SagaInfo) -> RejectOrder:
    """The business reason of the failure, or why the saga gave up (a step that timed out)."""
    reason = state.rejection_reason or saga.failure or "rejected"
    return RejectOrder(order_id=state.order_id, reason=reason)


def note_reason(state: OrderState, failure: Any) -> OrderState:
    return state.model_copy(update={"rejection_reason": failure.reason})


def note_shipment(state: OrderState, reply: ShipmentScheduled) -> OrderState:
    return state.model_copy(update={"shipment_id": reply.shipment_id})


#: A participant that does not answer within 10 s is asked again, twice, with back-off.
PATIENT = RetryPolicy(max_attempts=3, timeout_s=10.0, initial_backoff_s=0.5, max_backoff_s=5.0)
#: The pivot and the steps after it only move forward: a pivot that timed out may have
#: scheduled the shipment, which nothing undoes, so keep asking (then a person decides).
PERSISTENT = RetryPolicy(max_attempts=10, timeout_s=10.0, initial_backoff_s=0.5, max_backoff_s=5.0)

#: How long a participant has to answer each of the 3 attempts of an undo (ReleaseCredit,
#: ReleaseStock) before the saga is parked for a person; unset: sagakit's default (30 s).
UNDO_TIMEOUT_S = os.environ.get("PLACE_ORDER_UNDO_TIMEOUT_S")
UNDO: dict[str, Any] = (
    {"compensation_retry": RetryPolicy(max_attempts=3, timeout_s=float(UNDO_TIMEOUT_S))}
    if UNDO_TIMEOUT_S
    else {}
)

# The steps both versions share.
# The orders service created the order (PENDING) before starting the saga; if a later step
# fails, the order is rejected.
CREATE_ORDER: Step[OrderState] = Step("create-order", compensate=reject_order)
RESERVE_CREDIT: Step[OrderState] = Step(
    "reserve-credit",
    invoke=ReserveCredit,
    on_reply={CreditReserved: None},
    failures=[CreditLimitExceeded],
    on_failure=note_reason,
    retry=PATIENT,
    compensate=ReleaseCredit,
    **UNDO,
)
RESERVE_STOCK: Step[OrderState] = Step(
    "reserve-stock",
    invoke=ReserveStock,
    on_reply={StockReserved: None},
    failures=[OutOfStock],
    on_failure=note_reason,
    retry=PATIENT,
    compensate=ReleaseStock,
    **UNDO,
)
# The pivot: once a shipment is scheduled the order goes through. Nothing undoes it, so the
# steps after it are retried forward, never undone, and if it times out every time the saga
# is parked for a person (a ShipmentFailed answer still rejects the order).
SCHEDULE_SHIPMENT: Step[OrderState] = Step(
    "schedule-shipment",
    invoke=ScheduleShipment,
    on_reply={ShipmentScheduled: note_shipment},
    failures=[ShipmentFailed],
    on_failure=note_reason,
    retry=PERSISTENT,
    pivot=True,
)
APPROVE_ORDER: Step[OrderState] = Step(
    "approve-order", invoke=ApproveOrder, on_reply={OrderApproved: None}, retry=PERSISTENT
)

#: Version 1: one step after another.
place_order: Saga[OrderState] = Saga(
    "place-order",
    version=1,
    state=OrderState,
    steps=[CREATE_ORDER, RESERVE_CREDIT, RESERVE_STOCK, SCHEDULE_SHIPMENT, APPROVE_ORDER],
)

#: Version 2 waits for a manager's approval of orders above this amount...
APPROVAL_ABOVE = int(os.environ.get("PLACE_ORDER_APPROVAL_ABOVE", "20000"))
#: ... for at most this long (then the order is rejected).
APPROVAL_TIMEOUT_S = float(os.environ.get("PLACE_ORDER_APPROVAL_TIMEOUT_S", "3600"))


def approval(state: OrderState) -> str:
    return "manager" if state.amount > APPROVAL_ABOVE else "none"


def note_approver(state: OrderState, approved: ManagerApproved) -> OrderState:
    return state.model_copy(update={"approved_by": approved.approver})


def note_declined(state: OrderState, declined: ManagerDeclined) -> OrderState:
    return state.model_copy(update={"rejection_reason": f"declined: {declined.reason}"})


#: Version 2: credit and stock are reserved at the same time (a failure of either undoes the
#: other), and an order above APPROVAL_ABOVE waits for a manager's approval before it is
#: shipped. Sagas started on version 1 finish on version 1: the app runs both.
place_order_v2: Saga[OrderState] = Saga(
    "place-order",
    version=2,
    state=OrderState,
    steps=[
        CREATE_ORDER,
        Parallel("reserve", RESERVE_CREDIT, RESERVE_STOCK),
        Switch(
            "approval",
            on=approval,
            cases={
                "manager": WaitFor(
                    "manager-approval",
                    event=ManagerApproved,
                    failures=[ManagerDeclined],
                    timeout_s=APPROVAL_TIMEOUT_S,
                    on_event=note_approver,
                ),
                "none": [],
            },
        ),
        SCHEDULE_SHIPMENT,
        APPROVE_ORDER,
    ],
)

__all__ = ["CreditReleased", "OrderState", "place_order", "place_order_v2"]
