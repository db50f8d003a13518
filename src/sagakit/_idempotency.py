"""Idempotency stores: a participant's stored reply per command message id.

Effect-once needs the stored reply and the business effect to commit in one
transaction. A store opens one transaction per consumed batch; each command runs in
a savepoint (a business failure undoes the handler's own writes and still stores the
failure reply); the transaction commits before the replies are sent.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

TxT = TypeVar("TxT")
TxT_co = TypeVar("TxT_co", covariant=True)


@dataclass(frozen=True, slots=True)
class StoredReply:
    message_type: str
    payload: bytes


class StoreBatch(Protocol[TxT_co]):
    """One open transaction of a store."""

    @property
    def db(self) -> TxT_co: ...

    def reply_for(self, message_id: str) -> StoredReply | None: ...

    def save_reply(self, message_id: str, reply: StoredReply) -> None: ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Undo the writes made inside the block if it raises."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class IdempotencyStore(Protocol[TxT_co]):
    def begin(self) -> StoreBatch[TxT_co]: ...


class MemoryStore:
    """Replies in a dict; the handler gets no database (``ctx.db`` is None)."""

    def __init__(self) -> None:
        self.replies: dict[str, StoredReply] = {}

    def begin(self) -> _MemoryBatch:
        return _MemoryBatch(self)


class _MemoryBatch:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._new: dict[str, StoredReply] = {}

    @property
    def db(self) -> None:
        return None

    def reply_for(self, message_id: str) -> StoredReply | None:
        return self._new.get(message_id) or self._store.replies.get(message_id)

    def save_reply(self, message_id: str, reply: StoredReply) -> None:
        self._new[message_id] = reply

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        yield

    def commit(self) -> None:
        self._store.replies.update(self._new)
        self._new = {}

    def rollback(self) -> None:
        self._new = {}


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

    The file is opened on first use, so defining a store costs nothing at import. A
    relative path is taken in the directory ``SAGAKIT_DATA_DIR`` names (``sagakit run
    --data-dir``), else in the current directory; ``:memory:`` keeps it in memory.
    """

    def __init__(self, path: str | Path = ":memory:", *, schema: str | None = None) -> None:
        self.path = str(path)
        self.schema = schema
        self._connection: sqlite3.Connection | None = None

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

    def begin(self) -> _SqliteBatch:
        self.connection.execute("BEGIN IMMEDIATE")
        return _SqliteBatch(self.connection)

    def close(self) -> None:
        """Close the connection; the next use opens the file again (where the data
        directory says then)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def reply_count(self) -> int:
        row = self.connection.execute("SELECT count(*) FROM sagakit_replies").fetchone()
        return int(row[0])


class _SqliteBatch:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._n = 0

    @property
    def db(self) -> sqlite3.Connection:
        return self._conn

    def reply_for(self, message_id: str) -> StoredReply | None:
        row = self._conn.execute(
            "SELECT message_type, payload FROM sagakit_replies WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else StoredReply(row[0], bytes(row[1]))

    def save_reply(self, message_id: str, reply: StoredReply) -> None:
        self._conn.execute(
            "INSERT INTO sagakit_replies (message_id, message_type, payload) VALUES (?, ?, ?)",
            (message_id, reply.message_type, reply.payload),
        )

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._n += 1
        name = f"sk{self._n}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
