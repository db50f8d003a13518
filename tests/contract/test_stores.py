"""The idempotency store contract, run against MemoryStore, SqliteStore (a file) and
PostgresStore (a database of its own on the session's server).

What effect-once rests on: a stored reply is found later; nothing of a transaction that
raised is kept; the handler's business writes and the reply commit (or roll back)
together; a savepoint undoes only its own writes; a second reply to one id fails so two
handlers of one record commit one effect; concurrent transactions lose nothing.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from sagakit import MemoryStore, PostgresStore, SqliteStore, StoredReply

pytestmark = pytest.mark.anyio

BUSINESS = "CREATE TABLE IF NOT EXISTS things (name TEXT PRIMARY KEY)"
ALL = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
WITH_DB = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def reply(n: int | str) -> StoredReply:
    return StoredReply("tests.Done", f'{{"n":"{n}"}}'.encode())


class Boom(Exception):
    pass


@dataclass
class Kit:
    """One kind of store, and how a handler writes business rows through its ``tx.db``
    (sqlite3 calls, asyncpg awaits; MemoryStore has no database)."""

    kind: str
    store: Any

    @property
    def has_db(self) -> bool:
        return self.kind != "memory"

    async def write(self, db: Any, name: str) -> None:
        if self.kind == "sqlite":
            db.execute("INSERT INTO things (name) VALUES (?)", (name,))
        elif self.kind == "postgres":
            await db.execute("INSERT INTO things (name) VALUES ($1)", name)

    async def names(self) -> set[str]:
        """The business rows committed (read in a transaction of their own)."""
        async with self.store.transaction() as tx:
            if self.kind == "sqlite":
                return {r[0] for r in tx.db.execute("SELECT name FROM things")}
            if self.kind == "postgres":
                return {r["name"] for r in await tx.db.fetch("SELECT name FROM things")}
        return set()

    async def stored(self, message_id: str) -> StoredReply | None:
        async with self.store.transaction() as tx:
            stored: StoredReply | None = await tx.reply_for(message_id)
        return stored

    async def close(self) -> None:
        if isinstance(self.store, SqliteStore):
            self.store.close()
        elif isinstance(self.store, PostgresStore):
            await self.store.close()


@pytest.fixture
def make_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    """A new empty store of the parametrised kind, its schema not yet created."""
    kind: str = request.param
    if kind == "memory":
        store: Any = MemoryStore()
    elif kind == "sqlite":
        store = SqliteStore(tmp_path / "store.sqlite3", schema=BUSINESS)
    else:
        store = PostgresStore(request.getfixturevalue("postgres_dsn"), schema=BUSINESS)
    yield Kit(kind, store)


@pytest.fixture
async def kit(make_kit: Kit) -> AsyncIterator[Kit]:
    yield make_kit
    await make_kit.close()


def kinds(params: list[Any]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("make_kit", params, indirect=True)


@kinds(ALL)
async def test_a_stored_reply_is_found_in_a_later_transaction(kit: Kit) -> None:
    async with kit.store.transaction() as tx:
        assert await tx.reply_for("m-1") is None
        await tx.save_reply("m-1", reply(1))
        assert await tx.reply_for("m-1") == reply(1)  # and within its own transaction

    assert await kit.stored("m-1") == reply(1)
    assert await kit.stored("m-2") is None


@kinds(ALL)
async def test_nothing_is_stored_when_the_block_raises(kit: Kit) -> None:
    with pytest.raises(Boom):
        async with kit.store.transaction() as tx:
            await kit.write(tx.db, "effect")
            await tx.save_reply("m-1", reply(1))
            raise Boom

    assert await kit.stored("m-1") is None
    assert await kit.names() == set()


@kinds(WITH_DB)
async def test_the_business_write_and_the_reply_commit_together_and_roll_back_together(
    kit: Kit,
) -> None:
    async with kit.store.transaction() as tx:
        await kit.write(tx.db, "kept")
        await tx.save_reply("m-kept", reply("kept"))
    with pytest.raises(Boom):
        async with kit.store.transaction() as tx:
            await kit.write(tx.db, "undone")
            await tx.save_reply("m-undone", reply("undone"))
            raise Boom

    assert await kit.names() == {"kept"}
    assert await kit.stored("m-kept") == reply("kept")
    assert await kit.stored("m-undone") is None


@kinds(ALL)
async def test_a_savepoint_that_raises_undoes_only_its_own_writes(kit: Kit) -> None:
    async with kit.store.transaction() as tx:
        await kit.write(tx.db, "before")
        async with tx.savepoint():
            await kit.write(tx.db, "kept-run")
        with pytest.raises(Boom):
            async with tx.savepoint():  # a handler's run that failed
                await kit.write(tx.db, "failed-run")
                await tx.save_reply("m-inside", reply("inside"))
                raise Boom
        assert await tx.reply_for("m-inside") is None
        await tx.save_reply("m-1", reply("failure reply"))  # the transaction goes on

    assert await kit.stored("m-1") == reply("failure reply")
    assert await kit.stored("m-inside") is None
    if kit.has_db:
        assert await kit.names() == {"before", "kept-run"}


@kinds(ALL)
async def test_a_second_reply_to_one_id_fails_and_rolls_back_its_business_write(
    kit: Kit,
) -> None:
    async with kit.store.transaction() as tx:
        await kit.write(tx.db, "first")
        await tx.save_reply("m-1", reply("first"))

    with pytest.raises(Exception):  # noqa: B017 - each store's driver has its own error
        async with kit.store.transaction() as tx:
            await kit.write(tx.db, "second")
            await tx.save_reply("m-1", reply("second"))

    assert await kit.stored("m-1") == reply("first")
    if kit.has_db:
        assert await kit.names() == {"first"}


@kinds(ALL)
async def test_two_handlers_racing_on_one_record_commit_one_effect(kit: Kit) -> None:
    """Two processes given the same command: whichever saves its reply second (or sees
    the first's) leaves no effect behind."""
    outcomes: list[str] = []

    async def handle(who: str) -> None:
        try:
            async with kit.store.transaction() as tx:
                if await tx.reply_for("m-1") is not None:
                    outcomes.append("duplicate")
                    return
                await kit.write(tx.db, f"effect-by-{who}")
                await anyio.sleep(0.05)  # both are inside before either saves
                await tx.save_reply("m-1", reply(who))
            outcomes.append("committed")
        except Exception:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        tg.start_soon(handle, "a")
        tg.start_soon(handle, "b")

    assert sorted(outcomes) in (["committed", "duplicate"], ["committed", "refused"])
    winner = await kit.stored("m-1")
    assert winner is not None
    if kit.has_db:
        assert await kit.names() == {f"effect-by-{json.loads(winner.payload)['n']}"}


@kinds(ALL)
async def test_many_concurrent_transactions_all_commit_and_nothing_is_lost(kit: Kit) -> None:
    records = 50
    open_now = most_open = 0

    async def handle(n: int) -> None:
        nonlocal open_now, most_open
        async with kit.store.transaction() as tx:
            open_now += 1
            most_open = max(most_open, open_now)
            assert await tx.reply_for(f"m-{n}") is None
            async with tx.savepoint():
                await anyio.sleep(0.01)  # a handler awaiting I/O
                await kit.write(tx.db, f"effect-{n}")
            await tx.save_reply(f"m-{n}", reply(n))
            open_now -= 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(records):
                tg.start_soon(handle, n)

    for n in range(records):
        assert await kit.stored(f"m-{n}") == reply(n)
    if kit.has_db:
        assert await kit.names() == {f"effect-{n}" for n in range(records)}
    # SQLite runs one transaction at a time; the others overlap (Postgres: at most one per
    # pooled connection, 10 by default)
    if kit.kind == "sqlite":
        assert most_open == 1
    else:
        assert 1 < most_open <= (10 if kit.kind == "postgres" else records)


@kinds(ALL)
def test_a_store_is_used_from_two_event_loops_in_turn(make_kit: Kit) -> None:
    """A store defined at import serves several runs (tests, each its own event loop);
    the first run does not close it."""

    async def first() -> None:
        async with make_kit.store.transaction() as tx:
            await make_kit.write(tx.db, "from-first-loop")
            await tx.save_reply("m-1", reply(1))

    async def second() -> None:
        assert await make_kit.stored("m-1") == reply(1)
        async with make_kit.store.transaction() as tx:
            await make_kit.write(tx.db, "from-second-loop")
            await tx.save_reply("m-2", reply(2))
        assert await make_kit.stored("m-2") == reply(2)
        if make_kit.has_db:
            assert await make_kit.names() == {"from-first-loop", "from-second-loop"}
        await make_kit.close()

    anyio.run(first)
    anyio.run(second)
    gc.collect()  # a connection left open by the first loop would warn here (an error)
