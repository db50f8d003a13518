"""The Transport contract, run against the in-memory transport and Kafka (embedded broker).

Group tests wait for conditions with deadlines: on the embedded broker a join takes about
half the session timeout (3 s with `KafkaSettings.embedded`), and a member that follows a
first-generation member waits for that member's session to expire (~7 s).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import aclosing

import anyio
import pytest

from sagakit import PartitionsLost, TopicMismatch, TransportError
from sagakit.transport import (
    Delivered,
    KafkaSettings,
    KafkaTransport,
    MemoryTransport,
    OutgoingRecord,
    Record,
    Subscription,
    TopicPartition,
    Transport,
    partition_for,
)

pytestmark = pytest.mark.anyio

IMPLEMENTATIONS = ["memory", pytest.param("kafka", marks=pytest.mark.kafka)]

# A join is ~half the session (3 s); after a first-generation member left, the next one
# waits for its session to expire first (~7 s). Kept well above both.
GROUP_DEADLINE = 20.0
POLL = 0.1


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def transport(impl: str, request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    """A started transport: a fresh MemoryTransport, or a KafkaTransport on the session broker."""
    if impl == "memory":
        async with MemoryTransport() as memory:
            yield memory
    else:
        settings: KafkaSettings = request.getfixturevalue("kafka_settings")
        async with KafkaTransport(settings) as kafka:
            yield kafka


# helpers -----------------------------------------------------------------------------------


async def read_all(
    transport: Transport, topic: str, partition: int, *, start: int = 0, max_records: int = 500
) -> list[Record]:
    records: list[Record] = []
    reader = transport.read(topic, partition, start=start, max_records=max_records)
    async with aclosing(reader) as batches:
        async for batch in batches:
            assert 0 < len(batch) <= max_records
            records.extend(batch)
    return records


async def collect(
    sub: Subscription, count: int, *, deadline: float = GROUP_DEADLINE
) -> list[Record]:
    """Fetch until at least `count` records arrived (joining the group on the way)."""
    got: list[Record] = []
    with anyio.fail_after(deadline):
        while len(got) < count:
            got.extend(await sub.getmany(timeout=POLL))
    return got


async def until_assigned(sub: Subscription, expected: frozenset[TopicPartition]) -> list[Record]:
    """Poll until the member owns exactly `expected`; the records fetched meanwhile."""
    got: list[Record] = []
    with anyio.fail_after(GROUP_DEADLINE):
        while sub.assignment() != expected:
            got.extend(await sub.getmany(timeout=POLL))
    return got


def offsets_by_partition(items: Iterable[Record | Delivered]) -> dict[int, list[int]]:
    """Offsets per partition number, in the order they came."""
    by_partition: dict[int, list[int]] = defaultdict(list)
    for item in items:
        by_partition[item.partition].append(item.offset)
    return dict(by_partition)


def tps(topic: str, partitions: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in range(partitions))


def to_partitions(topic: str, counts: Sequence[int]) -> list[OutgoingRecord]:
    """`counts[p]` records for each partition p, values naming partition and sequence."""
    return [
        OutgoingRecord(topic, f"k{p}-{i}".encode(), f"p{p}-{i}".encode(), partition=p)
        for p, n in enumerate(counts)
        for i in range(n)
    ]


class Recorder:
    """A RebalanceListener that keeps every callback in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[TopicPartition]]] = []

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self.events.append(("revoked", partitions))

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self.events.append(("assigned", partitions))


# topics ------------------------------------------------------------------------------------


async def test_ensure_topics_creates_topics_and_is_idempotent(
    transport: Transport, unique: str
) -> None:
    topics = {f"{unique}.inbox": 3, f"{unique}.journal": 3, f"{unique}.single": 1}
    await transport.ensure_topics(topics)
    await transport.ensure_topics(topics)
    await transport.ensure_topics({f"{unique}.inbox": 3})

    for name, partitions in topics.items():
        assert await transport.partition_count(name) == partitions
    delivered = await transport.send([OutgoingRecord(f"{unique}.inbox", b"k", b"v", partition=2)])
    assert delivered == [Delivered(f"{unique}.inbox", 2, 0)]


