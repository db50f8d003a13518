"""An in-process broker with Kafka's semantics, for unit tests and users' own tests.

Topics have partitions (keys placed by murmur2, as Kafka), consumer groups share
partitions among members and rebalance eagerly when members come and go, committed
offsets belong to the group, and whatever a member fetched but did not commit is
delivered again to the next owner of the partition.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from .._errors import PartitionsLost, TopicMismatch, TransportError
from ._base import (
    MAX_RECORD_BYTES,
    Delivered,
    OutgoingRecord,
    RebalanceListener,
    Record,
    Subscription,
    TopicPartition,
    partition_for,
    record_size,
)


@dataclass
class _Group:
    members: dict[str, MemorySubscription] = field(default_factory=dict)
    generation: int = 0
    assignments: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBroker:
    """Shared state of the in-memory cluster; give one to each `MemoryTransport`."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._topics: dict[str, list[list[Record]]] = {}
        #: the first offset still kept, by partition (records before it were deleted)
        self._start: dict[TopicPartition, int] = {}
        self._groups: dict[str, _Group] = {}
        self._clock = clock
        self._changed = anyio.Event()
        self._member_ids = itertools.count(1)
        #: How many times records were appended or offsets committed (to see it settle).
        self.changes = 0

    # topics -------------------------------------------------------------
    def create_topic(self, topic: str, partitions: int) -> None:
        if partitions < 1:
            raise TransportError(f"topic {topic!r} needs at least one partition, got {partitions}")
        existing = self._topics.get(topic)
        if existing is None:
            self._topics[topic] = [[] for _ in range(partitions)]
        elif len(existing) != partitions:
            raise TopicMismatch(
                f"topic {topic!r} has {len(existing)} partitions, {partitions} are required"
            )

    def partition_count(self, topic: str) -> int:
        try:
            return len(self._topics[topic])
        except KeyError:
            raise TransportError(f"topic {topic!r} does not exist") from None

    def topics(self) -> dict[str, int]:
        return {name: len(parts) for name, parts in self._topics.items()}

    def records(self, topic: str, partition: int | None = None) -> list[Record]:
        """Every record of `topic` (or of one partition) still kept, for assertions in tests."""
        parts = self._topics.get(topic, [])
        kept = range(len(parts)) if partition is None else [partition]
        return [r for p in kept for r in parts[p][self.start_offset(topic, p) :]]

    def delete_records(self, topic: str, partition: int, before: int) -> None:
        """Delete the records of one partition below offset `before`, as retention (or
        Kafka's DeleteRecords) does: offsets stay, reads start at the first record kept."""
        tp = TopicPartition(topic, partition)
        if not 0 <= partition < self.partition_count(topic):
            raise TransportError(f"topic {topic!r} has no partition {partition}")
        self._start[tp] = max(self._start.get(tp, 0), before)

    def start_offset(self, topic: str, partition: int) -> int:
        """The first offset of a partition still kept."""
        return self._start.get(TopicPartition(topic, partition), 0)

    def append(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        delivered = []
        now = int(self._clock() * 1000)
        for rec in records:  # all or nothing, as one produce request of a batch per partition
            parts = self._topics.get(rec.topic)
            if parts is None:
                raise TransportError(f"cannot send to topic {rec.topic!r}: it does not exist")
            if rec.partition is not None and not 0 <= rec.partition < len(parts):
                raise TransportError(
                    f"topic {rec.topic!r} has no partition {rec.partition} (it has {len(parts)})"
                )
        for rec in records:
            parts = self._topics[rec.topic]
            if rec.partition is not None:
                p = rec.partition
            elif rec.key is not None:
                p = partition_for(rec.key, len(parts))
            else:
                p = random.randrange(len(parts))
            log = parts[p]
            stored = Record(rec.topic, p, len(log), rec.key, rec.value, rec.headers, now)
            log.append(stored)
            delivered.append(Delivered(rec.topic, p, stored.offset))
        if records:
            self._notify()
        return delivered

    def _notify(self) -> None:
        self.changes += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (in tests) until `predicate()` holds; checked after every append and commit."""
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def _wait_change(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._changed.wait()

    # groups -------------------------------------------------------------
    def _join(self, group_id: str, member: MemorySubscription) -> str:
        group = self._groups.setdefault(group_id, _Group())
        member_id = f"{group_id}-{next(self._member_ids)}"
        group.members[member_id] = member
        self._rebalance(group)
        return member_id

    def _leave(self, group_id: str, member_id: str) -> None:
        group = self._groups[group_id]
        if group.members.pop(member_id, None) is not None:
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        group.generation += 1
        wanted = sorted(
            {
                TopicPartition(t, p)
                for m in group.members.values()
                for t in m.topics
                for p in range(len(self._topics.get(t, [])))
            }
        )
        ids = list(group.members)
        group.assignments = {mid: frozenset() for mid in ids}
        if ids:
            for i, tp in enumerate(wanted):
                mid = ids[i % len(ids)]
                group.assignments[mid] = group.assignments[mid] | {tp}
        self._notify()

    def backlog(self) -> dict[tuple[str, str], int]:
        """Records sent but not yet committed, per (consumer group, topic), counting only
        groups that have members."""
        waiting: dict[tuple[str, str], int] = {}
        for group_id, group in self._groups.items():
            if not group.members:
                continue
            for topic in sorted({t for m in group.members.values() for t in m.topics}):
                count = sum(
                    len(log) - group.committed.get(TopicPartition(topic, p), 0)
                    for p, log in enumerate(self._topics.get(topic, []))
                )
                if count > 0:
                    waiting[group_id, topic] = count
        return waiting

    def idle(self) -> bool:
        """True when every consumer group with members has committed all of its topics
        (nothing sent is still waiting to be handled)."""
        return not self.backlog()

    def committed(self, group_id: str, tp: TopicPartition) -> int | None:
        group = self._groups.get(group_id)
        return None if group is None else group.committed.get(tp)

    def readers(self, topic: str) -> frozenset[str]:
        """The groups with a member subscribed to `topic` or an offset committed on it."""
        return frozenset(
            group_id
            for group_id, group in self._groups.items()
            if any(topic in m.topics for m in group.members.values())
            or any(tp.topic == topic for tp in group.committed)
        )


class MemorySubscription:
    """One member of a consumer group on a `MemoryBroker`."""

    def __init__(
        self,
        broker: MemoryBroker,
        topics: Sequence[str],
        group_id: str,
        listener: RebalanceListener | None,
    ) -> None:
        self._broker = broker
        self.topics = tuple(topics)
        self._group_id = group_id
        self._listener = listener
        self._member_id = ""
        self._generation = 0
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._closed = False

    def _open(self) -> None:
        for topic in self.topics:
            self._broker.partition_count(topic)
        self._member_id = self._broker._join(self._group_id, self)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._broker._leave(self._group_id, self._member_id)

    async def _sync(self) -> None:
        group = self._broker._groups[self._group_id]
        while self._generation != group.generation:
            generation = group.generation
            if self._assigned and self._listener is not None:
                await self._listener.on_revoked(self._assigned)
            self._assigned = frozenset()
            self._positions.clear()
            self._paused.clear()
            if self._member_id not in group.members:
                raise TransportError(f"member {self._member_id} has left group {self._group_id}")
            self._generation = generation
            assigned = group.assignments.get(self._member_id, frozenset())
            for tp in assigned:
                self._positions[tp] = group.committed.get(tp, 0)
            self._assigned = assigned
            if self._listener is not None:
                await self._listener.on_assigned(assigned)

    async def getmany(self, *, timeout: float, max_records: int = 500) -> list[Record]:
        if self._closed:
            raise TransportError("subscription is closed")
        deadline = anyio.current_time() + timeout
        while True:
            await self._sync()
            batch = self._fetch(max_records)
            remaining = deadline - anyio.current_time()
            if batch or remaining <= 0:
                await anyio.lowlevel.checkpoint()
                return batch
            await self._broker._wait_change(remaining)

    def _fetch(self, max_records: int) -> list[Record]:
        batch: list[Record] = []
        for tp in sorted(self._assigned):
            if tp in self._paused:
                continue
            log = self._broker._topics[tp.topic][tp.partition]
            pos = max(self._positions[tp], self._broker.start_offset(tp.topic, tp.partition))
            take = log[pos : pos + (max_records - len(batch))]
            if take:
                batch.extend(take)
                self._positions[tp] = pos + len(take)
            if len(batch) >= max_records:
                break
        return batch

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        group = self._broker._groups[self._group_id]
        mine = group.assignments.get(self._member_id, frozenset())
        if self._closed or self._generation != group.generation:
            raise PartitionsLost(
                f"commit refused: group {self._group_id!r} rebalanced (member {self._member_id})"
            )
        lost = [tp for tp in offsets if tp not in mine]
        if lost:
            raise PartitionsLost(f"commit refused: {lost} are not assigned to {self._member_id}")
        await anyio.lowlevel.checkpoint()
        group.committed.update(offsets)
        self._broker._notify()

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.difference_update(partitions)
        self._broker._notify()

    async def lag(self) -> dict[TopicPartition, int]:
        await anyio.lowlevel.checkpoint()
        topics = self._broker._topics
        return {
            tp: len(topics[tp.topic][tp.partition]) - self._positions.get(tp, 0)
            for tp in self._assigned
        }

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self._assigned:
            raise TransportError(f"cannot seek {partition}: not assigned to this member")
        self._positions[partition] = offset


class MemoryTransport:
    """`Transport` over a `MemoryBroker`; several transports may share one broker."""

    def __init__(
        self, broker: MemoryBroker | None = None, *, max_record_bytes: int = MAX_RECORD_BYTES
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.max_record_bytes = max_record_bytes

    async def start(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def stop(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> MemoryTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ensure_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        for name, partitions in topics.items():
            self.broker.create_topic(name, partitions)
        await anyio.lowlevel.checkpoint()

    async def partition_count(self, topic: str) -> int:
        await anyio.lowlevel.checkpoint()
        return self.broker.partition_count(topic)

    async def existing_topics(self) -> dict[str, int]:
        await anyio.lowlevel.checkpoint()
        return self.broker.topics()

    async def topic_readers(self, topics: Sequence[str]) -> dict[str, frozenset[str] | None]:
        await anyio.lowlevel.checkpoint()
        return {topic: self.broker.readers(topic) for topic in topics}

    async def send(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        await anyio.lowlevel.checkpoint()
        for r in records:
            size = record_size(r)
            if size > self.max_record_bytes:
                raise TransportError(
                    f"a record for {r.topic!r} has {size} bytes; at most "
                    f"{self.max_record_bytes} are allowed"
                )
        return self.broker.append(records)

    @asynccontextmanager
    async def subscribe(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        listener: RebalanceListener | None = None,
    ) -> AsyncIterator[Subscription]:
        sub = MemorySubscription(self.broker, topics, group_id, listener)
        sub._open()
        try:
            yield sub
        finally:
            sub._close()

    async def read(
        self, topic: str, partition: int, *, start: int = 0, max_records: int = 500
    ) -> AsyncGenerator[list[Record], None]:
        if not 0 <= partition < self.broker.partition_count(topic):
            raise TransportError(f"topic {topic!r} has no partition {partition}")
        pos = start
        while True:
            log = self.broker._topics[topic][partition]
            pos = max(pos, self.broker.start_offset(topic, partition))
            batch = log[pos : pos + max_records]
            await anyio.lowlevel.checkpoint()
            if not batch:
                return
            pos += len(batch)
            yield batch
