"""Reading a running system for people: saga journals and dead-letter topics.

Nothing here writes to a journal or claims a partition: journals are replayed the way
an owner would (with the claim-epoch fencing) but read-only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, fields
from typing import TypeVar

import anyio
import orjson
from pydantic import BaseModel

from ._dlq import DeadLetter, NotReplayable, dlq_topic
from ._errors import DecodeError, TransportError
from ._evaluator import EndedSaga, SagaInstance, Transition
from ._journal import (
    CLAIM,
    TRANSITION,
    TRANSITIONS,
    Replayer,
    decode_instance,
    decode_transition,
)
from ._snapshots import replay_from_latest_snapshot
from .eventlog.kafka import KafkaEventLog
from .transport._base import Record, Transport, partition_for

JOURNAL_SUFFIX = ".journal"
CHECKPOINTS_SUFFIX = ".checkpoints"
#: The event of the first entry of a timeline whose older records were deleted: the saga
#: as the latest snapshot has it.
AS_OF_SNAPSHOT = "as of snapshot"
#: Topics a sagakit app consumes, by suffix: what `dlq replay` may produce to.
CONSUMED_SUFFIXES = (".inbox", ".commands", ".events")


@dataclass
class JournalView:
    """Every saga of one journal topic, as its owner would restore it."""

    topic: str
    instances: dict[str, SagaInstance] = field(default_factory=dict)
    #: sagas that ended and whose records are gone: only what the latest snapshot keeps
    ended: dict[str, EndedSaga] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    fenced: int = 0
    records: int = 0
    foreign: int = 0
    #: partitions whose oldest records were deleted (by retention): the first offset kept
    trimmed: dict[int, int] = field(default_factory=dict)


async def journal_topics(transport: Transport, namespace: str = "") -> dict[str, int]:
    """Journal topics (``<namespace><saga>.journal``) with their partition counts."""
    return {
        name: n
        for name, n in (await transport.existing_topics()).items()
        if name.startswith(namespace) and name.endswith(JOURNAL_SUFFIX)
    }


def saga_type_of(journal_topic: str, namespace: str = "") -> str:
    return journal_topic[len(namespace) : -len(JOURNAL_SUFFIX)]


def checkpoints_topic_of(journal_topic: str) -> str:
    return journal_topic[: -len(JOURNAL_SUFFIX)] + CHECKPOINTS_SUFFIX


def _decode(data: bytes) -> Transition:
    return decode_transition(data, None)


def _decode_instance(data: bytes) -> SagaInstance:
    return decode_instance(data, None)


async def _as_of_snapshot(transport: Transport, topic: str, partition: int) -> Replayer | None:
    """The partition as its latest valid snapshot (`.snapshot`) and the journal after it
    have it; None without one."""
    checkpoints = checkpoints_topic_of(topic)
    if checkpoints not in await transport.existing_topics():
        return None
    _, replayer = await replay_from_latest_snapshot(
        KafkaEventLog(transport, topic),
        KafkaEventLog(transport, checkpoints),
        partition,
        _decode,
        _decode_instance,
    )
    return replayer if replayer is not None and replayer.snapshot is not None else None


#: Partitions read at once (each read is a consumer of its own: its start-up dominates).
READ_CONCURRENCY = 8
T = TypeVar("T")


async def each_partition(partitions: int, read: Callable[[int], Awaitable[T]]) -> list[T]:
    """`read(p)` for every partition, `READ_CONCURRENCY` at a time, results in partition
    order; the first error is raised as itself (the other reads are cancelled)."""
    results: dict[int, T] = {}
    errors: list[Exception] = []
    limiter = anyio.CapacityLimiter(READ_CONCURRENCY)

    async def one(p: int, scope: anyio.CancelScope) -> None:
        try:
            async with limiter:
                results[p] = await read(p)
        except Exception as exc:
            errors.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for p in range(partitions):
            tg.start_soon(one, p, tg.cancel_scope)
    if errors:
        raise errors[0]
    return [results[p] for p in range(partitions)]


@dataclass
class _PartitionView:
    replayer: Replayer
    first: int | None
    snapshot: Replayer | None


async def read_journal(transport: Transport, topic: str, partitions: int) -> JournalView:
    """Every saga the journal still holds; where retention deleted a partition's oldest
    records, the live sagas and the ended ids of its latest snapshot fill the gap."""
    log = KafkaEventLog(transport, topic)

    async def read_partition(p: int) -> _PartitionView:
        replayer = Replayer(_decode)
        first: int | None = None
        async with aclosing(log.read(p)) as batches:
            async for batch in batches:
                if first is None and batch:
                    first = batch[0].offset
                replayer.feed(batch)
        # records before `first` were deleted: the snapshot fills the gap
        snap = await _as_of_snapshot(transport, topic, p) if first else None
        return _PartitionView(replayer, first, snap)

    view = JournalView(topic)
    for p, part in enumerate(await each_partition(partitions, read_partition)):
        replayer, anomalies = part.replayer, part.replayer.anomalies
        if part.first:
            view.trimmed[p] = part.first
            snap = part.snapshot
            if snap is not None:
                replayer.instances.update(snap.instances)  # whole, where the gap cut them
                view.ended.update(
                    (i, e) for i, e in snap.ended.items() if i not in replayer.instances
                )
                anomalies = snap.anomalies
        view.instances.update(replayer.instances)
        view.anomalies.extend(f"{topic}[{p}] {a}" for a in anomalies)
        view.fenced += replayer.fenced
        view.records += replayer.applied
        view.foreign += replayer.foreign
    return view


class Forgotten(BaseModel):
    """The state of an ended saga whose records are gone: a snapshot keeps none."""


def _snapshot_entry(known: SagaInstance | EndedSaga, saga_type: str, note: str) -> Transition:
    """A timeline's first entry when the saga's older records are gone: what the latest
    snapshot keeps of it (an ended saga's id and final status only)."""
    if isinstance(known, EndedSaga):
        return Transition(
            saga_id=known.saga_id,
            saga_type=saga_type,
            version=known.version,
            seq=0,
            cause="",
            cause_type="snapshot",
            at_ms=known.ended_ms,
            event=AS_OF_SNAPSHOT,
            step=None,
            status=known.status,
            state=Forgotten(),
            completed=(),
            compensated=(),
            in_flight=(),
            failure=None,
            correlation_id="",
            started_ms=0,
            note=note,
            start_digest=known.start_digest,
        )
    shared = {f.name for f in fields(Transition)} & {f.name for f in fields(SagaInstance)}
    return Transition(
        **{name: getattr(known, name) for name in shared},
        cause="",
        cause_type="snapshot",
        at_ms=known.updated_ms,
        event=AS_OF_SNAPSHOT,
        step=None,
        note=note,
    )


class HistoryGone(TransportError):
    """The saga's journal records were deleted by the journal's retention."""


async def saga_history(
    transport: Transport, topic: str, partitions: int, saga_id: str
) -> list[Transition]:
    """The journal records of one saga, in order (fenced and foreign records left out)."""
    partition = partition_for(saga_id.encode(), partitions)
    log = KafkaEventLog(transport, topic)
    history: list[Transition] = []
    epoch = 0
    first: int | None = None
    marker = f'"saga_id":{orjson.dumps(saga_id).decode()}'.encode()
    async with aclosing(log.read(partition)) as batches:
        async for batch in batches:
            if first is None and batch:
                first = batch[0].offset
            for stored in batch:
                entry = stored.entry
                if entry.kind == CLAIM:
                    epoch = max(epoch, entry.epoch)
                elif entry.kind in (TRANSITION, TRANSITIONS) and entry.epoch >= epoch:
                    lines = entry.data.split(b"\n") if entry.kind == TRANSITIONS else [entry.data]
                    history.extend(t for line in lines if marker in line for t in _decoded(line))
    history = [t for t in history if t.saga_id == saga_id]
    if not first or (history and history[0].seq == 1):
        return history  # nothing was deleted, or the saga's records are all kept
    # Retention deleted the partition's records before `first`, and this saga's with them.
    snap = await _as_of_snapshot(transport, topic, partition)
    known: SagaInstance | EndedSaga | None = None
    if snap is not None:
        known = snap.instances.get(saga_id) or snap.ended.get(saga_id)
    if history and not isinstance(known, SagaInstance):
        return history  # it ended: what is kept of it says more than the snapshot
    if known is None:
        raise HistoryGone(
            f"no saga {saga_id!r} in {topic}: partition {partition} keeps its records from "
            f"offset {first} on, the older ones were deleted by the journal's retention "
            "(History.journal_retention_s), and no snapshot remembers this saga; if it "
            "ran, it ended longer ago than the retention"
        )
    assert snap is not None and snap.snapshot is not None  # it knows the saga
    at = snap.snapshot
    note = (
        f"the records before offset {first} were deleted by the journal's retention; "
        f"this is the saga as snapshot {at.snapshot_id} (offset {at.offset}) has it"
    )
    if isinstance(known, EndedSaga):
        note += ": it ended, and only its id and final status are kept"
        return [_snapshot_entry(known, saga_type_of(topic), note)]
    later = [t for t in history if t.seq > known.seq]
    return [_snapshot_entry(known, known.saga_type, note), *later]


def _decoded(line: bytes) -> list[Transition]:
    try:
        return [decode_transition(line, None)]
    except DecodeError:
        return []  # not a journal record of ours: `sagas list` counts those


async def find_saga(
    transport: Transport, saga_id: str, namespace: str = "", saga_type: str | None = None
) -> tuple[str, list[Transition]]:
    """(saga type, history) of `saga_id`, searching every journal unless `saga_type` says."""
    topics = await journal_topics(transport, namespace)
    if saga_type is not None:
        wanted = f"{namespace}{saga_type}{JOURNAL_SUFFIX}"
        if wanted not in topics:
            raise TransportError(f"there is no journal topic {wanted!r}")
        topics = {wanted: topics[wanted]}
    for topic, partitions in sorted(topics.items()):
        history = await saga_history(transport, topic, partitions, saga_id)
        if history:
            return saga_type_of(topic, namespace), history
    raise TransportError(
        f"no saga {saga_id!r} in {', '.join(sorted(topics)) or 'any journal (none exist)'}"
    )


EVENTS_SUFFIX = ".events"


async def event_history(transport: Transport, saga_id: str, namespace: str = "") -> list[Record]:
    """Every domain event about `saga_id` (choreography), in time order.

    Events are keyed by saga id, so only that key's partition of each events topic is read.
    """
    found: list[Record] = []
    for topic, partitions in (await transport.existing_topics()).items():
        if not (topic.startswith(namespace) and topic.endswith(EVENTS_SUFFIX)):
            continue
        async with aclosing(
            transport.read(topic, partition_for(saga_id.encode(), partitions))
        ) as batches:
            async for batch in batches:
                found.extend(r for r in batch if header(r, "saga-id") == saga_id)
    found.sort(key=lambda r: (r.timestamp_ms, r.topic, r.offset))
    return found


def dlq_name(topic: str) -> str:
    return topic if topic.endswith(".dlq") else dlq_topic(topic)


async def read_topic(transport: Transport, topic: str) -> list[Record]:
    existing = await transport.existing_topics()
    if topic not in existing:
        raise TransportError(f"topic {topic!r} does not exist")

    async def read_partition(p: int) -> list[Record]:
        records: list[Record] = []
        async with aclosing(transport.read(topic, p)) as batches:
            async for batch in batches:
                records.extend(batch)
        return records

    return [r for part in await each_partition(existing[topic], read_partition) for r in part]


def header(record: Record, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return value.decode(errors="replace") if value is not None else ""
    return None


def consumed_topics(existing: dict[str, int], namespace: str = "") -> frozenset[str]:
    """The topics of `namespace` a sagakit app consumes (inboxes, commands, events)."""
    return frozenset(
        t for t in existing if t.startswith(namespace) and t.endswith(CONSUMED_SUFFIXES)
    )


@dataclass
class ReplayOutcome:
    replayed: list[DeadLetter] = field(default_factory=list)
    refused: list[tuple[DeadLetter, str]] = field(default_factory=list)


async def replay_dead_letters(
    transport: Transport,
    topic: str,
    message_ids: Sequence[str] | None,
    namespace: str = "",
    *,
    allowed: frozenset[str] | None = None,
) -> ReplayOutcome:
    """Produce dead letters of `topic` again to the topic they came from.

    Only to the topic the DLQ belongs to, only if it is one of `allowed` (default: the
    inboxes, commands and events topics of `namespace`; never a journal or another DLQ),
    and only records kept whole; the others are refused with the reason.
    """
    name = dlq_name(topic)
    if allowed is None:
        allowed = consumed_topics(await transport.existing_topics(), namespace)
    wanted = None if message_ids is None else set(message_ids)
    outcome = ReplayOutcome()
    records = []
    for record in await read_topic(transport, name):
        letter = DeadLetter.of(record)
        if wanted is not None and letter.message_id not in wanted:
            continue
        try:
            records.append(letter.replay_record(allowed))
            outcome.replayed.append(letter)
        except NotReplayable as exc:
            outcome.refused.append((letter, str(exc)))
    if records:
        await transport.send(records)
    return outcome
