"""Reading a running system for people: saga journals and dead-letter topics.

Nothing here writes to a journal or claims a partition: journals are replayed the way
an owner would (with the claim-epoch fencing) but read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import orjson

from ._dlq import DeadLetter, NotReplayable, dlq_topic
from ._errors import DecodeError, TransportError
from ._evaluator import SagaInstance, Transition
from ._journal import CLAIM, TRANSITION, TRANSITIONS, Replayer, decode_transition
from .eventlog.kafka import KafkaEventLog
from .transport._base import Record, Transport, partition_for

JOURNAL_SUFFIX = ".journal"
#: Topics a sagakit app consumes, by suffix: what `dlq replay` may produce to.
CONSUMED_SUFFIXES = (".inbox", ".commands", ".events")


@dataclass
class JournalView:
    """Every saga of one journal topic, as its owner would restore it."""

    topic: str
    instances: dict[str, SagaInstance] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    fenced: int = 0
    records: int = 0
    foreign: int = 0


async def journal_topics(transport: Transport, namespace: str = "") -> dict[str, int]:
    """Journal topics (``<namespace><saga>.journal``) with their partition counts."""
    return {
        name: n
        for name, n in (await transport.existing_topics()).items()
        if name.startswith(namespace) and name.endswith(JOURNAL_SUFFIX)
    }


def saga_type_of(journal_topic: str, namespace: str = "") -> str:
    return journal_topic[len(namespace) : -len(JOURNAL_SUFFIX)]


async def read_journal(transport: Transport, topic: str, partitions: int) -> JournalView:
    view = JournalView(topic)
    log = KafkaEventLog(transport, topic)
    for p in range(partitions):
        replayer = Replayer(lambda data: decode_transition(data, None))
        async with aclosing(log.read(p)) as batches:
            async for batch in batches:
                replayer.feed(batch)
        view.instances.update(replayer.instances)
        view.anomalies.extend(f"{topic}[{p}] {a}" for a in replayer.anomalies)
        view.fenced += replayer.fenced
        view.records += replayer.applied
        view.foreign += replayer.foreign
    return view


async def saga_history(
    transport: Transport, topic: str, partitions: int, saga_id: str
) -> list[Transition]:
    """The journal records of one saga, in order (fenced and foreign records left out)."""
    partition = partition_for(saga_id.encode(), partitions)
    log = KafkaEventLog(transport, topic)
    history: list[Transition] = []
    epoch = 0
    marker = f'"saga_id":{orjson.dumps(saga_id).decode()}'.encode()
    async with aclosing(log.read(partition)) as batches:
        async for batch in batches:
            for stored in batch:
                entry = stored.entry
                if entry.kind == CLAIM:
                    epoch = max(epoch, entry.epoch)
                elif entry.kind in (TRANSITION, TRANSITIONS) and entry.epoch >= epoch:
                    lines = entry.data.split(b"\n") if entry.kind == TRANSITIONS else [entry.data]
                    history.extend(t for line in lines if marker in line for t in _decoded(line))
    return [t for t in history if t.saga_id == saga_id]


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
    records: list[Record] = []
    for p in range(existing[topic]):
        async with aclosing(transport.read(topic, p)) as batches:
            async for batch in batches:
                records.extend(batch)
    return records


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
