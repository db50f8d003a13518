"""Snapshots of a journal partition, and restoring one from its latest valid snapshot.

A snapshot is the partition's instances and the ids of the sagas that ended and left
memory (the dedupe index), as of a journal offset. Its data is in the journal itself, as
``snapshot`` records (several when it is larger than a record may be). Where the latest
one is, is in a small companion topic, ``<saga>.checkpoints`` (same partition number): a
``snapshot-at`` record per snapshot written, and a ``claim`` per restore.

The checkpoints topic is fenced like the journal. A new owner appends its claim there
before its claim in the journal, so a ``snapshot-at`` that a stalled former owner (a
zombie) appends after it is below the latest claim before it, and is never used; one
that comes before it points at records that are in the journal before the new owner's
claim, so replaying the tail from there sees everything. A snapshot's records are
appended and acknowledged before its ``snapshot-at``: one interrupted by a crash has
no ``snapshot-at`` and is never used either.

Restore: read the checkpoints partition (a record per snapshot and per restore, so it
stays small), take the latest valid ``snapshot-at``, read the snapshot from the journal
there and replay the journal from there on (the tail). Without one, or when the
snapshot cannot be read whole (deleted by retention), the journal is replayed from its
start, as before snapshots existed.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._errors import DecodeError
from ._evaluator import EndedSaga, SagaInstance, SagaStatus, Transition
from ._faults import fault_point
from ._journal import CLAIM, SNAPSHOT, Replayer, claim_entry, encode_instance, packed
from .eventlog._base import EventLog, JournalEntry, StoredEntry

log = logging.getLogger("sagakit.journal")

#: a checkpoints record: where a snapshot is in the journal
SNAPSHOT_AT = "snapshot-at"


@dataclass(frozen=True, slots=True)
class SnapshotAt:
    """Where a snapshot is: its id, the journal offset of its first record, how many."""

    snapshot_id: str
    offset: int
    parts: int
    epoch: int
    sagas: int = 0
    ended: int = 0
    at_ms: int = 0


def _ended_line(e: EndedSaga) -> bytes:
    return orjson.dumps(["ended", e.saga_id, e.status.value, e.version, e.ended_ms, e.start_digest])


def snapshot_entries(
    snapshot_id: str,
    epoch: int,
    instances: Iterable[SagaInstance],
    ended: Iterable[EndedSaga],
    max_bytes: int,
) -> list[JournalEntry]:
    """A snapshot as journal records of at most about `max_bytes` each: a header line
    (its id, which part of how many) and one line per instance or ended saga."""
    lines = [encode_instance(i) for i in instances] + [_ended_line(e) for e in ended]
    chunks = packed(lines, len, max_bytes - 128) or [[]]  # room for the header line
    parts = len(chunks)
    return [
        JournalEntry(
            "",
            SNAPSHOT,
            epoch,
            b"\n".join(
                [orjson.dumps({"snapshot": snapshot_id, "part": k, "parts": parts}), *chunk]
            ),
        )
        for k, chunk in enumerate(chunks)
    ]


def snapshot_at_entry(at: SnapshotAt) -> JournalEntry:
    body = {
        "snapshot": at.snapshot_id,
        "offset": at.offset,
        "parts": at.parts,
        "sagas": at.sagas,
        "ended": at.ended,
        "at": at.at_ms,
    }
    return JournalEntry("", SNAPSHOT_AT, at.epoch, orjson.dumps(body))


def evict(
    instances: dict[str, SagaInstance],
    ended: dict[str, EndedSaga],
    now_ms: int,
    window_ms: int,
) -> None:
    """Let the sagas that ended leave memory (in place): each becomes an `EndedSaga`,
    kept until `window_ms` after its end; a child saga stays whole until then (its parent
    may still ask it to compensate)."""
    for saga_id, instance in list(instances.items()):
        if not instance.status.terminal:
            continue
        if instance.parent is None:
            ended[saga_id] = EndedSaga.of(instance)
            del instances[saga_id]
    forget_expired(instances, ended, now_ms, window_ms)


def forget_expired(
    instances: dict[str, SagaInstance],
    ended: dict[str, EndedSaga],
    now_ms: int,
    window_ms: int,
) -> None:
    """Forget (in place) the sagas that ended more than `window_ms` ago, whole or by id;
    those inside the window stay as they are."""
    for saga_id, instance in list(instances.items()):
        if instance.status.terminal and now_ms - instance.updated_ms > window_ms:
            del instances[saga_id]
    for saga_id, e in list(ended.items()):
        if now_ms - e.ended_ms > window_ms:
            del ended[saga_id]


async def write_snapshot(
    journal: EventLog,
    checkpoints: EventLog,
    partition: int,
    epoch: int,
    instances: Iterable[SagaInstance],
    ended: Iterable[EndedSaga],
    *,
    max_bytes: int,
    at_ms: int,
) -> SnapshotAt:
    """Append a snapshot to the journal, then say where it is in the checkpoints topic.

    Call it between batches (nothing else of this owner is appended meanwhile): the
    snapshot holds what every journal record before its first one did.
    """
    instances, ended = list(instances), list(ended)
    snapshot_id = uuid.uuid4().hex[:16]
    entries = snapshot_entries(snapshot_id, epoch, instances, ended, max_bytes)
    fault_point("orchestrator.snapshot-before-journal")
    offsets = await journal.append([(partition, e) for e in entries])
    at = SnapshotAt(snapshot_id, offsets[0], len(entries), epoch, len(instances), len(ended), at_ms)
    fault_point("orchestrator.snapshot-before-index")
    await checkpoints.append([(partition, snapshot_at_entry(at))])
    fault_point("orchestrator.snapshot-after-index")
    return at


@dataclass
class Checkpoints:
    """What a checkpoints partition says: the latest valid snapshot, the highest epoch."""

    latest: SnapshotAt | None = None
    epoch: int = 0
    fenced: int = 0
    foreign: int = 0


async def read_checkpoints(checkpoints: EventLog, partition: int) -> Checkpoints:
    found = Checkpoints()
    claimed = 0  # the latest claim so far
    async with aclosing(checkpoints.read(partition)) as batches:
        async for batch in batches:
            for stored in batch:
                entry = stored.entry
                if entry.kind == CLAIM:
                    claimed = max(claimed, entry.epoch)
                elif entry.kind == SNAPSHOT_AT:
                    if entry.epoch < claimed:
                        found.fenced += 1  # a former owner's, after the next owner claimed
                        continue
                    try:
                        d = orjson.loads(entry.data)
                        found.latest = SnapshotAt(
                            str(d["snapshot"]),
                            int(d["offset"]),
                            int(d["parts"]),
                            entry.epoch,
                            int(d.get("sagas", 0)),
                            int(d.get("ended", 0)),
                            int(d.get("at", 0)),
                        )
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        found.foreign += 1
                        continue
                else:
                    found.foreign += 1
                    continue
                found.epoch = max(found.epoch, entry.epoch)
    return found


@dataclass
class _Loading:
    """A snapshot being read from the journal, and the tail records seen meanwhile."""

    at: SnapshotAt
    decode_instance: Callable[[bytes], SagaInstance]
    parts: dict[int, bytes] = field(default_factory=dict)
    held: list[StoredEntry] = field(default_factory=list)

    def take(self, stored: StoredEntry) -> bool:
        """Keep a part of this snapshot (True), or hold a tail record until it is whole."""
        entry = stored.entry
        if entry.kind == SNAPSHOT and stored.offset >= self.at.offset:
            header, _, _ = entry.data.partition(b"\n")
            try:
                h = orjson.loads(header)
                mine = h["snapshot"] == self.at.snapshot_id
            except (orjson.JSONDecodeError, KeyError, TypeError):
                mine = False
            if mine:
                self.parts[int(h["part"])] = entry.data
                return True
        self.held.append(stored)
        return False

    @property
    def whole(self) -> bool:
        return len(self.parts) == self.at.parts

    def load(self, replayer: Replayer) -> None:
        for k in range(self.at.parts):
            for line in self.parts[k].split(b"\n")[1:]:
                if line.startswith(b"["):
                    _, saga_id, status, version, ended_ms, digest = orjson.loads(line)
                    replayer.ended[saga_id] = EndedSaga(
                        saga_id, SagaStatus(status), version, ended_ms, digest
                    )
                else:
                    instance = self.decode_instance(line)
                    replayer.instances[instance.saga_id] = instance
        replayer.epoch = max(replayer.epoch, self.at.epoch)
        replayer.touched = set()


async def _replay_from_snapshot(
    journal: EventLog,
    partition: int,
    at: SnapshotAt,
    decode: Callable[[bytes], Transition],
    decode_instance: Callable[[bytes], SagaInstance],
) -> Replayer | None:
    """The snapshot at `at` and the journal after it; None if it cannot be read whole."""
    replayer = Replayer(decode)
    loading: _Loading | None = _Loading(at, decode_instance)
    first: int | None = None
    async with aclosing(journal.read(partition, at.offset)) as batches:
        async for batch in batches:
            if not batch:
                continue
            if first is None:
                first = batch[0].offset
            for stored in batch:
                if loading is None:
                    replayer.feed([stored])
                    continue
                loading.take(stored)
                if loading.whole:
                    try:
                        loading.load(replayer)
                    except (DecodeError, orjson.JSONDecodeError, ValueError, TypeError) as exc:
                        log.error(
                            "journal partition %d: snapshot %s does not read: %s",
                            partition,
                            at.snapshot_id,
                            exc,
                        )
                        return None
                    held, loading = loading.held, None
                    replayer.feed(held)
            replayer.next_offset = max(replayer.next_offset, batch[-1].offset + 1)
    if loading is not None:
        log.error(
            "journal partition %d: snapshot %s at offset %d is not whole in the journal "
            "(%d of %d parts, first offset read %s): it may have been deleted by the "
            "journal's retention; replaying what the journal still holds",
            partition,
            at.snapshot_id,
            at.offset,
            len(loading.parts),
            at.parts,
            first,
        )
        return None
    replayer.snapshot = at
    return replayer


async def replay_from_latest_snapshot(
    journal: EventLog,
    checkpoints: EventLog,
    partition: int,
    decode: Callable[[bytes], Transition],
    decode_instance: Callable[[bytes], SagaInstance],
) -> tuple[Checkpoints, Replayer | None]:
    """What the checkpoints say, and the partition as of its latest valid snapshot and the
    journal after it (None: no snapshot, or not whole). Reads only; claims nothing."""
    known = await read_checkpoints(checkpoints, partition)
    if known.latest is None:
        return known, None
    return known, await _replay_from_snapshot(
        journal, partition, known.latest, decode, decode_instance
    )


async def restore_partition(
    journal: EventLog,
    partition: int,
    decode: Callable[[bytes], Transition],
    *,
    checkpoints: EventLog | None = None,
    decode_instance: Callable[[bytes], SagaInstance] | None = None,
) -> Replayer:
    """Restore one journal partition (from its latest valid snapshot, if there is one),
    claim it with the next epoch, and catch up to the claim.

    Records that land between the end of the replay and our claim were written by
    the previous owner before it was fenced, so they are applied too.
    """
    known = Checkpoints()
    replayer: Replayer | None = None
    if checkpoints is not None and decode_instance is not None:
        known, replayer = await replay_from_latest_snapshot(
            journal, checkpoints, partition, decode, decode_instance
        )
    elif checkpoints is not None:
        known = await read_checkpoints(checkpoints, partition)
    if replayer is None:
        replayer = Replayer(decode)
        async with aclosing(journal.read(partition)) as batches:
            async for batch in batches:
                replayer.feed(batch)
    epoch = max(replayer.epoch, known.epoch) + 1
    if checkpoints is not None:  # before the journal's claim: see the module's docstring
        await checkpoints.append([(partition, claim_entry(epoch))])
    [claim_offset] = await journal.append([(partition, claim_entry(epoch))])
    async with aclosing(journal.read(partition, replayer.next_offset)) as batches:
        async for batch in batches:
            replayer.feed([s for s in batch if s.offset <= claim_offset])
            if replayer.next_offset > claim_offset:
                break
    if replayer.epoch != epoch:
        log.warning(
            "journal partition %d: claimed epoch %d but saw %d", partition, epoch, replayer.epoch
        )
    replayer.fenced += known.fenced
    if replayer.foreign or known.foreign:
        log.warning(
            "journal partition %d: skipped %d record(s) that are not this orchestrator's "
            "journal entries (only orchestrators may write to journal and checkpoints "
            "topics)%s",
            partition,
            replayer.foreign + known.foreign,
            f", first: {replayer.foreign_examples[0]}" if replayer.foreign_examples else "",
        )
    if replayer.anomalies:
        log.warning(
            "journal partition %d: %d anomalies, first: %s",
            partition,
            len(replayer.anomalies),
            replayer.anomalies[0],
        )
    return replayer


DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class History:
    """What an orchestrator keeps of the past, so that its cost follows the live sagas.

    - A snapshot of each partition it owns is written every `snapshot_every` journal
      records, and every `snapshot_interval_s` seconds when anything changed; a partition
      holding sagas is snapshotted at least every quarter of the journal's retention, so
      its latest snapshot is never deleted. A restore reads the latest snapshot and the
      journal after it.
    - A saga that ended leaves memory at the next snapshot of its partition. What is kept
      is its id, status and start digest, for `dedupe_window_s` seconds after its end: a
      start re-sent meanwhile is recognised (ignored, or a conflict if its state differs),
      a late reply is ignored. After the window the id is forgotten, and a start with the
      same id starts a new saga. A child saga is kept whole for the window instead (its
      parent may ask it to compensate), then forgotten.
    - The journal (and its checkpoints topic) are created with `journal_retention_s`
      seconds (None: kept for ever) and `journal_retention_bytes` per partition (None:
      no size limit) of retention.

    Environment (read by `sagakit run`): SAGAKIT_SNAPSHOT_EVERY,
    SAGAKIT_SNAPSHOT_INTERVAL_S, SAGAKIT_DEDUPE_WINDOW_S, SAGAKIT_JOURNAL_RETENTION_S,
    SAGAKIT_JOURNAL_RETENTION_BYTES.
    """

    snapshot_every: int = 10_000
    snapshot_interval_s: float = 60.0
    dedupe_window_s: float = 3_600.0
    journal_retention_s: float | None = 7 * DAY_S
    journal_retention_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, got {self.snapshot_every}")
        if self.snapshot_interval_s <= 0:
            raise ValueError(
                f"snapshot_interval_s must be positive, got {self.snapshot_interval_s}"
            )
        if self.dedupe_window_s < 0:
            raise ValueError(f"dedupe_window_s must not be negative, got {self.dedupe_window_s}")
        retention = self.journal_retention_s
        if retention is not None and self.snapshot_interval_s * 4 > retention:
            raise ValueError(
                f"snapshot_interval_s ({self.snapshot_interval_s:g}s) must be at most a "
                f"quarter of journal_retention_s ({retention:g}s): the latest snapshot must "
                "outlive the records before it"
            )
        if self.journal_retention_bytes is not None and self.journal_retention_bytes < 1 << 20:
            raise ValueError(
                f"journal_retention_bytes ({self.journal_retention_bytes}) must be at least "
                "1 MiB per partition"
            )

    @property
    def refresh_s(self) -> float | None:
        """How old a partition's latest snapshot may get (None: no limit)."""
        if self.journal_retention_s is None:
            return None
        return self.journal_retention_s / 4

    def topic_configs(self) -> dict[str, str]:
        """Kafka topic settings of the journal and checkpoints topics."""
        retention = self.journal_retention_s
        configs = {"retention.ms": "-1" if retention is None else str(round(retention * 1000))}
        if self.journal_retention_bytes is not None:
            configs["retention.bytes"] = str(self.journal_retention_bytes)
        return configs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> History:
        """The defaults, with what SAGAKIT_SNAPSHOT_EVERY, SAGAKIT_SNAPSHOT_INTERVAL_S,
        SAGAKIT_DEDUPE_WINDOW_S, SAGAKIT_JOURNAL_RETENTION_S (``none``: for ever) and
        SAGAKIT_JOURNAL_RETENTION_BYTES set."""
        env = os.environ if environ is None else environ
        given: dict[str, Any] = {}
        for var, name, kind in (
            ("SAGAKIT_SNAPSHOT_EVERY", "snapshot_every", int),
            ("SAGAKIT_SNAPSHOT_INTERVAL_S", "snapshot_interval_s", float),
            ("SAGAKIT_DEDUPE_WINDOW_S", "dedupe_window_s", float),
            ("SAGAKIT_JOURNAL_RETENTION_S", "journal_retention_s", float),
            ("SAGAKIT_JOURNAL_RETENTION_BYTES", "journal_retention_bytes", int),
        ):
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if raw.lower() in ("none", "forever") and name.startswith("journal_retention"):
                given[name] = None
                continue
            try:
                given[name] = kind(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a number") from None
        return cls(**given)