@pytest.mark.parametrize("wrong", [2, 4])
async def test_ensure_topics_rejects_another_partition_count(
    transport: Transport, unique: str, wrong: int
) -> None:
    topic = f"{unique}.inbox"
    await transport.ensure_topics({topic: 3})

    with pytest.raises(TopicMismatch, match=topic):
        await transport.ensure_topics({topic: wrong})
    assert await transport.partition_count(topic) == 3


# produce -----------------------------------------------------------------------------------


async def test_send_returns_deliveries_in_order_with_offsets_per_partition(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 3})
    first = [OutgoingRecord(topic, None, f"a{i}".encode(), partition=i % 3) for i in range(12)]
    second = [OutgoingRecord(topic, None, f"b{i}".encode(), partition=i % 3) for i in range(6)]

    d1 = await transport.send(first)
    d2 = await transport.send(second)

    assert [(d.topic, d.partition) for d in d1] == [(topic, i % 3) for i in range(12)]
    assert offsets_by_partition(d1) == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    assert offsets_by_partition(d2) == {0: [4, 5], 1: [4, 5], 2: [4, 5]}
    # each Delivered names where *its* record went
    stored = {
        (r.partition, r.offset): r.value
        for p in range(3)
        for r in await read_all(transport, topic, p)
    }
    for rec, d in zip([*first, *second], [*d1, *d2], strict=True):
        assert stored[(d.partition, d.offset)] == rec.value


async def test_same_key_lands_on_same_partition_number_in_co_partitioned_topics(
    transport: Transport, unique: str
) -> None:
    inbox, journal, partitions = f"{unique}.inbox", f"{unique}.journal", 8
    await transport.ensure_topics({inbox: partitions, journal: partitions})
    keys = [f"saga-{i:04d}-{unique}".encode() for i in range(200)]

    delivered = await transport.send(
        [OutgoingRecord(inbox, k, b"cmd") for k in keys]
        + [OutgoingRecord(journal, k, b"entry") for k in keys]
    )

    on_inbox, on_journal = delivered[: len(keys)], delivered[len(keys) :]
    expected = [partition_for(k, partitions) for k in keys]
    assert [d.partition for d in on_inbox] == expected
    assert [d.partition for d in on_journal] == expected
    assert len(set(expected)) == partitions  # the keys really spread out
    # and the records are stored where the deliveries say
    for p in range(partitions):
        stored = await read_all(transport, inbox, p)
        assert {r.key for r in stored} == {k for k, e in zip(keys, expected, strict=True) if e == p}


async def test_headers_keys_and_null_values_round_trip(transport: Transport, unique: str) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 1})
    headers = (
        ("message-id", b"saga-1:reserve:1"),
        ("binary", bytes(range(256))),
        ("dup", b"first"),
        ("dup", b"second"),
        ("n\u00e4me-\u00fc", "v\u00e4lue-\u20ac".encode()),
        ("empty", b""),
    )
    sent = [
        OutgoingRecord(topic, b"saga-1", b'{"a":1}', headers),
        OutgoingRecord(topic, b"saga-1", None),  # tombstone
        OutgoingRecord(topic, None, b"no key"),
        OutgoingRecord(topic, b"", b""),
        OutgoingRecord(topic, b"saga-2", None, (("only", b"\x00"),)),
        OutgoingRecord(topic, None, None),  # legal in Kafka: a dead letter of one keeps it
    ]
    await transport.send(sent)

    got = await read_all(transport, topic, 0)

    assert [(r.key, r.value, r.headers) for r in got] == [(s.key, s.value, s.headers) for s in sent]
    assert [r.offset for r in got] == [0, 1, 2, 3, 4, 5]


