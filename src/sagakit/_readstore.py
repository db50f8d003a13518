"""Where the read model lives: SQLite (embedded, the default) or PostgreSQL.

Both run the same SQL (placeholders written ``?``; PostgreSQL's ``$n`` are made from
them). A batch of records is projected in one transaction: the rows it changes and the
positions of its partitions commit together, so a crash leaves nothing half-written and
the projector goes on from what was committed.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson

from ._errors import SagaError
from ._evaluator import SagaInstance, SagaStatus
from ._journal import Replayer, encode_transition
from ._readmodel import (
    Changes,
    LetterRow,
    Position,
    SagaKey,
    SagaRow,
    TimelineRow,
    decode_journal,
    fold_journal,
    fold_letters,
    is_journal,
    saga_keys,
    saga_row,
    timeline_row,
)
from .transport._base import Record

if TYPE_CHECKING:
    import asyncpg

READ_MODEL_ENV = "SAGAKIT_READ_MODEL"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS sagakit_rm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS sagakit_rm_positions (
        topic TEXT NOT NULL, part INTEGER NOT NULL, next_offset BIGINT NOT NULL,
        epoch BIGINT NOT NULL, PRIMARY KEY (topic, part))""",
    """CREATE TABLE IF NOT EXISTS sagakit_rm_sagas (
        saga_type TEXT NOT NULL, saga_id TEXT NOT NULL, version INTEGER NOT NULL,
        status TEXT NOT NULL, step TEXT NOT NULL, started_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL, ended_ms BIGINT, failure TEXT, parked_reason TEXT,
        seq INTEGER NOT NULL, trace_id TEXT, waits TEXT NOT NULL, last TEXT NOT NULL,
        PRIMARY KEY (saga_type, saga_id))""",
    "CREATE INDEX IF NOT EXISTS sagakit_rm_sagas_updated ON sagakit_rm_sagas (updated_ms)",
    "CREATE INDEX IF NOT EXISTS sagakit_rm_sagas_status ON sagakit_rm_sagas (status, updated_ms)",
    "CREATE INDEX IF NOT EXISTS sagakit_rm_sagas_id ON sagakit_rm_sagas (saga_id)",
    "CREATE INDEX IF NOT EXISTS sagakit_rm_sagas_ended ON sagakit_rm_sagas (ended_ms)",
    """CREATE TABLE IF NOT EXISTS sagakit_rm_timeline (
        saga_type TEXT NOT NULL, saga_id TEXT NOT NULL, started_ms BIGINT NOT NULL,
        seq INTEGER NOT NULL, at_ms BIGINT NOT NULL, event TEXT NOT NULL, step TEXT,
        status TEXT NOT NULL, cause_type TEXT NOT NULL, actor TEXT, note TEXT,
        data TEXT NOT NULL, PRIMARY KEY (saga_type, saga_id, started_ms, seq))""",
    """CREATE TABLE IF NOT EXISTS sagakit_rm_fields (
        saga_type TEXT NOT NULL, saga_id TEXT NOT NULL, name TEXT NOT NULL,
        value TEXT NOT NULL, PRIMARY KEY (saga_type, saga_id, name))""",
    "CREATE INDEX IF NOT EXISTS sagakit_rm_fields_value ON sagakit_rm_fields "
    "(saga_type, name, value)",
    """CREATE TABLE IF NOT EXISTS sagakit_rm_letters (
        topic TEXT NOT NULL, part INTEGER NOT NULL, record_offset BIGINT NOT NULL,
        at_ms BIGINT NOT NULL, message_id TEXT NOT NULL, message_type TEXT NOT NULL,
        saga_id TEXT NOT NULL, error_type TEXT NOT NULL, error_message TEXT NOT NULL,
        original_topic TEXT NOT NULL, original_partition INTEGER, original_offset BIGINT,
        consumer TEXT, truncated TEXT NOT NULL, replayed_ms BIGINT, replayed_by TEXT,
        PRIMARY KEY (topic, part, record_offset))""",
    """CREATE TABLE IF NOT EXISTS sagakit_rm_audit (
        at_ms BIGINT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, note TEXT NOT NULL,
        outcome TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sagakit_rm_audit_at ON sagakit_rm_audit (at_ms)",
]

_SAGA_COLUMNS = (
    "saga_type, saga_id, version, status, step, started_ms, updated_ms, ended_ms, failure, "
    "parked_reason, seq, trace_id, waits, last"
)
_TIMELINE_COLUMNS = (
    "saga_type, saga_id, started_ms, seq, at_ms, event, step, status, cause_type, actor, note, data"
)
_LETTER_COLUMNS = (
    "topic, part, record_offset, at_ms, message_id, message_type, saga_id, error_type, "
    "error_message, original_topic, original_partition, original_offset, consumer, truncated"
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _saga_values(r: SagaRow) -> tuple[Any, ...]:
    return (
        r.saga_type,
        r.saga_id,
        r.version,
        r.status.value,
        r.step,
        r.started_ms,
        r.updated_ms,
        r.ended_ms,
        r.failure,
        r.parked_reason,
        r.seq,
        r.trace_id,
        orjson.dumps(list(r.waits)).decode(),
        r.last.decode(),
    )


def _saga(row: Sequence[Any]) -> SagaRow:
    return SagaRow(
        saga_type=row[0],
        saga_id=row[1],
        version=int(row[2]),
        status=SagaStatus(row[3]),
        step=row[4],
        started_ms=int(row[5]),
        updated_ms=int(row[6]),
        ended_ms=None if row[7] is None else int(row[7]),
        failure=row[8],
        parked_reason=row[9],
        seq=int(row[10]),
        trace_id=row[11],
        waits=tuple(orjson.loads(row[12])),
        last=row[13].encode(),
    )


def _timeline(row: Sequence[Any]) -> TimelineRow:
    return TimelineRow(
        saga_type=row[0],
        saga_id=row[1],
        started_ms=int(row[2]),
        seq=int(row[3]),
        at_ms=int(row[4]),
        event=row[5],
        step=row[6],
        status=SagaStatus(row[7]),
        cause_type=row[8],
        actor=row[9],
        note=row[10],
        data=row[11].encode(),
    )


def _letter(row: Sequence[Any]) -> LetterRow:
    return LetterRow(
        topic=row[0],
        partition=int(row[1]),
        offset=int(row[2]),
        at_ms=int(row[3]),
        message_id=row[4],
        message_type=row[5],
        saga_id=row[6],
        error_type=row[7],
        error_message=row[8],
        original_topic=row[9],
        original_partition=row[10],
        original_offset=row[11],
        consumer=row[12],
        truncated=tuple(t for t in row[13].split(",") if t),
        replayed_ms=None if row[14] is None else int(row[14]),
        replayed_by=row[15],
    )


@dataclass(frozen=True)
class SagaQuery:
    """Which sagas: every condition given must hold; newest (last changed) first."""

    saga_type: str | None = None
    version: int | None = None
    status: SagaStatus | None = None
    #: started at or after / before (ms since the epoch)
    started_from_ms: int | None = None
    started_before_ms: int | None = None
    id_prefix: str | None = None
    #: searchable state fields (`Saga(searchable=...)`): name, value
    fields: tuple[tuple[str, str], ...] = ()
    limit: int = 50
    offset: int = 0

    def where(self) -> tuple[str, list[Any]]:
        conditions: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("saga_type = ?", self.saga_type),
            ("version = ?", self.version),
            ("status = ?", self.status.value if self.status is not None else None),
            ("started_ms >= ?", self.started_from_ms),
            ("started_ms < ?", self.started_before_ms),
        ):
            if value is not None:
                conditions.append(column)
                args.append(value)
        if self.id_prefix:
            conditions.append("substr(saga_id, 1, ?) = ?")
            args += [len(self.id_prefix), self.id_prefix]
        for name, value in self.fields:
            conditions.append(
                "EXISTS (SELECT 1 FROM sagakit_rm_fields f WHERE f.saga_type = "
                "sagakit_rm_sagas.saga_type AND f.saga_id = sagakit_rm_sagas.saga_id "
                "AND f.name = ? AND f.value = ?)"
            )
            args += [name, value]
        return (" WHERE " + " AND ".join(conditions)) if conditions else "", args


@dataclass(frozen=True)
class AuditEntry:
    """One operator action through the console, allowed or refused."""

    at_ms: int
    actor: str
    role: str
    action: str
    target: str
    note: str
    outcome: str


@dataclass
class Projected:
    """What a batch did to the read model (for logs and metrics)."""

    sagas: int = 0
    transitions: int = 0
    letters: int = 0
    fenced: int = 0
    anomalies: list[str] = field(default_factory=list)


class _Db(Protocol):
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class ReadStore:
    """The read model's tables, on a database of one of the dialects below."""

    #: appended to the SELECTs that read what a batch will change (PostgreSQL locks rows)
    _for_update = ""
    url: str

    # -- the dialect ---------------------------------------------------------------------
    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def transaction(self) -> Any:  # an async context manager of a _Db
        raise NotImplementedError

    # -- set up --------------------------------------------------------------------------
    async def _create(self, db: _Db) -> None:
        for statement in _SCHEMA:
            await db.execute(statement)
        await db.execute(
            "INSERT INTO sagakit_rm_meta (key, value) VALUES ('id', ?) ON CONFLICT (key) "
            "DO NOTHING",
            [uuid.uuid4().hex[:16]],
        )

    async def identity(self) -> str:
        """This read model's id: its projectors' consumer group is named after it, so
        projectors sharing one database share the partitions."""
        async with self.transaction() as db:
            rows = await db.fetch("SELECT value FROM sagakit_rm_meta WHERE key = 'id'")
        return str(rows[0][0])

    # -- projecting ----------------------------------------------------------------------
    async def positions(self) -> dict[tuple[str, int], Position]:
        async with self.transaction() as db:
            rows = await db.fetch(
                "SELECT topic, part, next_offset, epoch FROM sagakit_rm_positions"
            )
        return {(r[0], int(r[1])): Position(int(r[2]), int(r[3])) for r in rows}

    async def project(
        self, records: Sequence[Record], searchable: Mapping[str, Sequence[str]] | None = None
    ) -> Projected:
        """Apply a batch of journal and DLQ records, with their partitions' positions, in
        one transaction."""
        by_partition: dict[tuple[str, int], list[Record]] = defaultdict(list)
        for record in records:
            by_partition[(record.topic, record.partition)].append(record)
        journals = {  # decoded once, before the transaction
            tp: [decode_journal(r) for r in part]
            for tp, part in by_partition.items()
            if is_journal(tp[0])
        }
        keys = saga_keys(r for part in journals.values() for r in part)
        changes = Changes()
        async with self.transaction() as db:
            positions = await self._positions(db, list(by_partition))
            current = await self._current(db, keys)
            for tp, part in by_partition.items():
                before = positions.get(tp, Position())
                if tp in journals:
                    after = fold_journal(journals[tp], before, current, changes, searchable)
                else:
                    after = fold_letters(part, before, changes)
                changes.positions[tp] = after
            await self._write(db, changes)
        return Projected(
            sagas=len(changes.sagas),
            transitions=len(changes.timeline),
            letters=len(changes.letters),
            fenced=changes.fenced,
            anomalies=changes.anomalies,
        )

    async def seed(self, topic: str, partition: int, replayer: Replayer, saga_type: str) -> int:
        """Write what a partition's latest snapshot and the journal after it hold (its
        oldest records are gone) as the partition's rows and position; how many sagas."""
        from ._inspect import _snapshot_entry

        at = replayer.snapshot
        note = (
            f"the journal's records before snapshot {at.snapshot_id} (offset {at.offset}) "
            "were deleted by its retention before the read model read them; this is the "
            "saga as that snapshot has it"
        )
        changes = Changes()
        known: list[Any] = [*replayer.instances.values(), *replayer.ended.values()]
        for saga in known:
            kind = saga.saga_type if isinstance(saga, SagaInstance) else saga_type
            t = _snapshot_entry(saga, kind, note)
            data = encode_transition(t)
            changes.sagas[(kind, t.saga_id)] = saga_row(t, data, None)
            changes.timeline.append(timeline_row(t, data))
        changes.positions[(topic, partition)] = Position(replayer.next_offset, replayer.epoch)
        async with self.transaction() as db:
            await self._write(db, changes)
        return len(known)

    async def _positions(
        self, db: _Db, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Position]:
        found: dict[tuple[str, int], Position] = {}
        for topic, part in partitions:
            rows = await db.fetch(
                "SELECT next_offset, epoch FROM sagakit_rm_positions WHERE topic = ? AND part = ?"
                + self._for_update,
                [topic, part],
            )
            if rows:
                found[(topic, part)] = Position(int(rows[0][0]), int(rows[0][1]))
        return found

    async def _current(self, db: _Db, keys: set[SagaKey]) -> dict[SagaKey, SagaRow]:
        by_type: dict[str, list[str]] = defaultdict(list)
        for saga_type, saga_id in keys:
            by_type[saga_type].append(saga_id)
        found: dict[SagaKey, SagaRow] = {}
        for saga_type, ids in by_type.items():
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                rows = await db.fetch(
                    f"SELECT {_SAGA_COLUMNS} FROM sagakit_rm_sagas WHERE saga_type = ? AND "
                    f"saga_id IN ({_marks(len(chunk))})" + self._for_update,
                    [saga_type, *chunk],
                )
                found.update((r.key, r) for r in map(_saga, rows))
        return found

    async def _write(self, db: _Db, changes: Changes) -> None:
        if changes.sagas:
            updates = ", ".join(f"{c} = excluded.{c}" for c in _SAGA_COLUMNS.split(", ")[2:])
            await db.execute_many(
                f"INSERT INTO sagakit_rm_sagas ({_SAGA_COLUMNS}) VALUES ({_marks(14)}) "
                f"ON CONFLICT (saga_type, saga_id) DO UPDATE SET {updates}",
                [_saga_values(r) for r in changes.sagas.values()],
            )
        if changes.timeline:
            await db.execute_many(
                f"INSERT INTO sagakit_rm_timeline ({_TIMELINE_COLUMNS}) VALUES ({_marks(12)}) "
                "ON CONFLICT (saga_type, saga_id, started_ms, seq) DO NOTHING",
                [
                    (
                        t.saga_type,
                        t.saga_id,
                        t.started_ms,
                        t.seq,
                        t.at_ms,
                        t.event,
                        t.step,
                        t.status.value,
                        t.cause_type,
                        t.actor,
                        t.note,
                        t.data.decode(),
                    )
                    for t in changes.timeline
                ],
            )
        if changes.fields:
            await db.execute_many(
                "DELETE FROM sagakit_rm_fields WHERE saga_type = ? AND saga_id = ?",
                list(changes.fields),
            )
            await db.execute_many(
                "INSERT INTO sagakit_rm_fields (saga_type, saga_id, name, value) VALUES "
                "(?, ?, ?, ?)",
                [(*key, n, v) for key, values in changes.fields.items() for n, v in values],
            )
        if changes.letters:
            await db.execute_many(
                f"INSERT INTO sagakit_rm_letters ({_LETTER_COLUMNS}) VALUES ({_marks(14)}) "
                "ON CONFLICT (topic, part, record_offset) DO NOTHING",
                [
                    (
                        d.topic,
                        d.partition,
                        d.offset,
                        d.at_ms,
                        d.message_id,
                        d.message_type,
                        d.saga_id,
                        d.error_type,
                        d.error_message,
                        d.original_topic,
                        d.original_partition,
                        d.original_offset,
                        d.consumer,
                        ",".join(d.truncated),
                    )
                    for d in changes.letters
                ],
            )
        if changes.positions:
            await db.execute_many(
                "INSERT INTO sagakit_rm_positions (topic, part, next_offset, epoch) VALUES "
                "(?, ?, ?, ?) ON CONFLICT (topic, part) DO UPDATE SET next_offset = "
                "excluded.next_offset, epoch = excluded.epoch",
                [(t, p, pos.next_offset, pos.epoch) for (t, p), pos in changes.positions.items()],
            )

    # -- queries -------------------------------------------------------------------------
    async def sagas(self, query: SagaQuery) -> tuple[list[SagaRow], int]:
        """The page of sagas `query` asks for, and how many match in all."""
        where, args = query.where()
        async with self.transaction() as db:
            total = await db.fetch(f"SELECT COUNT(*) FROM sagakit_rm_sagas{where}", args)
            rows = await db.fetch(
                f"SELECT {_SAGA_COLUMNS} FROM sagakit_rm_sagas{where} "
                "ORDER BY updated_ms DESC, saga_id LIMIT ? OFFSET ?",
                [*args, query.limit, query.offset],
            )
        return [_saga(r) for r in rows], int(total[0][0])

    async def find(self, saga_id: str, saga_type: str | None = None) -> list[SagaRow]:
        """The sagas with this id (one per saga type that has it)."""
        sql = f"SELECT {_SAGA_COLUMNS} FROM sagakit_rm_sagas WHERE saga_id = ?"
        args: list[Any] = [saga_id]
        if saga_type is not None:
            sql += " AND saga_type = ?"
            args.append(saga_type)
        async with self.transaction() as db:
            return [_saga(r) for r in await db.fetch(sql + " ORDER BY saga_type", args)]

    async def timeline(self, row: SagaRow) -> list[TimelineRow]:
        """The transitions of the saga's current run, in order."""
        async with self.transaction() as db:
            rows = await db.fetch(
                f"SELECT {_TIMELINE_COLUMNS} FROM sagakit_rm_timeline WHERE saga_type = ? "
                "AND saga_id = ? AND started_ms = ? ORDER BY seq",
                [row.saga_type, row.saga_id, row.started_ms],
            )
        return [_timeline(r) for r in rows]

    async def counts(self) -> dict[str, dict[SagaStatus, int]]:
        """Sagas by type and status."""
        async with self.transaction() as db:
            rows = await db.fetch(
                "SELECT saga_type, status, COUNT(*) FROM sagakit_rm_sagas "
                "GROUP BY saga_type, status"
            )
        found: dict[str, dict[SagaStatus, int]] = defaultdict(dict)
        for saga_type, status, n in rows:
            found[saga_type][SagaStatus(status)] = int(n)
        return dict(found)

    async def letters(
        self, topic: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[LetterRow], int]:
        where, args = (" WHERE topic = ?", [topic]) if topic else ("", [])
        async with self.transaction() as db:
            total = await db.fetch(f"SELECT COUNT(*) FROM sagakit_rm_letters{where}", args)
            rows = await db.fetch(
                f"SELECT {_LETTER_COLUMNS}, replayed_ms, replayed_by "
                f"FROM sagakit_rm_letters{where} "
                "ORDER BY at_ms DESC, topic, part, record_offset DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
        return [_letter(r) for r in rows], int(total[0][0])

    async def durations(self, saga_type: str, last: int = 1000) -> list[int]:
        """How long the latest `last` sagas of a type that completed or compensated took
        (ms), shortest first: RESOLVED ones waited for a person and are left out."""
        async with self.transaction() as db:
            rows = await db.fetch(
                "SELECT ended_ms - started_ms FROM sagakit_rm_sagas WHERE saga_type = ? AND "
                "status IN ('COMPLETED', 'COMPENSATED') ORDER BY ended_ms DESC LIMIT ?",
                [saga_type, last],
            )
        return sorted(int(r[0]) for r in rows)

    async def running_since(self, saga_type: str, started_before_ms: int) -> int:
        """Sagas of a type, neither ended nor parked, that started before the time."""
        async with self.transaction() as db:
            rows = await db.fetch(
                "SELECT COUNT(*) FROM sagakit_rm_sagas WHERE saga_type = ? AND ended_ms IS NULL "
                "AND status <> 'FAILED_NEEDS_ATTENTION' AND started_ms < ?",
                [saga_type, started_before_ms],
            )
        return int(rows[0][0])

    async def letters_since(self, at_ms: int) -> int:
        async with self.transaction() as db:
            rows = await db.fetch(
                "SELECT COUNT(*) FROM sagakit_rm_letters WHERE at_ms >= ?", [at_ms]
            )
        return int(rows[0][0])

    async def letter_counts(self) -> dict[str, int]:
        async with self.transaction() as db:
            rows = await db.fetch("SELECT topic, COUNT(*) FROM sagakit_rm_letters GROUP BY topic")
        return {r[0]: int(r[1]) for r in rows}

    async def mark_replayed(self, letters: Sequence[LetterRow], actor: str, at_ms: int) -> None:
        async with self.transaction() as db:
            await db.execute_many(
                "UPDATE sagakit_rm_letters SET replayed_ms = ?, replayed_by = ? WHERE topic = ? "
                "AND part = ? AND record_offset = ?",
                [(at_ms, actor, d.topic, d.partition, d.offset) for d in letters],
            )

    async def audit(self, entry: AuditEntry) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO sagakit_rm_audit (at_ms, actor, role, action, target, note, "
                "outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    entry.at_ms,
                    entry.actor,
                    entry.role,
                    entry.action,
                    entry.target,
                    entry.note,
                    entry.outcome,
                ],
            )

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        async with self.transaction() as db:
            rows = await db.fetch(
                "SELECT at_ms, actor, role, action, target, note, outcome FROM sagakit_rm_audit "
                "ORDER BY at_ms DESC LIMIT ?",
                [limit],
            )
        return [AuditEntry(int(r[0]), *r[1:]) for r in rows]

    async def prune(self, ended_before_ms: int) -> int:
        """Forget sagas that ended before `ended_before_ms` (and their timelines, fields
        and dead letters older than that); how many sagas were forgotten."""
        async with self.transaction() as db:
            old = "ended_ms IS NOT NULL AND ended_ms < ?"
            n = await db.fetch(
                f"SELECT COUNT(*) FROM sagakit_rm_sagas WHERE {old}", [ended_before_ms]
            )
            for table in ("sagakit_rm_timeline", "sagakit_rm_fields"):
                await db.execute(
                    f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM sagakit_rm_sagas s WHERE "
                    f"s.saga_type = {table}.saga_type AND s.saga_id = {table}.saga_id AND "
                    f"s.{old})",
                    [ended_before_ms],
                )
            await db.execute(f"DELETE FROM sagakit_rm_sagas WHERE {old}", [ended_before_ms])
            await db.execute("DELETE FROM sagakit_rm_letters WHERE at_ms < ?", [ended_before_ms])
            await db.execute("DELETE FROM sagakit_rm_audit WHERE at_ms < ?", [ended_before_ms])
        return int(n[0][0])


