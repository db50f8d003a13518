"""Idempotency stores: a participant's stored reply per command message id.

Effect-once needs the stored reply and the business effect to commit in one
transaction. A service opens one transaction per record it handles
(``async with store.transaction() as tx``); each run of the handler is a savepoint
inside it (a business failure undoes the handler's own writes and still stores the
failure reply); the transaction has committed before the reply is sent.

Records of different sagas are handled concurrently, so a store decides how many
transactions may be open at once: `MemoryStore` any number, `SqliteStore` one at a time
(SQLite has a single writer; it commits a run of them together), `PostgresStore` one per
pooled connection.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import anyio

from ._errors import DefinitionError

TxT = TypeVar("TxT")
TxT_co = TypeVar("TxT_co", covariant=True)


@dataclass(frozen=True, slots=True)
class StoredReply:
    message_type: str
    payload: bytes


class StoreTransaction(Protocol[TxT_co]):
    """One open transaction of a store: what a handler's record runs in."""

    @property
    def db(self) -> TxT_co:
        """What handlers get as ``ctx.db`` (a connection, or None)."""
        ...

    async def reply_for(self, message_id: str) -> StoredReply | None: ...

    async def save_reply(self, message_id: str, reply: StoredReply) -> None:
        """Store the reply to a message; a second reply to the same id fails (rolling the
        transaction back), so two processes handling one record commit one effect."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """Undo the writes made inside the block if it raises."""
        ...


class IdempotencyStore(Protocol[TxT_co]):
    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction[TxT_co]]:
        """One transaction: committed (durably) when the block ends, rolled back if it
        raises. Also for a service's own writes outside handlers."""
        ...


def check_handler(store: object, handler: Callable[..., object], what: str) -> None:
    """DefinitionError if `store` gives handlers a database to await
    (``requires_async_handlers``, e.g. `PostgresStore`) and `handler` is a plain function;
    `what` names the handler, e.g. "handler of payments.Charge in service 'payments'"."""
    if not getattr(store, "requires_async_handlers", False):
        return
    call = getattr(handler, "__call__", None)  # noqa: B004 - a callable object's method
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
        return
    name = getattr(handler, "__qualname__", repr(handler))
    raise DefinitionError(
        f"{what} ({name}) is a plain function, but {type(store).__name__} gives handlers "
        "a connection to await (ctx.db): declare it `async def`"
    )


class MemoryStore:
    """Replies in a dict; the handler gets no database (``ctx.db`` is None)."""

    def __init__(self) -> None:
        self.replies: dict[str, StoredReply] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MemoryTransaction]:
        tx = _MemoryTransaction(self)
        yield tx
        for message_id in tx.new:
            if message_id in self.replies:
                raise KeyError(f"a reply to {message_id} is already stored")
        self.replies.update(tx.new)


