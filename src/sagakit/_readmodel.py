"""The read model: a projection of the journal and dead-letter topics into a database.

One row per saga (type, version, status, where it is, started and ended, the last error,
why it is parked), its timeline (one row per journal transition) and the dead letters,
queryable without reading the broker; it keeps finished sagas after the journal's
retention has deleted their records (and forgets them after its own retention).

The fold here is pure: `fold_journal` applies journal records of one partition to the
rows the store holds, with the same claim-epoch fencing and the same rules as an owner's
replay (`_journal.Replayer`), so the rows equal a full replay's instances. The store
(`_readstore`) writes the rows and the partition's position (next offset and claim epoch)
in one transaction: a projector that crashes reads again from what was committed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._dlq import DLQ_SUFFIX, DeadLetter
from ._errors import DecodeError
from ._evaluator import SagaInstance, SagaStatus, Transition
from ._journal import CLAIM, SNAPSHOT, TRANSITION, TRANSITIONS, decode_transition
from .eventlog.kafka import _entry
from .transport._base import Record

JOURNAL_SUFFIX = ".journal"

SagaKey = tuple[str, str]  # (saga type, saga id)


@dataclass(frozen=True, slots=True)
class SagaRow:
    """One saga as the read model has it."""

    saga_type: str
    saga_id: str
    version: int
    status: SagaStatus
    #: where it is: the steps in flight (or waiting to retry), the waits it has reached
    step: str
    started_ms: int
    updated_ms: int
    #: when it ended (COMPLETED, COMPENSATED, RESOLVED); None while it is not over
    ended_ms: int | None
    failure: str | None
    #: why a person is needed (FAILED_NEEDS_ATTENTION only)
    parked_reason: str | None
    seq: int
    trace_id: str | None
    #: the waits (`WaitFor`) it is at now, by name
    waits: tuple[str, ...]
    #: the journal record of its last transition (JSON), the whole instance after it
    last: bytes

    @property
    def key(self) -> SagaKey:
        return (self.saga_type, self.saga_id)

    def transition(self) -> Transition:
        """The last transition, decoded without the definition (raw state and commands)."""
        return decode_transition(self.last, None)


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One transition of a saga: what a message did to it."""

    saga_type: str
    saga_id: str
    #: the saga's run (its start time): a saga id started again after its dedupe window
    #: is a new run with a timeline of its own
    started_ms: int
    seq: int
    at_ms: int
    event: str
    step: str | None
    status: SagaStatus
    cause_type: str
    actor: str | None
    note: str | None
    data: bytes

    def transition(self) -> Transition:
        return decode_transition(self.data, None)


