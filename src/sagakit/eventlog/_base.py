"""The EventLog protocol: an append-only, partitioned journal of opaque entries."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journal record: whose (saga id, or "" for the partition), what kind, the writer's
    claim epoch, and the encoded body."""

    key: str
    kind: str
    epoch: int
    data: bytes


#: The kind of an entry the log found but cannot read as one of its writer's (a record
#: without the journal headers, say, produced to the journal by someone else). Replay
#: counts and skips it.
FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class StoredEntry:
    offset: int
    entry: JournalEntry


class EventLog(Protocol):
    """Append-only journal partitions, co-partitioned with the saga's inbox."""

    async def ensure(self, partitions: int, configs: Mapping[str, str] | None = None) -> None:
        """Create the journal with `partitions` partitions (and Kafka topic settings
        `configs`, such as its retention), or check that it has them."""
        ...

    async def append(self, entries: Sequence[tuple[int, JournalEntry]]) -> list[int]:
        """Append (partition, entry) pairs in order; return once all are durable, with offsets."""
        ...

    def read(self, partition: int, start: int = 0) -> AsyncGenerator[list[StoredEntry], None]:
        """Batches of one partition from `start` to its end at the time of reading."""
        ...