async def test_send_to_a_partition_the_topic_lacks_raises_transport_error(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 3})

    with pytest.raises(TransportError, match="partition"):
        await transport.send([OutgoingRecord(topic, b"k", b"v", partition=3)])


async def test_a_record_larger_than_a_batch_is_sent_and_one_over_the_limit_refused(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 1})
    big = b"b" * 600_000  # more than a producer batch (256 KiB), less than the limit
    await transport.send([OutgoingRecord(topic, b"k", b"small"), OutgoingRecord(topic, b"k", big)])
    assert [r.value for r in await read_all(transport, topic, 0)] == [b"small", big]
    too_big = b"x" * (transport.max_record_bytes + 1)
    with pytest.raises(TransportError, match=r"at most \d+ are allowed"):
        await transport.send(
            [OutgoingRecord(topic, b"k", b"first"), OutgoingRecord(topic, b"k", too_big)]
        )
    # all or nothing: the record before the refused one was not written either
    assert len(await read_all(transport, topic, 0)) == 2


async def test_a_send_to_a_topic_that_does_not_exist_fails_at_once(
    transport: Transport, unique: str
) -> None:
    # a metadata request would create it (Kafka's auto.create.topics.enable, Tansu always)
    # or wait for it for the whole request timeout: a reply-to naming nothing must not
    with anyio.fail_after(5), pytest.raises(TransportError, match="does not exist"):
        await transport.send([OutgoingRecord(f"{unique}.nowhere", b"k", b"v")])
    assert f"{unique}.nowhere" not in await transport.existing_topics()


# consume in groups -------------------------------------------------------------------------


async def test_subscription_delivers_everything_in_offset_order(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 4})
    sent = [OutgoingRecord(topic, f"saga-{i}".encode(), f"v{i}".encode()) for i in range(300)]
    first = await transport.send(sent[:150])

    async with transport.subscribe([topic], group_id=f"{unique}.g") as sub:
        got = await collect(sub, 150)
        second = await transport.send(sent[150:])
        got += await collect(sub, 150)
        got += await sub.getmany(timeout=0.3)  # nothing more: no duplicates

    assert sorted((r.key, r.value) for r in got) == sorted((s.key, s.value) for s in sent)
    assert offsets_by_partition(got) == {
        p: sorted(offs) for p, offs in offsets_by_partition([*first, *second]).items()
    }
    assert all(r.topic == topic for r in got)


async def test_next_member_resumes_after_commit_and_gets_uncommitted_records_again(
    transport: Transport, unique: str
) -> None:
    topic, group = f"{unique}.t", f"{unique}.g"
    await transport.ensure_topics({topic: 3})
    await transport.send(to_partitions(topic, [10, 10, 3]))
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async with transport.subscribe([topic], group_id=group) as first:
        fetched = await collect(first, 23)
        await first.commit({p0: 4, p1: 7})  # processed p0 up to 4, p1 up to 7, p2 nothing
        more = [OutgoingRecord(topic, b"k", f"late-{p}".encode(), partition=p) for p in (0, 1)]
        await transport.send(more * 5)
        fetched += await collect(first, 10)
        # ...and "crashes": everything after the commit was fetched but never committed
    assert offsets_by_partition(fetched) == {0: list(range(15)), 1: list(range(15)), 2: [0, 1, 2]}

    async with transport.subscribe([topic], group_id=group) as second:
        got = await collect(second, 11 + 8 + 3)
        got += await second.getmany(timeout=0.3)  # and nothing else

    assert offsets_by_partition(got) == {
        0: list(range(4, 15)),
        1: list(range(7, 15)),
        2: [0, 1, 2],
    }
    assert [r.value for r in got if r.partition == 1][:3] == [b"p1-7", b"p1-8", b"p1-9"]


