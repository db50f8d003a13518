"""An EventLog in a list per partition, for unit tests."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence

import anyio

from .._errors import TopicMismatch, TransportError
from ._base import JournalEntry, StoredEntry


class MemoryEventLog:
    def __init__(self, partitions: int | None = None) -> None:
        self._parts: list[list[JournalEntry]] | None = (
            [[] for _ in range(partitions)] if partitions else None
        )

    async def ensure(self, partitions: int, configs: Mapping[str, str] | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        if self._parts is None:
            self._parts = [[] for _ in range(partitions)]
        elif len(self._parts) != partitions:
            raise TopicMismatch(
                f"memory journal has {len(self._parts)} partitions, {partitions} are required"
            )

    def _partition(self, partition: int) -> list[JournalEntry]:
        if self._parts is None:
            raise TransportError("memory journal is not created yet (call ensure())")
        if not 0 <= partition < len(self._parts):
            raise TransportError(f"memory journal has no partition {partition}")
        return self._parts[partition]

    async def append(self, entries: Sequence[tuple[int, JournalEntry]]) -> list[int]:
        await anyio.lowlevel.checkpoint()
        offsets = []
        for partition, entry in entries:
            log = self._partition(partition)
            offsets.append(len(log))
            log.append(entry)
        return offsets

    async def read(self, partition: int, start: int = 0) -> AsyncGenerator[list[StoredEntry], None]:
        log = self._partition(partition)
        pos = start
        while pos < len(log):
            batch = [StoredEntry(pos + i, e) for i, e in enumerate(log[pos : pos + 500])]
            pos += len(batch)
            await anyio.lowlevel.checkpoint()
            yield batch

    def entries(self, partition: int) -> list[JournalEntry]:
        """Everything in one partition, for assertions in tests."""
        return list(self._partition(partition))
