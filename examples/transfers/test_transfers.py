"""The transfers app's own tests, as a user writes them: sagakit's pytest plugin gives the
fixtures, time is virtual, and each test's services get empty SQLite stores in memory."""

from __future__ import annotations

from typing import Any

from sagakit import SagaStatus

from .app import app
from .saga import Transfer, transfer
from .services import fraud, ledger, notifier


async def open_accounts(balance: int = 1_000) -> None:
    db = ledger.store.connection  # type: ignore[attr-defined]
    for account in ("alice", "bob"):
        db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?)", (account, balance))


def balances() -> dict[str, int]:
    db = ledger.store.connection  # type: ignore[attr-defined]
    return dict(db.execute("SELECT id, balance FROM accounts"))


async def test_a_transfer_moves_the_money_once(saga_env: Any) -> None:
    env = await saga_env(app)
    await open_accounts()
    await env.start(
        transfer, "t-1", Transfer(transfer_id="t-1", source="alice", target="bob", amount=300)
    )
    ended = await env.wait_until_ended("t-1")
    assert ended.status is SagaStatus.COMPLETED
    assert balances() == {"alice": 700, "bob": 1_300}


async def test_a_blocked_transfer_gives_the_money_back(saga_env: Any) -> None:
    env = await saga_env(app)
    await open_accounts()
    await env.start(
        transfer, "t-2", Transfer(transfer_id="t-2", source="alice", target="bob", amount=950)
    )
    ended = await env.wait_until_ended("t-2")
    assert ended.status is SagaStatus.COMPENSATED and "Blocked" in (ended.failure or "")
    assert balances() == {"alice": 1_000, "bob": 1_000}


async def test_when_fraud_screening_is_down_an_operator_undoes_the_transfer(
    saga_env: Any,
) -> None:
    env = await saga_env([transfer], [ledger, notifier])  # fraud is down
    await open_accounts()
    await env.start(
        transfer, "t-3", Transfer(transfer_id="t-3", source="alice", target="bob", amount=10)
    )
    await env.settle()
    assert balances()["alice"] == 990  # debited, waiting for screening
    # five 5 s timeouts with back-offs, then five for the screening's withdrawal: the
    # screening may have happened unseen, so the saga cannot tell if it must be undone
    await env.advance(120)  # virtual seconds: the test takes milliseconds
    parked = env.instance("t-3")
    assert parked is not None and parked.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert balances()["alice"] == 990  # nothing is lost: the money waits for a person

    await env.start_service(fraud)  # fraud screening is back
    await env.client.resume("transfer", "t-3", note="fraud screening is back")
    ended = await env.wait_until_ended("t-3")
    assert ended.status is SagaStatus.COMPENSATED
    assert balances() == {"alice": 1_000, "bob": 1_000}
