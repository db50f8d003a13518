"""An EventLog on a journal topic (Kafka, or any Transport), co-partitioned with the inbox."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence

from ..transport._base import OutgoingRecord, Record, Transport
from ._base import FOREIGN, JournalEntry, StoredEntry

KIND_HEADER = "journal-kind"
EPOCH_HEADER = "journal-epoch"


def _entry(record: Record) -> JournalEntry:
    """The journal entry a record holds; a FOREIGN one (with the reason) if it holds none."""
    kind = epoch = None
    try:
        for name, value in record.headers:
            if name == KIND_HEADER:
                kind = value.decode()
            elif name == EPOCH_HEADER:
                epoch = int(value)
        key = record.key.decode() if record.key is not None else ""
    except (AttributeError, TypeError, ValueError) as exc:
        return _foreign(record, f"its journal headers or key do not decode ({exc!r})")
    if record.defect is not None:
        return _foreign(record, record.defect)
    if kind is None or epoch is None or record.value is None:
        return _foreign(
            record,
            f"it lacks {KIND_HEADER}/{EPOCH_HEADER} headers or a value; "
            "is another writer producing to this topic?",
        )
    return JournalEntry(key, kind, epoch, record.value)


def _foreign(record: Record, why: str) -> JournalEntry:
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    return JournalEntry(
        "", FOREIGN, -1, f"journal record {where} is not a journal entry: {why}".encode()
    )


class KafkaEventLog:
    """Journal entries as records of `topic`: key = saga id, kind and epoch in headers.

    Entries go to an explicit partition (the inbox partition they belong to), so a
    saga's journal never depends on the producer's partitioner.
    """

    def __init__(self, transport: Transport, topic: str) -> None:
        self.transport = transport
        self.topic = topic

    async def ensure(self, partitions: int, configs: Mapping[str, str] | None = None) -> None:
        await self.transport.ensure_topics(
            {self.topic: partitions}, {self.topic: configs} if configs else None
        )

    async def append(self, entries: Sequence[tuple[int, JournalEntry]]) -> list[int]:
        records = [
            OutgoingRecord(
                topic=self.topic,
                key=e.key.encode() if e.key else None,
                value=e.data,
                headers=((KIND_HEADER, e.kind.encode()), (EPOCH_HEADER, str(e.epoch).encode())),
                partition=p,
            )
            for p, e in entries
        ]
        return [d.offset for d in await self.transport.send(records)]

    async def read(self, partition: int, start: int = 0) -> AsyncGenerator[list[StoredEntry], None]:
        async for batch in self.transport.read(self.topic, partition, start=start):
            yield [StoredEntry(r.offset, _entry(r)) for r in batch]
