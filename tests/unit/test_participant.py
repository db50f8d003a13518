"""Participants: effect-once handling, failure replies, savepoints and dead letters."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import anyio
import pytest

from sagakit import (
    BusinessFailure,
    Command,
    Envelope,
    HandlerContext,
    HandlerFailed,
    MemoryBroker,
    MemoryStore,
    MemoryTransport,
    OutgoingRecord,
    Record,
    Reply,
    Service,
    SqliteStore,
    TransportError,
)
from sagakit._codec import encode_record
from sagakit.transport import Delivered

pytestmark = pytest.mark.anyio

REPLIES = "ptcp.inbox"  # the inbox of the saga type "ptcp" that sends the commands


class Deposit(Command, type="ptcp.Deposit"):
    account: str
    amount: int


class Deposited(Reply, type="ptcp.Deposited"):
    balance: int


class Refused(Reply, type="ptcp.Refused"):
    reason: str


def command(message_id: str, cmd: Command, saga_id: str = "s1") -> OutgoingRecord:
    env = Envelope(
        message_id=message_id,
        message_type=cmd.message_type,
        saga_id=saga_id,
        correlation_id=saga_id,
        causation_id=saga_id,
        saga_type="ptcp",
        reply_to=REPLIES,
    )
    return encode_record("bank.commands", env, cmd)


def bank(store: SqliteStore) -> tuple[Service[sqlite3.Connection], list[str]]:
    store.connection.execute(
        "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)"
    )
    calls: list[str] = []
    service = Service("bank", store, partitions=2)

    @service.handles(Deposit)
    def deposit(cmd: Deposit, ctx: HandlerContext[sqlite3.Connection]) -> Deposited:
        calls.append(ctx.message_id)
        ctx.db.execute(
            "INSERT INTO accounts (id, balance) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET balance = balance + excluded.balance",
            (cmd.account, cmd.amount),
        )
        (balance,) = ctx.db.execute(
            "SELECT balance FROM accounts WHERE id = ?", (cmd.account,)
        ).fetchone()
        if balance > 1000:
            raise BusinessFailure(Refused(reason="over the limit"))
        if cmd.amount < 0:
            raise ValueError("negative deposit")
        return Deposited(balance=balance)

    return service, calls


def balance(store: SqliteStore, account: str) -> int | None:
    row = store.connection.execute(
        "SELECT balance FROM accounts WHERE id = ?", (account,)
    ).fetchone()
    return None if row is None else int(row[0])


async def run_until(
    service: Service[sqlite3.Connection],
    transport: MemoryTransport,
    records: Sequence[OutgoingRecord],
    expected_replies: int,
    topic: str = REPLIES,
) -> list[Record]:
    await transport.ensure_topics({REPLIES: 2})
    async with anyio.create_task_group() as tg:
        await tg.start(service.run, transport)
        await transport.send(records)
        await transport.broker.wait_until(
            lambda: len(transport.broker.records(topic)) >= expected_replies
        )
        tg.cancel_scope.cancel()
    return transport.broker.records(topic)


async def test_duplicate_command_gets_the_stored_reply_without_running_again() -> None:
    store = SqliteStore()
    service, calls = bank(store)
    transport = MemoryTransport()
    cmd = command("s1:deposit:1", Deposit(account="a", amount=100))
    replies = await run_until(service, transport, [cmd, cmd, cmd], expected_replies=3)
    assert calls == ["s1:deposit:1"]
    assert balance(store, "a") == 100
    assert len({r.value for r in replies}) == 1
    assert {dict(r.headers)["message-id"] for r in replies} == {b"s1:deposit:1:reply"}
    assert {dict(r.headers)["causation-id"] for r in replies} == {b"s1:deposit:1"}


async def test_business_failure_is_a_failure_reply_and_its_writes_are_undone() -> None:
    store = SqliteStore()
    service, calls = bank(store)
    transport = MemoryTransport()
    replies = await run_until(
        service,
        transport,
        [
            command("s1:deposit:1", Deposit(account="a", amount=900)),
            command("s2:deposit:1", Deposit(account="a", amount=500), saga_id="s2"),
        ],
        expected_replies=2,
    )
    types = sorted(dict(r.headers)["message-type"] for r in replies)
    assert types == [b"ptcp.Deposited", b"ptcp.Refused"]
    assert balance(store, "a") == 900  # the refused deposit's own write was rolled back
    assert len(calls) == 2


async def test_handler_error_goes_to_the_dlq_and_the_next_command_is_handled() -> None:
    store = SqliteStore()
    service, _ = bank(store)
    transport = MemoryTransport()
    await run_until(
        service,
        transport,
        [
            command("s1:deposit:1", Deposit(account="b", amount=-5)),
            OutgoingRecord("bank.commands", b"s9", b"garbage", ()),
            command("s2:deposit:1", Deposit(account="c", amount=7), saga_id="s2"),
        ],
        expected_replies=1,
    )
    await transport.broker.wait_until(
        lambda: len(transport.broker.records("bank.commands.dlq")) >= 2
    )
    dead = transport.broker.records("bank.commands.dlq")
    kinds = sorted(dict(r.headers)["error-type"] for r in dead)
    assert kinds == [b"DecodeError", b"ValueError"]
    assert balance(store, "b") is None  # the failed handler's write was undone
    assert balance(store, "c") == 7


async def test_unknown_command_type_is_dead_lettered() -> None:
    class Withdraw(Command, type="ptcp.Withdraw"):
        account: str

    store = SqliteStore()
    service, _ = bank(store)
    transport = MemoryTransport()
    await transport.ensure_topics({REPLIES: 2})
    async with anyio.create_task_group() as tg:
        await tg.start(service.run, transport)
        await transport.send([command("s1:withdraw:1", Withdraw(account="a"))])
        await transport.broker.wait_until(
            lambda: bool(transport.broker.records("bank.commands.dlq"))
        )
        tg.cancel_scope.cancel()
    [dead] = transport.broker.records("bank.commands.dlq")
    assert dict(dead.headers)["error-type"] == b"NoHandler"


class FailingReplies(MemoryTransport):
    """Fails the first `failures` sends of replies: after the store committed, before the
    offsets (the broker was unreachable, say)."""

    def __init__(self, broker: MemoryBroker, failures: int) -> None:
        super().__init__(broker)
        self.failures = failures

    async def send(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        if self.failures and any(r.topic == REPLIES for r in records):
            self.failures -= 1
            raise TransportError("simulated failure before the reply was sent")
        return await super().send(records)


async def test_effect_and_stored_reply_commit_together_so_a_redelivery_does_not_repeat_it() -> None:
    broker = MemoryBroker()
    store = SqliteStore()
    service, calls = bank(store)
    failing = FailingReplies(broker, failures=3)
    replies = await run_until(
        service,
        failing,
        [command("s1:deposit:1", Deposit(account="a", amount=10))],
        expected_replies=1,
    )
    # the batch was read again after each failed send, answered from the stored reply
    assert failing.failures == 0 and service.stats.failed_batches == 3
    assert calls == ["s1:deposit:1"]
    assert balance(store, "a") == 10
    assert [dict(r.headers)["message-type"] for r in replies] == [b"ptcp.Deposited"]


async def test_memory_store_deduplicates_too() -> None:
    service: Service[None] = Service("bank", MemoryStore(), partitions=2)
    seen: list[str] = []

    @service.handles(Deposit)
    def deposit(cmd: Deposit, ctx: HandlerContext[None]) -> Deposited:
        seen.append(ctx.message_id)
        return Deposited(balance=cmd.amount)

    transport = MemoryTransport()
    cmd = command("s1:deposit:1", Deposit(account="a", amount=3))
    await transport.ensure_topics({REPLIES: 2})
    async with anyio.create_task_group() as tg:
        await tg.start(service.run, transport)
        await transport.send([cmd])
        await transport.send([cmd])
        await transport.broker.wait_until(lambda: len(transport.broker.records(REPLIES)) >= 2)
        tg.cancel_scope.cancel()
    assert seen == ["s1:deposit:1"]


async def test_a_handler_error_is_retried_then_answered_as_failed_and_dead_lettered() -> None:
    service: Service[None] = Service("bank", MemoryStore(), partitions=2, handler_attempts=3)
    runs: list[str] = []

    @service.handles(Deposit)
    def deposit(cmd: Deposit, ctx: HandlerContext[None]) -> Deposited:
        runs.append(cmd.account)
        if cmd.account == "flaky" and runs.count("flaky") < 3:
            raise ConnectionError("ledger briefly unreachable")
        if cmd.account == "broken":
            raise ConnectionError("ledger is down")
        return Deposited(balance=cmd.amount)

    transport = MemoryTransport()
    await run_until(
        service,
        transport,
        [
            command("s1:deposit:1", Deposit(account="flaky", amount=5)),
            command("s2:deposit:1", Deposit(account="broken", amount=5), saga_id="s2"),
        ],
        expected_replies=2,
    )
    assert runs.count("flaky") == 3 and runs.count("broken") == 3
    replies = {dict(r.headers)["causation-id"]: r for r in transport.broker.records(REPLIES)}
    assert dict(replies[b"s1:deposit:1"].headers)["message-type"] == b"ptcp.Deposited"
    # the saga of the broken one is told, so it can retry or compensate instead of waiting
    failed = replies[b"s2:deposit:1"]
    assert dict(failed.headers)["message-type"] == b"sagakit.HandlerFailed"
    reason = HandlerFailed.model_validate_json(failed.value)
    assert (reason.service, reason.error_type, reason.attempts) == ("bank", "ConnectionError", 3)
    assert reason.error == "ledger is down"
    [dead] = transport.broker.records("bank.commands.dlq")
    headers = dict(dead.headers)
    assert headers["error-type"] == b"ConnectionError"
    assert b"after 3 attempt(s): ledger is down" in headers["error-message"]
