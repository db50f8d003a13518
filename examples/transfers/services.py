"""The ledger (accounts), fraud screening and the notifier, each with its SQLite file."""

from __future__ import annotations

import sqlite3

from sagakit import BusinessFailure, HandlerContext, Service, SqliteStore

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
    Refunded,
    Screen,
    Withdraw,
    Withdrawn,
)

Ctx = HandlerContext[sqlite3.Connection]

ledger = Service(
    "ledger",
    SqliteStore(
        "ledger.sqlite3",
        schema="""
        CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
        -- one row per transfer and kind: a retried command finds it and does nothing again
        CREATE TABLE IF NOT EXISTS movements (
            transfer_id TEXT NOT NULL, kind TEXT NOT NULL, account TEXT NOT NULL,
            amount INTEGER NOT NULL, PRIMARY KEY (transfer_id, kind)
        );
        """,
    ),
)


def _moved(db: sqlite3.Connection, transfer_id: str, kind: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM movements WHERE transfer_id = ? AND kind = ?", (transfer_id, kind)
    ).fetchone()
    return row is not None


def _move(db: sqlite3.Connection, transfer_id: str, kind: str, account: str, amount: int) -> None:
    db.execute(
        "INSERT INTO movements (transfer_id, kind, account, amount) VALUES (?, ?, ?, ?)",
        (transfer_id, kind, account, amount),
    )
    db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, account))


def balance(db: sqlite3.Connection, account: str) -> int:
    row = db.execute("SELECT balance FROM accounts WHERE id = ?", (account,)).fetchone()
    return 0 if row is None else int(row[0])


@ledger.handles(Debit)
def on_debit(cmd: Debit, ctx: Ctx) -> Debited:
    if _moved(ctx.db, cmd.transfer_id, "refund"):  # refunded before this arrived: no effect
        return Debited(balance=balance(ctx.db, cmd.account))
    if not _moved(ctx.db, cmd.transfer_id, "debit"):
        if balance(ctx.db, cmd.account) < cmd.amount:
            raise BusinessFailure(InsufficientFunds(balance=balance(ctx.db, cmd.account)))
        _move(ctx.db, cmd.transfer_id, "debit", cmd.account, -cmd.amount)
    return Debited(balance=balance(ctx.db, cmd.account))


@ledger.handles(Refund)
def on_refund(cmd: Refund, ctx: Ctx) -> Refunded:
    if not _moved(ctx.db, cmd.transfer_id, "refund"):
        # refund only what was debited; with nothing debited, leave a marker that stops
        # a late debit
        amount = cmd.amount if _moved(ctx.db, cmd.transfer_id, "debit") else 0
        _move(ctx.db, cmd.transfer_id, "refund", cmd.account, amount)
    return Refunded()


@ledger.handles(Deposit)
def on_deposit(cmd: Deposit, ctx: Ctx) -> Deposited:
    if not _moved(ctx.db, cmd.transfer_id, "deposit"):
        _move(ctx.db, cmd.transfer_id, "deposit", cmd.account, cmd.amount)
    return Deposited()


#: Transfers above this are blocked.
FRAUD_LIMIT = 900

fraud = Service(
    "fraud",
    SqliteStore(
        "fraud.sqlite3",
        schema="CREATE TABLE IF NOT EXISTS screened (transfer_id TEXT PRIMARY KEY, verdict TEXT)",
    ),
)


@fraud.handles(Screen)
def on_screen(cmd: Screen, ctx: Ctx) -> Cleared:
    verdict = "blocked" if cmd.amount > FRAUD_LIMIT else "cleared"
    ctx.db.execute(
        "INSERT OR IGNORE INTO screened (transfer_id, verdict) VALUES (?, ?)",
        (cmd.transfer_id, verdict),
    )
    if verdict == "blocked":
        raise BusinessFailure(Blocked(reason=f"{cmd.amount} is over the limit {FRAUD_LIMIT}"))
    return Cleared()


@fraud.handles(Withdraw)
def on_withdraw(cmd: Withdraw, ctx: Ctx) -> Withdrawn:
    ctx.db.execute(
        "INSERT INTO screened (transfer_id, verdict) VALUES (?, 'withdrawn') "
        "ON CONFLICT(transfer_id) DO UPDATE SET verdict = 'withdrawn'",
        (cmd.transfer_id,),
    )
    return Withdrawn()


notifier = Service(
    "notifier",
    SqliteStore(
        "notifier.sqlite3",
        schema="CREATE TABLE IF NOT EXISTS notices (transfer_id TEXT PRIMARY KEY, account TEXT)",
    ),
)


@notifier.handles(Notify)
def on_notify(cmd: Notify, ctx: Ctx) -> Notified:
    ctx.db.execute(
        "INSERT OR IGNORE INTO notices (transfer_id, account) VALUES (?, ?)",
        (cmd.transfer_id, cmd.account),
    )
    return Notified()
