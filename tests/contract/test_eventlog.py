"""The EventLog contract, run against MemoryEventLog and KafkaEventLog (embedded broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from sagakit import TopicMismatch
from sagakit.eventlog import EventLog, JournalEntry, KafkaEventLog, MemoryEventLog, StoredEntry
from sagakit.transport import KafkaSettings, KafkaTransport, partition_for

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def event_log(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[EventLog]:
    """A fresh, not yet created journal: in memory, or a new journal topic on the broker."""
    if request.param == "memory":
        yield MemoryEventLog()
    else:
        settings: KafkaSettings = request.getfixturevalue("kafka_settings")
        async with KafkaTransport(settings) as transport:
            yield KafkaEventLog(transport, f"{unique}.journal")


async def read_all(log: EventLog, partition: int, start: int = 0) -> list[StoredEntry]:
    stored: list[StoredEntry] = []
    async with aclosing(log.read(partition, start)) as batches:
        async for batch in batches:
            stored.extend(batch)
    return stored


def entry(key: str, n: int, *, kind: str = "transition", epoch: int = 1) -> JournalEntry:
    return JournalEntry(key, kind, epoch, f'{{"saga":"{key}","n":{n}}}'.encode())


async def test_ensure_creates_the_journal_and_checks_its_partition_count(
    event_log: EventLog,
) -> None:
    await event_log.ensure(3)
    await event_log.ensure(3)

    with pytest.raises(TopicMismatch):
        await event_log.ensure(4)
    with pytest.raises(TopicMismatch):
        await event_log.ensure(2)
    # all three partitions exist and start empty
    offsets = await event_log.append([(p, entry(f"s{p}", 0)) for p in range(3)])
    assert offsets == [0, 0, 0]


async def test_append_returns_offsets_and_entries_read_back_identical_in_order(
    event_log: EventLog,
) -> None:
    await event_log.ensure(3)
    first = [
        (0, JournalEntry("", "claim", 1, b'{"epoch":1}')),  # partition-level: no saga key
        (1, entry("saga-a", 0)),
        (0, entry("saga-b", 0, epoch=1)),
        (2, JournalEntry("saga-\u00e9t\u00e9", "k\u00efnd", 7, bytes(range(256)))),
        (0, entry("saga-b", 1, kind="timer-set", epoch=1)),
        (1, JournalEntry("saga-a", "empty-body", 0, b"")),
    ]
    second = [(0, entry("saga-c", 0, epoch=2)), (1, entry("saga-a", 1, epoch=2))]

    assert await event_log.append(first) == [0, 0, 1, 0, 2, 1]
    assert await event_log.append(second) == [3, 2]

    for p in range(3):
        expected = [e for q, e in [*first, *second] if q == p]
        stored = await read_all(event_log, p)
        assert [s.entry for s in stored] == expected
        assert [s.offset for s in stored] == list(range(len(expected)))


async def test_entries_go_to_the_partition_given_not_the_one_their_key_hashes_to(
    event_log: EventLog,
) -> None:
    partitions = 4
    await event_log.ensure(partitions)
    # for each partition, saga keys that murmur2 places on another partition
    keys = [f"saga-{i}" for i in range(200)]
    chosen = {
        p: [k for k in keys if partition_for(k.encode(), partitions) != p][:5]
        for p in range(partitions)
    }

    await event_log.append([(p, entry(k, p)) for p, ks in chosen.items() for k in ks])

    for p, ks in chosen.items():
        assert [s.entry for s in await read_all(event_log, p)] == [entry(k, p) for k in ks]


async def test_read_starts_at_the_given_offset(event_log: EventLog) -> None:
    await event_log.ensure(2)
    entries = [entry("saga-a", n) for n in range(10)]
    await event_log.append([(1, e) for e in entries])

    from_six = await read_all(event_log, 1, start=6)

    assert [(s.offset, s.entry) for s in from_six] == [(n, entries[n]) for n in range(6, 10)]
    assert await read_all(event_log, 1, start=10) == []
    assert await read_all(event_log, 0) == []


async def test_read_returns_all_entries_when_the_last_append_is_large(event_log: EventLog) -> None:
    """A restore must see every entry even if the partition ends with one 1500-record batch
    (more than one read batch; on the embedded broker `end_offsets` is wrong there)."""
    await event_log.ensure(2)
    await event_log.append([(1, JournalEntry("", "claim", 1, b"{}"))])
    large = [entry(f"saga-{n % 37}", n) for n in range(1500)]
    offsets = await event_log.append([(1, e) for e in large])
    assert offsets == list(range(1, 1501))

    stored = await read_all(event_log, 1)

    assert len(stored) == 1501
    assert [s.offset for s in stored] == list(range(1501))
    assert [s.entry for s in stored[1:]] == large