# -- SQLite ----------------------------------------------------------------------------------
class _SqliteDb:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await anyio.to_thread.run_sync(lambda: self.conn.execute(sql, args).fetchall())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await anyio.to_thread.run_sync(lambda: self.conn.execute(sql, args))

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await anyio.to_thread.run_sync(lambda: self.conn.executemany(sql, rows))


class SqliteReadStore(ReadStore):
    """The read model in one SQLite file (WAL: the console reads while the projector
    writes). One connection, one transaction at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            return conn

        try:
            self._conn = await anyio.to_thread.run_sync(connect)
        except sqlite3.Error as exc:
            raise SagaError(f"cannot open the read model {self.path}: {exc}") from exc
        async with self.transaction() as db:
            await self._create(db)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Db]:
        if self._conn is None:
            await self.open()
        conn = self._conn
        assert conn is not None
        async with self._lock:
            await anyio.to_thread.run_sync(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteDb(conn)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(lambda: conn.execute("ROLLBACK"))
                raise
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: conn.execute("COMMIT"))


# -- PostgreSQL ------------------------------------------------------------------------------
def _dollars(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (our SQL has no ``?`` in text)."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


class _PostgresDb:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return list(await self.conn.fetch(_dollars(sql), *args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self.conn.execute(_dollars(sql), *args)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.conn.executemany(_dollars(sql), rows)


class PostgresReadStore(ReadStore):
    """The read model in PostgreSQL (asyncpg); projectors on several hosts may share it."""

    _for_update = " FOR UPDATE"

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self.url = dsn
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            import asyncpg
        except ImportError:
            raise SagaError(
                "a PostgreSQL read model needs asyncpg: pip install 'sagakit[postgres]'"
            ) from None
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.max_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise SagaError(f"cannot connect to the read model's PostgreSQL: {exc}") from exc
        async with self._pool.acquire() as conn, conn.transaction():
            # processes starting together: one creates the tables
            await conn.execute("SELECT pg_advisory_xact_lock(7355608)")
            await self._create(_PostgresDb(conn))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Db]:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PostgresDb(conn)


def open_read_model(url: str) -> ReadStore:
    """A read store for `url`: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` (or
    a plain path), or ``postgresql://user:password@host/db``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresReadStore(url)
    if url.startswith("sqlite:///"):
        return SqliteReadStore(url[len("sqlite:///") :])
    if "://" in url:
        raise SagaError(
            f"read model {url!r}: give sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"
        )
    return SqliteReadStore(url)


def now_ms() -> int:
    return round(time.time() * 1000)
