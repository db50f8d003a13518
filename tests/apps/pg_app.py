"""A wallet on PostgreSQL, run as processes by the crash test: a top-up saga of two steps
(credit, then a bonus) whose service keeps balances in PostgreSQL through PostgresStore
(the DSN from ``SAGAKIT_POSTGRES_DSN``).

Its handlers apply their effect every time they run (no business-key check of their own),
and log every run in ``effects``: a command applied twice shows there as two rows.
"""

from __future__ import annotations

import asyncpg
from pydantic import BaseModel

from sagakit import (
    App,
    Command,
    HandlerContext,
    PostgresStore,
    Reply,
    RetryPolicy,
    Saga,
    Service,
    Step,
)


class Credit(Command, type="wallet.Credit"):
    account: str
    amount: int


class Credited(Reply, type="wallet.Credited"):
    balance: int


class Uncredit(Command, type="wallet.Uncredit"):
    account: str
    amount: int


class Uncredited(Reply, type="wallet.Uncredited"):
    balance: int


class Bonus(Command, type="wallet.Bonus"):
    account: str
    amount: int


class BonusPaid(Reply, type="wallet.BonusPaid"):
    balance: int


class TopUp(BaseModel):
    account: str
    amount: int
    bonus: int


def credit(t: TopUp) -> Credit:
    return Credit(account=t.account, amount=t.amount)


def uncredit(t: TopUp) -> Uncredit:
    return Uncredit(account=t.account, amount=t.amount)


def bonus(t: TopUp) -> Bonus:
    return Bonus(account=t.account, amount=t.bonus)


# no timeout: a retry would be a new command (a new message id) the handler applies
# again; the test is about redelivery of the same command after a crash
WAIT = RetryPolicy(max_attempts=1, timeout_s=None)

topup = Saga(
    "topup",
    state=TopUp,
    steps=[
        Step("credit", invoke=credit, on_reply={Credited: None}, compensate=uncredit, retry=WAIT),
        Step("bonus", invoke=bonus, on_reply={BonusPaid: None}, retry=WAIT),
    ],
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, cents BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS effects (
    saga_id TEXT NOT NULL, step TEXT NOT NULL, message_id TEXT NOT NULL, cents BIGINT NOT NULL
);
"""

wallet = Service("wallet", PostgresStore(schema=SCHEMA))
Ctx = HandlerContext[asyncpg.Connection]


async def apply(ctx: Ctx, step: str, account: str, cents: int) -> int:
    await ctx.db.execute(
        "INSERT INTO effects (saga_id, step, message_id, cents) VALUES ($1, $2, $3, $4)",
        ctx.saga_id,
        step,
        ctx.message_id,
        cents,
    )
    balance: int = await ctx.db.fetchval(
        "INSERT INTO balances (account, cents) VALUES ($1, $2) ON CONFLICT (account) "
        "DO UPDATE SET cents = balances.cents + EXCLUDED.cents RETURNING cents",
        account,
        cents,
    )
    return balance


@wallet.handles(Credit)
async def on_credit(cmd: Credit, ctx: Ctx) -> Credited:
    return Credited(balance=await apply(ctx, "credit", cmd.account, cmd.amount))


@wallet.handles(Uncredit)
async def on_uncredit(cmd: Uncredit, ctx: Ctx) -> Uncredited:
    return Uncredited(balance=await apply(ctx, "uncredit", cmd.account, -cmd.amount))


@wallet.handles(Bonus)
async def on_bonus(cmd: Bonus, ctx: Ctx) -> BonusPaid:
    return BonusPaid(balance=await apply(ctx, "bonus", cmd.account, cmd.amount))


app = App("pgwallet", sagas=[topup], services=[wallet])
