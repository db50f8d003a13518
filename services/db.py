"""Where the sample services keep their state: SQLite (the default, a file each in the data
directory) or PostgreSQL when ``SAGAKIT_POSTGRES_DSN`` is set (docker-compose, deploy/).

The repositories are written once, against the ``sqlite3`` connection API
(``db.execute(sql, params)`` with ``?`` placeholders, then ``fetchone``/``fetchall``/
``rowcount``), in SQL both databases accept. On SQLite the handlers get the connection itself
and run on the event loop. On PostgreSQL a handler gets `PostgresConnection`, the same API
over the record's asyncpg connection: the handler runs in a worker thread and each statement
is awaited on the event loop, inside the transaction the store opened for the record, so the
business writes and the stored reply still commit together.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import anyio.from_thread
import anyio.to_thread

from sagakit import HandlerContext, PostgresStore, Service, SqliteStore

T = TypeVar("T")
DSN_ENV = "SAGAKIT_POSTGRES_DSN"

#: A store of a sample service: its SQLite file, or a PostgreSQL database.
Store = SqliteStore | PostgresStore


class Connection(Protocol):
    """The part of ``sqlite3.Connection`` the repositories use."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...


def store_for(name: str, schema: str) -> Store:
    """``NAME.sqlite3`` in the data directory, or, with ``SAGAKIT_POSTGRES_DSN`` set, that
    database (its replies in a table of the service's own, so services may share one)."""
    if os.environ.get(DSN_ENV):
        return PostgresStore(schema=postgres_schema(schema), table=f"{name}_replies")
    store = SqliteStore(f"{name}.sqlite3")
    store.add_schema(schema)
    return store


def postgres_schema(sqlite_schema: str) -> str:
    """The sample's SQLite table definitions in PostgreSQL's words."""
    schema = re.sub(
        r"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY", sqlite_schema, flags=re.I
    )
    schema = re.sub(r"\bINTEGER\b", "BIGINT", schema)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", schema)


class _Rows:
    """What ``execute`` returns: the rows (for a SELECT) and how many rows it changed."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


_PLACEHOLDER = re.compile(r"\?")


class PostgresConnection:
    """``execute(sql, params)`` of sqlite3 over an asyncpg connection, for code running in a
    worker thread (each statement runs on the event loop, in the open transaction)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> _Rows:
        numbered = iter(range(1, 1 + len(parameters)))
        statement = _PLACEHOLDER.sub(lambda _m: f"${next(numbered)}", sql)
        words = statement.upper().split()
        if words[:1] == ["SELECT"] or "RETURNING" in words:
            records = anyio.from_thread.run(self._conn.fetch, statement, *parameters)
            return _Rows([tuple(r) for r in records], -1)
        status: str = anyio.from_thread.run(self._conn.execute, statement, *parameters)
        # "INSERT 0 1", "UPDATE 3", "DELETE 0": the last word counts the rows
        last = status.rsplit(" ", 1)[-1]
        return _Rows([], int(last) if last.isdigit() else -1)


async def with_connection(store: Store, db: Any, fn: Callable[[Connection], T]) -> T:
    """`fn` with the transaction's connection as a sqlite3-like one (`db` is ``tx.db``)."""
    if isinstance(store, SqliteStore):
        return fn(db)
    return await anyio.to_thread.run_sync(fn, PostgresConnection(db))


async def in_transaction(store: Store, fn: Callable[[Connection], T]) -> T:
    """`fn` in a transaction of its own (the services' writes outside handlers)."""
    async with store.transaction() as tx:
        return await with_connection(store, tx.db, fn)


class Handlers:
    """Registers the sample's handlers (plain functions on a sqlite3-like connection) with
    a service, whichever store it has: as they are on SQLite, bridged on PostgreSQL."""

    def __init__(self, service: Service[Any]) -> None:
        self.service = service
        self._bridge = isinstance(service.store, PostgresStore)

    def handles(self, command: type[Any]) -> Callable[[Callable[..., T]], Callable[..., T]]:
        return self._register(self.service.handles, command)

    def on(self, event: type[Any]) -> Callable[[Callable[..., T]], Callable[..., T]]:
        return self._register(self.service.on, event)

    def _register(
        self, register: Callable[[type[Any]], Any], message: type[Any]
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(fn: Callable[..., T]) -> Callable[..., T]:
            register(message)(self._bridged(fn) if self._bridge else fn)
            return fn

        return decorate

    @staticmethod
    def _bridged(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
        async def bridged(message: Any, ctx: HandlerContext[Any]) -> T:
            sync_ctx = replace(ctx, db=PostgresConnection(ctx.db))
            return await anyio.to_thread.run_sync(fn, message, sync_ctx)

        bridged.__qualname__ = getattr(fn, "__qualname__", "handler")  # for logs and errors
        return bridged
