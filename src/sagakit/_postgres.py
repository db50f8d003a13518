"""PostgreSQL idempotency store: the stored reply and the handler's writes in one
PostgreSQL transaction, one pooled connection per record handled at a time (asyncpg)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, cast
from urllib.parse import urlsplit, urlunsplit

import anyio

from ._errors import DefinitionError, SagaError
from ._idempotency import StoredReply

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy
    from asyncpg.transaction import Transaction

DSN_ENV = "SAGAKIT_POSTGRES_DSN"
INSTALL_HINT = "pip install 'sagakit[postgres]'"

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    message_id   TEXT PRIMARY KEY,
    message_type TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    stored_at    TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class PostgresStore:
    """Replies in a PostgreSQL table, committed in one transaction with the handler's own
    writes through ``ctx.db`` (an asyncpg connection: handlers are ``async def``)::

        wallet = Service("wallet", PostgresStore(schema='''
            CREATE TABLE IF NOT EXISTS balances (id TEXT PRIMARY KEY, cents BIGINT NOT NULL)
        '''))

        @wallet.handles(Credit)
        async def credit(cmd: Credit, ctx: HandlerContext[asyncpg.Connection]) -> Credited:
            await ctx.db.execute("UPDATE balances SET cents = cents + $1 WHERE id = $2", ...)
            return Credited()

    `dsn` defaults to the ``SAGAKIT_POSTGRES_DSN`` environment variable, read on first
    use. The connection pool (`min_size` to `max_size` connections) opens on the first
    `transaction` and belongs to the event loop running it: each loop that uses the store
    (several ``anyio.run`` calls in tests, say) gets its own, closed when that loop shuts
    down or by `close`. Opening it creates the replies table and runs `schema` (the
    service's own ``CREATE TABLE IF NOT EXISTS ...``), under an advisory lock so that
    processes starting together do not race. Records run their transactions
    concurrently, as many at once as the pool has connections.
    """

    #: Handlers must be coroutines: ``ctx.db`` is an asyncpg connection, to be awaited.
    requires_async_handlers: ClassVar[bool] = True

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        table: str = "sagakit_replies",
    ) -> None:
        if not _has_driver():
            raise DefinitionError(f"PostgresStore needs the asyncpg package: {INSTALL_HINT}")
        if not _TABLE.fullmatch(table):
            raise DefinitionError(
                f"PostgresStore table must be a plain SQL name (optionally schema.name), "
                f"got {table!r}"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise DefinitionError(
                f"PostgresStore needs 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size}, max_size={max_size}"
            )
        self._dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.table = table
        self._pools: dict[asyncio.AbstractEventLoop, _LoopPool] = {}

    @property
    def dsn(self) -> str | None:
        """The DSN given, else ``SAGAKIT_POSTGRES_DSN`` (None if neither)."""
        return self._dsn or os.environ.get(DSN_ENV) or None

    def __repr__(self) -> str:
        dsn = self.dsn
        where = redact(dsn) if dsn else f"${DSN_ENV}"
        return f"PostgresStore({where!r}, table={self.table!r})"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        pool = await self._pool()
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                yield _PostgresTransaction(conn, self.table)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _rollback(conn, tx)
                raise
            with anyio.CancelScope(shield=True):  # a commit under way must end either way
                await tx.commit()

    async def reply_count(self) -> int:
        async with self.transaction() as tx:
            count = await tx.db.fetchval(f"SELECT count(*) FROM {self.table}")
        return int(count)

    async def close(self) -> None:
        """Close this event loop's pool (the next transaction opens a new one)."""
        owner = self._pools.pop(asyncio.get_running_loop(), None)
        if owner is not None and owner.keeper is not None:
            with anyio.CancelScope(shield=True):
                await owner.keeper.aclose()

    async def _pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        owner = self._pools.get(loop)
        if owner is None:
            for old in [old for old in self._pools if old.is_closed()]:
                del self._pools[old]  # their pools closed with them
            owner = self._pools[loop] = _LoopPool()
        if owner.pool is None:
            async with owner.lock:  # the first records arrive together: one pool, one schema
                if owner.pool is None:
                    pool = await self._open()
                    owner.keeper = _close_with_loop(pool)
                    await owner.keeper.asend(None)
                    owner.pool = pool
        return owner.pool

    async def _open(self) -> asyncpg.Pool:
        import asyncpg

        dsn = self.dsn
        if dsn is None:
            raise SagaError(
                f"PostgresStore has no DSN: pass PostgresStore(dsn) or set {DSN_ENV} "
                "(e.g. postgresql://user:password@host:5432/dbname)"
            )
        try:
            pool = await asyncpg.create_pool(dsn, min_size=self.min_size, max_size=self.max_size)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SagaError(f"PostgresStore cannot connect to {redact(dsn)}: {exc}") from exc
        try:
            async with pool.acquire() as conn, conn.transaction():
                # CREATE TABLE IF NOT EXISTS races with itself across processes
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(self.table))
                await conn.execute(_SCHEMA.format(table=self.table))
                if self.schema:
                    await conn.execute(self.schema)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, asyncpg.PostgresError):
                raise SagaError(
                    f"PostgresStore({self.table}): the schema failed on {redact(dsn)}: {exc}"
                ) from exc
            raise
        return pool


@dataclass
class _LoopPool:
    """The pool of one event loop, and what closes it."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    pool: asyncpg.Pool | None = None
    keeper: AsyncGenerator[None, None] | None = None


async def _close_with_loop(pool: asyncpg.Pool) -> AsyncGenerator[None, None]:
    """Closes `pool` when finalised: by `close`, or by its event loop's shutdown (asyncio
    closes the async generators still open when ``asyncio.run`` or ``anyio.run`` ends), so
    a pool never outlives its loop with connections open."""
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except Exception:
            pool.terminate()


async def _rollback(conn: PoolConnectionProxy, tx: Transaction) -> None:
    """Roll back; a connection that cannot is dropped, never handed out again."""
    try:
        with anyio.fail_after(10):
            await tx.rollback()
    except Exception:
        conn.terminate()


def _has_driver() -> bool:
    try:
        return importlib.util.find_spec("asyncpg") is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules["asyncpg"] = None
        return False


def _lock_key(table: str) -> int:
    return zlib.crc32(f"sagakit:{table}".encode())


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _PostgresTransaction:
    def __init__(self, conn: PoolConnectionProxy, table: str) -> None:
        self._conn = conn
        self._table = table

    @property
    def db(self) -> asyncpg.Connection:
        # a pool's proxy: isinstance(db, asyncpg.Connection) holds, and it refuses to work
        # once the transaction has ended
        return cast("asyncpg.Connection", self._conn)

    async def reply_for(self, message_id: str) -> StoredReply | None:
        row = await self._conn.fetchrow(
            f"SELECT message_type, payload FROM {self._table} WHERE message_id = $1", message_id
        )
        return None if row is None else StoredReply(row["message_type"], bytes(row["payload"]))

    async def save_reply(self, message_id: str, reply: StoredReply) -> None:
        # a second reply to the same id violates the primary key (waiting, if another
        # transaction holds the row, for that one to end): this transaction rolls back
        await self._conn.execute(
            f"INSERT INTO {self._table} (message_id, message_type, payload) VALUES ($1, $2, $3)",
            message_id,
            reply.message_type,
            reply.payload,
        )

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        savepoint = self._conn.transaction()  # nested in the record's: a SAVEPOINT
        await savepoint.start()
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                await savepoint.rollback()
            raise
        await savepoint.commit()
