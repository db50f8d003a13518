"""The transfer saga: debit the source, screen the transfer, deposit, tell the payee."""

from __future__ import annotations

from pydantic import BaseModel

from sagakit import RetryPolicy, Saga, Step

from .messages import (
    Blocked,
    Cleared,
    Debit,
    Debited,
    Deposit,
    Deposited,
    InsufficientFunds,
    Notified,
    Notify,
    Refund,
    Screen,
    Withdraw,
)


class Transfer(BaseModel):
    transfer_id: str
    source: str
    target: str
    amount: int


def debit(t: Transfer) -> Debit:
    return Debit(transfer_id=t.transfer_id, account=t.source, amount=t.amount)


def refund(t: Transfer) -> Refund:
    return Refund(transfer_id=t.transfer_id, account=t.source, amount=t.amount)


def deposit(t: Transfer) -> Deposit:
    return Deposit(transfer_id=t.transfer_id, account=t.target, amount=t.amount)


def withdraw(t: Transfer) -> Withdraw:
    return Withdraw(transfer_id=t.transfer_id)


def notify(t: Transfer) -> Notify:
    return Notify(transfer_id=t.transfer_id, account=t.target, text=f"you received {t.amount}")


ASK_AGAIN = RetryPolicy(max_attempts=5, timeout_s=5.0, initial_backoff_s=0.2, max_backoff_s=2.0)
KEEP_ASKING = RetryPolicy(max_attempts=20, timeout_s=5.0, initial_backoff_s=0.2, max_backoff_s=2.0)

transfer = Saga(
    "transfer",
    state=Transfer,
    steps=[
        Step(
            "debit",
            invoke=debit,
            on_reply={Debited: None},
            failures=[InsufficientFunds],
            retry=ASK_AGAIN,
            compensate=refund,
        ),
        Step(
            "screen",
            invoke=Screen,
            on_reply={Cleared: None},
            failures=[Blocked],
            retry=ASK_AGAIN,
            compensate=withdraw,
        ),
        # once the money is on the target account it stays there: the point of no return
        Step("deposit", invoke=deposit, on_reply={Deposited: None}, retry=KEEP_ASKING, pivot=True),
        Step("notify", invoke=notify, on_reply={Notified: None}, retry=KEEP_ASKING),
    ],
)
