"""What every transport speaks: records, the Transport protocol and its subscriptions."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from aiokafka.partitioner import murmur2


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    """A record as consumed: where it sits, its key, value, headers and timestamp.

    `defect` says why the transport could not decode what the broker holds at this
    offset (a corrupt batch, say); `value` then holds the raw bytes and `headers` is
    empty. Consumers dead-letter such a record and move on.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    defect: str | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to produce. Without a partition, the key picks it (murmur2, as Kafka)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """Where an acknowledged record was written."""

    topic: str
    partition: int
    offset: int


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives `key`."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


class RebalanceListener(Protocol):
    """Told when the group takes partitions away from this member or gives it some."""

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None: ...

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None: ...


class Subscription(Protocol):
    """A consumer-group member: fetch batches, commit offsets once per batch."""

    async def getmany(self, *, timeout: float, max_records: int = 500) -> list[Record]:
        """The next batch (empty after `timeout` seconds), in offset order per partition."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the next offsets to read; raises PartitionsLost if the group moved them."""
        ...

    def assignment(self) -> frozenset[TopicPartition]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def lag(self) -> dict[TopicPartition, int]:
        """Records not yet consumed per assigned partition (high-watermark - position)."""
        ...


#: The largest record (key, value and headers) a transport accepts by default: Kafka's
#: default ``max.request.size`` and the broker's ``message.max.bytes`` are about this.
MAX_RECORD_BYTES = 1024 * 1024


def record_size(record: OutgoingRecord) -> int:
    """Bytes of key, value and headers (a lower bound of the record's size on the wire)."""
    size = len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers:
        size += len(name) + len(value or b"")
    return size


class Transport(Protocol):
    """Produce, consume in groups, and read single partitions to their end."""

    #: Records larger than this are refused by `send` (TransportError).
    max_record_bytes: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ensure_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Create missing topics (with `configs` by topic name: Kafka topic settings such as
        ``retention.ms``); raise TopicMismatch if one has another partition count. Topics
        that exist keep their settings."""
        ...

    async def partition_count(self, topic: str) -> int: ...

    async def existing_topics(self) -> dict[str, int]:
        """Every topic that exists, with its partition count (creates nothing)."""
        ...

    async def topic_readers(self, topics: Sequence[str]) -> dict[str, frozenset[str] | None]:
        """The consumer groups that read each of `topics`, without joining any.

        A group reads a topic when one of its members is subscribed to it, or when it has
        committed an offset on it (a reader that is down for now still counts). A topic
        maps to None when the broker cannot say: it hides what live members subscribe to
        (the embedded broker does) and no group has committed on the topic yet.
        """
        ...

    async def send(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        """Produce all `records` as one batch and return once every one is acknowledged."""
        ...

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        listener: RebalanceListener | None = None,
    ) -> AbstractAsyncContextManager[Subscription]: ...

    def read(
        self, topic: str, partition: int, *, start: int = 0, max_records: int = 500
    ) -> AsyncGenerator[list[Record], None]:
        """Batches of one partition from `start` until the partition's end at that time."""
        ...