class _MemoryTransaction:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.new: dict[str, StoredReply] = {}

    @property
    def db(self) -> None:
        return None

    async def reply_for(self, message_id: str) -> StoredReply | None:
        return self.new.get(message_id) or self._store.replies.get(message_id)

    async def save_reply(self, message_id: str, reply: StoredReply) -> None:
        if await self.reply_for(message_id) is not None:
            raise KeyError(f"a reply to {message_id} is already stored")
        self.new[message_id] = reply

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        saved = dict(self.new)
        try:
            yield
        except BaseException:
            self.new = saved
            raise


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sagakit_replies (
    message_id   TEXT PRIMARY KEY,
    message_type TEXT NOT NULL,
    payload      BLOB NOT NULL
)
"""


class SqliteStore:
    """Replies in a SQLite table next to the service's own tables, in one transaction.

    Handlers get the connection as ``ctx.db`` and write their business state through
    it; the reply row and those writes commit together. `schema` (SQL statements) is run
    when the database is opened, to create the service's own tables::

        payments = Service("payments", SqliteStore("payments.sqlite3", schema='''
            CREATE TABLE IF NOT EXISTS customers (id TEXT PRIMARY KEY, held INTEGER NOT NULL)
        '''))

    SQLite has one writer, so records run their transactions one at a time (a handler
    that awaits I/O holds the others up; for I/O-bound handlers use `PostgresStore`);
    transactions that follow each other closely commit together (up to `group_commit`
    records, none waiting more than about `group_delay_s` plus one record for its commit),
    each still a savepoint of its own. Code of the service's own that writes
    outside a handler uses the same queue: ``async with store.transaction() as tx:
    tx.db.execute(...)``.

    The file is opened on first use, so defining a store costs nothing at import. A
    relative path is taken in the directory ``SAGAKIT_DATA_DIR`` names (``sagakit run
    --data-dir``), else in the current directory; ``:memory:`` keeps it in memory.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        schema: str | None = None,
        group_commit: int = 256,
        group_delay_s: float = 0.005,
    ) -> None:
        self.path = str(path)
        self.schema = schema
        self.group_commit = group_commit
        self.group_delay_s = group_delay_s
        self._connection: sqlite3.Connection | None = None
        self._lock: anyio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._group: _Group | None = None
        self._savepoints = 0

    @property
    def location(self) -> str:
        """The file this store opens (``:memory:`` for none)."""
        if self.path == ":memory:" or Path(self.path).is_absolute():
            return self.path
        return str(Path(os.environ.get("SAGAKIT_DATA_DIR") or ".") / self.path)

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection (opened, and the schemas created, on first use)."""
        if self._connection is None:
            location = self.location
            if location != ":memory:":
                Path(location).parent.mkdir(parents=True, exist_ok=True)
            # Another process may hold the write lock for a moment (e.g. a client placing
            # orders in the same file): wait for it rather than fail.
            connection = sqlite3.connect(
                location, isolation_level=None, check_same_thread=False, timeout=30
            )
            if location != ":memory:":
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
            if self.schema:
                connection.executescript(self.schema)
            self._connection = connection
        return self._connection

    def add_schema(self, schema: str) -> None:
        """Also run `schema` when the database opens (at once, if it is open)."""
        self.schema = f"{self.schema}\n{schema}" if self.schema else schema
        if self._connection is not None:
            self._connection.executescript(schema)

    def _queue(self) -> anyio.Lock:
        # one per event loop: a store defined at import may serve several runs (tests)
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop, self._group = anyio.Lock(), loop, None
        return self._lock

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        lock = self._queue()
        async with lock:
            connection = self.connection
            group = self._group
            if group is not None and time.monotonic() - group.opened > self.group_delay_s:
                self._commit(group)  # the records before have waited long enough
                group = None
            if group is None or group.done.is_set():
                connection.execute("BEGIN IMMEDIATE")
                group = self._group = _Group()
            self._savepoints += 1
            name = f"sk_record{self._savepoints}"
            connection.execute(f"SAVEPOINT {name}")
            ok = False
            try:
                yield _SqliteTransaction(connection, self)
                ok = True
            finally:
                if not ok:
                    connection.execute(f"ROLLBACK TO {name}")
                connection.execute(f"RELEASE {name}")
                group.members += ok
                watcher = not group.watched
                group.watched = True
                if group.members >= self.group_commit or not lock.statistics().tasks_waiting:
                    self._commit(group)
        if not watcher:  # a later record of the group commits it
            await group.done.wait()
        while not group.done.is_set():  # the first one also watches out for nobody coming
            with anyio.move_on_after(0.01):
                await group.done.wait()
            if not group.done.is_set() and not lock.locked():
                async with lock:  # nobody came (the next one was cancelled): commit it here
                    if not group.done.is_set():
                        self._commit(group)
        if group.error is not None:
            raise group.error

    def _commit(self, group: _Group) -> None:
        try:
            self.connection.execute("COMMIT")
        except sqlite3.Error as exc:
            group.error = exc
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
        finally:
            self._group = None
            group.done.set()

    def close(self) -> None:
        """Close the connection; the next use opens the file again (where the data
        directory says then)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            if connection.in_transaction:
                connection.execute("COMMIT")
            connection.close()
        if self._group is not None:
            self._group.done.set()
            self._group = None

    def reply_count(self) -> int:
        row = self.connection.execute("SELECT count(*) FROM sagakit_replies").fetchone()
        return int(row[0])


class _Group:
    """Records in one SQLite transaction, waiting for its commit."""

    def __init__(self) -> None:
        self.members = 0
        self.watched = False
        self.opened = time.monotonic()
        self.done = anyio.Event()
        self.error: sqlite3.Error | None = None


class _SqliteTransaction:
    def __init__(self, connection: sqlite3.Connection, store: SqliteStore) -> None:
        self._conn = connection
        self._store = store

    @property
    def db(self) -> sqlite3.Connection:
        return self._conn

    async def reply_for(self, message_id: str) -> StoredReply | None:
        row = self._conn.execute(
            "SELECT message_type, payload FROM sagakit_replies WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else StoredReply(row[0], bytes(row[1]))

    async def save_reply(self, message_id: str, reply: StoredReply) -> None:
        self._conn.execute(
            "INSERT INTO sagakit_replies (message_id, message_type, payload) VALUES (?, ?, ?)",
            (message_id, reply.message_type, reply.payload),
        )

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self._store._savepoints += 1
        name = f"sk{self._store._savepoints}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")