@dataclass(frozen=True, slots=True)
class LetterRow:
    """One dead letter."""

    topic: str
    partition: int
    offset: int
    at_ms: int
    message_id: str
    message_type: str
    saga_id: str
    error_type: str
    error_message: str
    original_topic: str
    original_partition: int | None
    original_offset: int | None
    consumer: str | None
    truncated: tuple[str, ...]
    #: when and by whom it was replayed from the console (None: not yet)
    replayed_ms: int | None = None
    replayed_by: str | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where the projection of one partition stands: the next offset to read and, for a
    journal, the highest claim epoch seen (records of a lower epoch are fenced)."""

    next_offset: int = 0
    epoch: int = 0


@dataclass
class Changes:
    """What one batch changes, written in one transaction."""

    sagas: dict[SagaKey, SagaRow] = field(default_factory=dict)
    timeline: list[TimelineRow] = field(default_factory=list)
    #: the searchable state fields of each saga written (all of them: replaced)
    fields: dict[SagaKey, list[tuple[str, str]]] = field(default_factory=dict)
    letters: list[LetterRow] = field(default_factory=list)
    positions: dict[tuple[str, int], Position] = field(default_factory=dict)
    fenced: int = 0
    #: records of a journal that are not journal entries, or transitions out of order
    anomalies: list[str] = field(default_factory=list)


def iso(ms: int | float | None) -> str | None:
    """A time in ms since the epoch as ISO 8601 UTC, to the millisecond."""
    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


def row_json(r: SagaRow) -> dict[str, Any]:
    """A saga row as JSON (`sagas list --read-model --json`, the console's /api/sagas)."""
    return {
        "saga_id": r.saga_id,
        "saga_type": r.saga_type,
        "version": r.version,
        "status": r.status.value,
        "step": r.step or None,
        "failure": r.failure,
        "parked_reason": r.parked_reason,
        "started": iso(r.started_ms),
        "updated": iso(r.updated_ms),
        "ended": iso(r.ended_ms),
        "seq": r.seq,
        "trace_id": r.trace_id,
        "waits": list(r.waits),
    }


def is_journal(topic: str) -> bool:
    return topic.endswith(JOURNAL_SUFFIX)


def is_dlq(topic: str) -> bool:
    return topic.endswith(DLQ_SUFFIX)


def where(t: Transition | SagaInstance) -> str:
    """Where a saga is after `t`: the steps in flight (or waiting to retry), the waits."""
    steps = [p.step for p in t.in_flight] or [w.step for w in t.waiting]
    steps += [f"waiting: {name}" for name, _due in t.waits]
    return ", ".join(steps)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (``00-<trace id>-<span id>-<flags>``)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return None
    return parts[1]


def saga_row(t: Transition, data: bytes, previous: SagaRow | None) -> SagaRow:
    return SagaRow(
        saga_type=t.saga_type,
        saga_id=t.saga_id,
        version=t.version,
        status=t.status,
        step=where(t),
        started_ms=t.started_ms,
        updated_ms=t.at_ms,
        ended_ms=t.at_ms if t.status.terminal else None,
        failure=t.failure,
        parked_reason=(t.failure or t.note)
        if t.status is SagaStatus.FAILED_NEEDS_ATTENTION
        else None,
        seq=t.seq,
        trace_id=trace_id(t.trace)
        if t.trace is not None
        else (previous.trace_id if previous is not None else None),
        waits=tuple(name for name, _due in t.waits),
        last=data,
    )


def timeline_row(t: Transition, data: bytes) -> TimelineRow:
    return TimelineRow(
        saga_type=t.saga_type,
        saga_id=t.saga_id,
        started_ms=t.started_ms,
        seq=t.seq,
        at_ms=t.at_ms,
        event=t.event,
        step=t.step,
        status=t.status,
        cause_type=t.cause_type,
        actor=t.actor,
        note=t.note,
        data=data,
    )


def accepts(current: SagaRow | None, t: Transition) -> bool:
    """Whether an owner's replay applies `t` after `current` (`Replayer._apply`): a
    saga's next record, or a new run of an id whose saga ended."""
    if current is None:
        return True
    if current.status.terminal and t.seq == 1:
        return True  # started again after its id was forgotten
    return t.seq > current.seq


def searchable_fields(t: Transition, names: Sequence[str]) -> list[tuple[str, str]]:
    """The values of the state fields `names` (as text; JSON for what is not a string)."""
    state = t.state.model_dump(mode="json")
    found = []
    for name in names:
        if name in state and state[name] is not None:
            value = state[name]
            found.append((name, value if isinstance(value, str) else orjson.dumps(value).decode()))
    return found


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """A journal record, decoded once: its kind, claim epoch and transitions (each with
    its JSON line), or why a line is not one."""

    offset: int
    where: str
    kind: str
    epoch: int
    transitions: tuple[tuple[bytes, Transition], ...] = ()
    errors: tuple[str, ...] = ()


def decode_journal(record: Record) -> JournalRecord:
    """One journal record decoded; kind FOREIGN if it is not a journal entry."""
    entry = _entry(record)
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if entry.kind not in (TRANSITION, TRANSITIONS):
        return JournalRecord(record.offset, where, entry.kind, entry.epoch)
    # a NUL in a JSON string would reach the database's text columns (PostgreSQL refuses it)
    data = entry.data.replace(b"\\u0000", b"\\ufffd")
    lines = data.split(b"\n") if entry.kind == TRANSITIONS else [data]
    transitions, errors = [], []
    for line in lines:
        try:
            transitions.append((line, decode_transition(line, None)))
        except DecodeError as exc:
            errors.append(f"{where}: {exc}")
    return JournalRecord(
        record.offset, where, entry.kind, entry.epoch, tuple(transitions), tuple(errors)
    )


def fold_journal(
    records: Iterable[JournalRecord],
    position: Position,
    current: Mapping[SagaKey, SagaRow],
    changes: Changes,
    searchable: Mapping[str, Sequence[str]] | None = None,
) -> Position:
    """Apply journal records of one partition (in offset order, from `position`) to the
    rows `current` holds; what changes goes into `changes`. Returns the new position."""
    epoch, next_offset = position.epoch, position.next_offset
    searchable = searchable or {}
    for record in records:
        if record.offset < next_offset:
            continue  # already projected (read again after a crash or a rebalance)
        next_offset = record.offset + 1
        if record.kind == CLAIM:
            epoch = max(epoch, record.epoch)
            continue
        if record.kind == SNAPSHOT:
            continue
        if record.kind not in (TRANSITION, TRANSITIONS):
            changes.anomalies.append(f"{record.where}: {record.kind}")
            continue
        if record.epoch < epoch:
            changes.fenced += 1
            continue
        changes.anomalies.extend(record.errors)
        for line, t in record.transitions:
            key = (t.saga_type, t.saga_id)
            before = changes.sagas.get(key) or current.get(key)
            if not accepts(before, t):
                changes.anomalies.append(f"{record.where}: saga {t.saga_id} seq {t.seq} repeats")
                continue
            changes.sagas[key] = saga_row(t, line, before)
            changes.timeline.append(timeline_row(t, line))
            names = searchable.get(t.saga_type)
            if names:
                changes.fields[key] = searchable_fields(t, names)
    return Position(next_offset, epoch)


def _text(value: str) -> str:
    """Text from a record's headers as a database keeps it (PostgreSQL refuses NUL)."""
    return value.replace("\x00", "\ufffd")


def fold_letters(records: Iterable[Record], position: Position, changes: Changes) -> Position:
    """Dead letters of one DLQ partition, from `position` on (their headers are whatever
    the producer wrote: text is kept as text a database takes)."""
    next_offset = position.next_offset
    for record in records:
        if record.offset < next_offset:
            continue
        next_offset = record.offset + 1
        letter = DeadLetter.of(record)
        changes.letters.append(
            LetterRow(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                at_ms=record.timestamp_ms,
                message_id=_text(letter.message_id),
                message_type=_text(letter.message_type),
                saga_id=_text(letter.header("saga-id") or ""),
                error_type=_text(letter.error_type),
                error_message=_text(letter.error_message),
                original_topic=_text(letter.original_topic),
                original_partition=letter.original_partition,
                original_offset=letter.original_offset,
                consumer=_text(letter.consumer) if letter.consumer is not None else None,
                truncated=tuple(_text(t) for t in letter.truncated),
            )
        )
    return Position(next_offset, position.epoch)


def saga_keys(records: Iterable[JournalRecord]) -> set[SagaKey]:
    """The sagas decoded journal records name (to load their rows before folding)."""
    return {(t.saga_type, t.saga_id) for r in records for _line, t in r.transitions}