async def test_two_members_split_the_partitions_and_listeners_see_the_rebalance(
    transport: Transport, unique: str
) -> None:
    topic, group = f"{unique}.t", f"{unique}.g"
    await transport.ensure_topics({topic: 4})
    everything = tps(topic, 4)
    rec_a, rec_b = Recorder(), Recorder()

    async with transport.subscribe([topic], group_id=group, listener=rec_a) as a:
        await until_assigned(a, everything)
        async with transport.subscribe([topic], group_id=group, listener=rec_b) as b:

            def settled() -> bool:
                mine, theirs = a.assignment(), b.assignment()
                return (
                    bool(mine)
                    and bool(theirs)
                    and not mine & theirs
                    and mine | theirs == everything
                    and rec_a.events[-1:] == [("assigned", mine)]
                    and rec_b.events[-1:] == [("assigned", theirs)]
                )

            with anyio.fail_after(GROUP_DEADLINE):
                while not settled():
                    await a.getmany(timeout=POLL)
                    await b.getmany(timeout=POLL)

            mine, theirs = a.assignment(), b.assignment()
            # a member may commit only what it owns
            await a.commit(dict.fromkeys(mine, 0))
            with pytest.raises(PartitionsLost):
                await a.commit({min(theirs): 0})
            with pytest.raises(PartitionsLost):
                await b.commit({min(mine): 0})

    # (aiokafka also reports an empty revocation before a first join; it carries nothing)
    a_events = [event for event in rec_a.events if event[1]]
    b_events = [event for event in rec_b.events if event[1]]
    assert a_events[0] == ("assigned", everything)
    # eager rebalance: the first member gives everything back before it gets its share
    assert next(e for e in a_events if e[0] == "revoked") == ("revoked", everything)
    assert a_events[-1] == ("assigned", mine)
    assert b_events[0][0] == "assigned"
    assert b_events[-1] == ("assigned", theirs)


async def test_pause_stops_and_resume_restarts_delivery_of_a_partition(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 2})
    p0 = TopicPartition(topic, 0)

    async with transport.subscribe([topic], group_id=f"{unique}.g") as sub:
        assert await until_assigned(sub, tps(topic, 2)) == []
        sub.pause([p0])
        await transport.send(to_partitions(topic, [5, 5]))

        while_paused = await collect(sub, 5)
        while_paused += await sub.getmany(timeout=0.3)
        assert offsets_by_partition(while_paused) == {1: [0, 1, 2, 3, 4]}

        sub.resume([p0])
        after_resume = await collect(sub, 5)

    assert offsets_by_partition(after_resume) == {0: [0, 1, 2, 3, 4]}


async def test_seek_rereads_from_the_given_offset(transport: Transport, unique: str) -> None:
    topic = f"{unique}.t"
    await transport.ensure_topics({topic: 1})
    await transport.send(to_partitions(topic, [10]))
    tp = TopicPartition(topic, 0)

    async with transport.subscribe([topic], group_id=f"{unique}.g") as sub:
        first = await collect(sub, 10)
        sub.seek(tp, 3)
        again = await collect(sub, 7)

    assert [r.offset for r in first] == list(range(10))
    assert [(r.offset, r.value) for r in again] == [(r.offset, r.value) for r in first[3:]]


async def test_commit_of_a_partition_not_assigned_raises_partitions_lost(
    transport: Transport, unique: str
) -> None:
    topic, other = f"{unique}.t", f"{unique}.other"
    await transport.ensure_topics({topic: 2, other: 2})

    async with transport.subscribe([topic], group_id=f"{unique}.g") as sub:
        await until_assigned(sub, tps(topic, 2))
        await sub.commit({TopicPartition(topic, 0): 0})  # an owned one is fine

        with pytest.raises(PartitionsLost):
            await sub.commit({TopicPartition(other, 0): 0})


# read single partitions to their end -------------------------------------------------------


