"""Journal records on the wire, and restoring a partition with claim-epoch fencing.

Each journal partition is written by the owner of the inbox partition with the same
number. On assignment the new owner replays the partition, appends
``PartitionClaimed(epoch = highest epoch + 1)`` and from then on stamps its epoch on
every record. Replay ignores a record whose epoch is below the latest claim before
it: whatever a stalled former owner (a zombie) appends after losing the partition is
fenced, without broker transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict

from ._codec import _default
from ._definition import Saga
from ._errors import DecodeError
from ._evaluator import (
    EndedSaga,
    NextAttempt,
    PendingCommand,
    Phase,
    SagaInstance,
    SagaStatus,
    Transition,
    evolve,
)
from ._messages import Command, registered
from .eventlog._base import FOREIGN, JournalEntry, StoredEntry

_Item = TypeVar("_Item")

TRANSITION = "transition"
TRANSITIONS = "transitions"
CLAIM = "claim"
#: a journal record holding (part of) a snapshot (see `_snapshots`); replay skips it
SNAPSHOT = "snapshot"


def _encode_pending(p: PendingCommand) -> dict[str, Any]:
    return {
        "step": p.step,
        "phase": p.phase.value,
        "attempt": p.attempt,
        "message_id": p.message_id,
        "topic": p.topic,
        "type": p.command.message_type,
        "command": p.command.model_dump(mode="json"),
        "causation_id": p.causation_id,
        "deadline": p.deadline_ms,
        "budget_from": p.budget_from,
        "uncertain": p.uncertain,
    }


def _encode_next(n: NextAttempt) -> dict[str, Any]:
    return {
        "step": n.step,
        "phase": n.phase.value,
        "attempt": n.attempt,
        "budget_from": n.budget_from,
        "due": n.due_ms,
        "uncertain": n.uncertain,
    }


def _shared(x: Transition | SagaInstance) -> dict[str, Any]:
    """The fields a transition and an instance share, as JSON."""
    return {
        "saga_id": x.saga_id,
        "saga_type": x.saga_type,
        "version": x.version,
        "seq": x.seq,
        "status": x.status.value,
        "state": x.state.model_dump(mode="json"),
        "completed": x.completed,
        "compensated": x.compensated,
        "pending": [_encode_pending(p) for p in x.in_flight],
        "failure": x.failure,
        "correlation_id": x.correlation_id,
        "started": x.started_ms,
        "next": [_encode_next(n) for n in x.waiting],
        "deadline": x.deadline_ms,
        "trace": x.trace,
        **({"start_digest": x.start_digest} if x.start_digest is not None else {}),
        **({"shape": x.shape} if x.shape is not None else {}),
        **({"parent": list(x.parent)} if x.parent is not None else {}),
        **({"choices": dict(x.choices)} if x.choices else {}),
        **({"aborted": True} if x.aborted else {}),
        **({"waits": dict(x.waits)} if x.waits else {}),
        **({"signals": [list(s) for s in x.signals]} if x.signals else {}),
    }


def encode_transition(t: Transition) -> bytes:
    """One transition as JSON. ``pending`` and ``next`` are lists (a saga with parallel
    branches has several commands out); records written before they were lists hold one
    object or null, and are read the same."""
    return orjson.dumps(
        {
            **_shared(t),
            "cause": t.cause,
            "cause_type": t.cause_type,
            "at": t.at_ms,
            "event": t.event,
            "step": t.step,
            "note": t.note,
            **({"actor": t.actor} if t.actor is not None else {}),
        },
        default=_default,
    )


def encode_instance(i: SagaInstance) -> bytes:
    """One instance as JSON, for a snapshot: the transition's fields, with when it last
    changed and the ids of the messages it has taken (its dedupe set)."""
    return orjson.dumps(
        {**_shared(i), "updated": i.updated_ms, "applied": sorted(i.applied)}, default=_default
    )


def _parent(value: Any) -> tuple[str, str, str] | None:
    if not value:
        return None
    topic, saga_id, causation = value
    return str(topic), str(saga_id), str(causation)


def _listed(value: Any) -> list[Any]:
    """A list field that older records hold as one object or null."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class RawState(BaseModel):
    """A saga state read without its definition (for tools that only display it)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class RawCommand(Command):
    """A journaled command whose type is not registered in this process."""

    model_config = ConfigDict(extra="allow", frozen=True)
    journaled_type: str = ""


def _decode_pending(p: dict[str, Any], saga: Saga[Any] | None) -> PendingCommand:
    model = registered(p["type"])
    command: Command
    if model is not None and issubclass(model, Command):
        command = model.model_validate(p["command"])
    elif saga is None:
        command = RawCommand.model_validate({**p["command"], "journaled_type": p["type"]})
    else:
        raise DecodeError(f"journal names unknown command type {p['type']!r}")
    return PendingCommand(
        step=p["step"],
        phase=Phase(p["phase"]),
        attempt=p["attempt"],
        message_id=p["message_id"],
        topic=p["topic"],
        command=command,
        causation_id=p["causation_id"],
        deadline_ms=p.get("deadline"),
        budget_from=p.get("budget_from", 1),
        uncertain=p.get("uncertain", False),
    )


def _definition_of(
    d: dict[str, Any], saga: Saga[Any] | Mapping[int, Saga[Any]] | None
) -> Saga[Any] | None:
    if isinstance(saga, Mapping):
        name = next(iter(saga.values())).name if saga else d["saga_type"]
        if d["saga_type"] != name:
            raise DecodeError(f"journal record of saga type {d['saga_type']!r}, expected {name!r}")
        saga = saga.get(d["version"])
    if saga is not None and d["saga_type"] != saga.name:
        raise DecodeError(f"journal record of saga type {d['saga_type']!r}, expected {saga.name!r}")
    return saga


def _decode_shared(d: dict[str, Any], saga: Saga[Any] | None) -> dict[str, Any]:
    """The fields a transition and an instance share, from JSON (see `_shared`)."""
    in_flight = tuple(_decode_pending(p, saga) for p in _listed(d["pending"]))
    waiting = tuple(
        NextAttempt(
            n["step"],
            Phase(n["phase"]),
            n["attempt"],
            n["budget_from"],
            n["due"],
            uncertain=n.get("uncertain", False),
        )
        for n in _listed(d.get("next"))
    )
    choices = d.get("choices") or {}
    if not isinstance(choices, dict):
        raise DecodeError(f"journal choices must be an object, got {choices!r}")
    state_model: type[BaseModel] = saga.state if saga is not None else RawState
    return {
        "saga_id": d["saga_id"],
        "saga_type": d["saga_type"],
        "version": d["version"],
        "seq": d["seq"],
        "status": SagaStatus(d["status"]),
        "state": state_model.model_validate(d["state"]),
        "completed": tuple(d["completed"]),
        "compensated": tuple(d["compensated"]),
        "in_flight": in_flight,
        "failure": d["failure"],
        "correlation_id": d["correlation_id"],
        "started_ms": d["started"],
        "waiting": waiting,
        "choices": tuple(sorted((str(k), str(v)) for k, v in choices.items())),
        "deadline_ms": d.get("deadline"),
        "trace": d.get("trace"),
        "start_digest": d.get("start_digest"),
        "shape": d.get("shape"),
        "parent": _parent(d.get("parent")),
        "aborted": bool(d.get("aborted", False)),
        "waits": tuple(sorted((str(k), v) for k, v in (d.get("waits") or {}).items())),
        "signals": tuple((str(a), str(b), str(c)) for a, b, c in d.get("signals") or ()),
    }


def decode_transition(data: bytes, saga: Saga[Any] | Mapping[int, Saga[Any]] | None) -> Transition:
    """A journal record, read with its saga's definition: `saga`, or of several versions
    the one the record names. With no definition (None, or a version not given) the state
    and commands stay raw (for display, and for telling which versions live sagas use)."""
    try:
        d = orjson.loads(data)
        return Transition(
            **_decode_shared(d, _definition_of(d, saga)),
            cause=d["cause"],
            cause_type=d["cause_type"],
            at_ms=d["at"],
            event=d["event"],
            step=d["step"],
            note=d.get("note"),
            actor=d.get("actor"),
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"journal record does not decode: {exc!r}") from exc


def decode_instance(data: bytes, saga: Saga[Any] | Mapping[int, Saga[Any]] | None) -> SagaInstance:
    """An instance of a snapshot (see `encode_instance`), read like `decode_transition`."""
    try:
        d = orjson.loads(data)
        return SagaInstance(
            **_decode_shared(d, _definition_of(d, saga)),
            updated_ms=d["updated"],
            applied=frozenset(d["applied"]),
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"snapshot instance does not decode: {exc!r}") from exc


def transition_entry(t: Transition, epoch: int) -> JournalEntry:
    return JournalEntry(t.saga_id, TRANSITION, epoch, encode_transition(t))


def transitions_entry(transitions: Sequence[Transition], epoch: int) -> JournalEntry:
    """Several transitions of one partition as one journal record (a batch's decisions).

    One record per partition per batch instead of one per decision: the journal is
    most of an orchestrated saga's writes. Each transition is one line of compact JSON.
    """
    [entry] = journal_entries([(t.saga_id, encode_transition(t)) for t in transitions], epoch)
    return entry


def journal_entries(
    encoded: Sequence[tuple[str, bytes]], epoch: int, max_bytes: int | None = None
) -> list[JournalEntry]:
    """Encoded transitions (saga id, bytes) of one partition as few journal records as fit.

    Each record holds at most `max_bytes` of transitions (None: no limit), so a batch
    of large states never makes a record the broker refuses.
    """
    return [
        JournalEntry(chunk[0][0], TRANSITION, epoch, chunk[0][1])
        if len(chunk) == 1
        else JournalEntry("", TRANSITIONS, epoch, b"\n".join(d for _, d in chunk))
        for chunk in packed(encoded, lambda e: len(e[1]), max_bytes)
    ]


def packed(
    items: Sequence[_Item], size: Callable[[_Item], int], max_bytes: int | None
) -> list[list[_Item]]:
    """`items` in order, in groups of lines (each `size` bytes and a newline) of at most
    `max_bytes` (None: one group); an item larger than that gets a group of its own."""
    groups: list[list[_Item]] = []
    total = 0
    for item in items:
        n = size(item) + 1
        if not groups or (max_bytes is not None and total + n > max_bytes):
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += n
    return groups


def entry_transitions(
    entry: JournalEntry, decode: Callable[[bytes], Transition]
) -> list[Transition]:
    """The transitions a TRANSITION or TRANSITIONS entry holds."""
    if entry.kind == TRANSITIONS:
        return [decode(line) for line in entry.data.split(b"\n")]
    return [decode(entry.data)]


def claim_entry(epoch: int) -> JournalEntry:
    return JournalEntry("", CLAIM, epoch, orjson.dumps({"epoch": epoch}))


@dataclass
class Replayer:
    """Folds journal entries of one partition into saga instances, applying the fencing."""

    decode: Callable[[bytes], Transition]
    instances: dict[str, SagaInstance] = field(default_factory=dict)
    #: sagas that ended and left memory, kept for deduplication (from a snapshot)
    ended: dict[str, EndedSaga] = field(default_factory=dict)
    #: the sagas the records fed changed (None: every saga, in a replay from the start)
    touched: set[str] | None = None
    #: the snapshot the replay started from (None: the journal's start)
    snapshot: Any = None
    epoch: int = 0
    next_offset: int = 0
    applied: int = 0
    fenced: int = 0
    anomalies: list[str] = field(default_factory=list)
    #: Records that are not this orchestrator's (no journal headers, undecodable):
    #: skipped, counted, and the first few kept for the warning.
    foreign: int = 0
    foreign_examples: list[str] = field(default_factory=list)

    def feed(self, batch: list[StoredEntry]) -> None:
        for stored in batch:
            self.next_offset = stored.offset + 1
            entry = stored.entry
            if entry.kind == FOREIGN:
                self._foreign(entry.data.decode(errors="replace"))
                continue
            if entry.kind == CLAIM:
                self.epoch = max(self.epoch, entry.epoch)
                continue
            if entry.kind == SNAPSHOT:
                continue  # read through its checkpoint only
            if entry.kind not in (TRANSITION, TRANSITIONS):
                self.anomalies.append(f"offset {stored.offset}: unknown kind {entry.kind!r}")
                continue
            if entry.epoch < self.epoch:
                self.fenced += 1
                continue
            lines = entry.data.split(b"\n") if entry.kind == TRANSITIONS else [entry.data]
            for line in lines:
                try:
                    t = self.decode(line)
                except DecodeError as exc:
                    self._foreign(f"journal record at offset {stored.offset}: {exc}")
                    continue
                self._apply(stored.offset, t)

    def _foreign(self, why: str) -> None:
        self.foreign += 1
        if len(self.foreign_examples) < 5:
            self.foreign_examples.append(why)

    def _apply(self, offset: int, t: Transition) -> None:
        current = self.instances.get(t.saga_id)
        if current is not None and current.status.terminal and t.seq == 1:
            # Started again after it ended and its id was forgotten (the dedupe window
            # passed): a new saga with the same id.
            current = None
        if current is not None and (t.cause in current.applied or t.seq <= current.seq):
            self.anomalies.append(
                f"offset {offset}: saga {t.saga_id} seq {t.seq} repeats seq {current.seq}"
            )
            return
        expected = 1 if current is None else current.seq + 1
        if t.seq != expected:
            self.anomalies.append(
                f"offset {offset}: saga {t.saga_id} seq {t.seq}, expected {expected}"
            )
        self.instances[t.saga_id] = evolve(current, t)
        self.ended.pop(t.saga_id, None)
        if self.touched is not None:
            self.touched.add(t.saga_id)
        self.applied += 1