async def test_read_returns_every_record_when_the_partition_ends_with_a_large_batch(
    transport: Transport, unique: str
) -> None:
    """1500 records in one produce batch, read 500 at a time: on the embedded broker
    `end_offsets` stops at the batch's base offset + 1, so an `end_offsets` loop loses 1000."""
    topic = f"{unique}.journal"
    await transport.ensure_topics({topic: 2})
    for i in range(3):
        await transport.send([OutgoingRecord(topic, b"small", f"s{i}".encode(), partition=0)])
    big = [OutgoingRecord(topic, b"big", f"b{i}".encode(), partition=0) for i in range(1500)]
    delivered = await transport.send(big)
    assert [d.offset for d in delivered] == list(range(3, 1503))

    got = await read_all(transport, topic, 0, max_records=500)

    assert [r.offset for r in got] == list(range(1503))
    assert [r.value for r in got[3:]] == [r.value for r in big]
    tail = await read_all(transport, topic, 0, start=1000, max_records=500)
    assert [r.offset for r in tail] == list(range(1000, 1503))


async def test_read_of_an_empty_partition_returns_nothing(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.journal"
    await transport.ensure_topics({topic: 2})
    await transport.send(to_partitions(topic, [3, 0]))

    assert await read_all(transport, topic, 1) == []


async def test_read_starts_at_the_given_offset(transport: Transport, unique: str) -> None:
    topic = f"{unique}.journal"
    await transport.ensure_topics({topic: 1})
    await transport.send(to_partitions(topic, [20]))

    from_seven = await read_all(transport, topic, 0, start=7, max_records=5)
    at_end = await read_all(transport, topic, 0, start=20)

    assert [r.offset for r in from_seven] == list(range(7, 20))
    assert [r.value for r in from_seven] == [f"p0-{i}".encode() for i in range(7, 20)]
    assert at_end == []


async def test_read_of_a_partition_the_topic_lacks_raises_transport_error(
    transport: Transport, unique: str
) -> None:
    topic = f"{unique}.journal"
    await transport.ensure_topics({topic: 2})

    with anyio.fail_after(3), pytest.raises(TransportError, match="partition"):
        await read_all(transport, topic, 2)


# which groups read a topic -------------------------------------------------------------------


async def test_topic_readers_are_the_groups_that_read_each_topic_even_after_they_left(
    transport: Transport, unique: str
) -> None:
    read_a, read_b, unread, missing = (f"{unique}.{t}" for t in ("a", "b", "unread", "nowhere"))
    group_a, group_b = f"{unique}.ga", f"{unique}.gb"
    await transport.ensure_topics({read_a: 2, read_b: 1, unread: 2})
    await transport.send(
        [OutgoingRecord(read_a, b"k", b"a", partition=1), OutgoingRecord(read_b, b"k", b"b")]
    )
    async with (
        transport.subscribe([read_a], group_id=group_a) as a,
        transport.subscribe([read_b], group_id=group_b) as b,
    ):
        for sub in (a, b):
            [record] = await collect(sub, 1)
            await sub.commit({record.tp: record.offset + 1})
        live = await transport.topic_readers([read_a, read_b, unread, missing])
    left = await transport.topic_readers([read_a, read_b])

    assert live[read_a] == {group_a}
    assert live[read_b] == {group_b}
    # nobody reads them: no group, or None from a broker that hides subscriptions
    assert live[unread] in (frozenset(), None)
    assert live[missing] in (frozenset(), None)
    assert missing not in await transport.existing_topics()  # asking created nothing
    # a reader that is down still reads its topic: its committed offsets say so
    assert left == {read_a: {group_a}, read_b: {group_b}}


async def test_topic_readers_see_a_member_before_its_first_commit_or_say_they_cannot_tell(
    transport: Transport, unique: str
) -> None:
    topic, other, group = f"{unique}.commands", f"{unique}.other", f"{unique}.g"
    await transport.ensure_topics({topic: 2, other: 2})
    async with transport.subscribe([topic], group_id=group) as sub:
        await until_assigned(sub, tps(topic, 2))
        readers = await transport.topic_readers([topic, other])

    # The embedded broker describes members without their subscriptions: it cannot tell.
    assert readers in ({topic: {group}, other: frozenset()}, {topic: None, other: None})
