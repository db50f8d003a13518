"""`Transport` on Apache Kafka (or any Kafka-compatible broker) through aiokafka."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import (
    ConsumerProtocol,
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as KafkaTP

from .._errors import PartitionsLost, TopicMismatch, TransportError
from . import _tolerant
from ._base import (
    Delivered,
    OutgoingRecord,
    RebalanceListener,
    Record,
    Subscription,
    TopicPartition,
    partition_for,
    record_size,
)
from ._diagnose import diagnose
from ._settings import KafkaSettings

__all__ = ["KafkaSettings", "KafkaSubscription", "KafkaTransport"]

log = logging.getLogger("sagakit.transport.kafka")

#: Room for a record batch's own header and a record's framing, beyond key, value, headers.
_BATCH_OVERHEAD = 512

_TOPIC_EXISTS = 36


def _member_topics(metadata: bytes, assignment: bytes) -> set[str] | None:
    """The topics a described group member subscribes to or is assigned, or None if the
    broker left them out (it does while a group rebalances; the embedded broker always)."""
    if not metadata:
        return None
    try:
        topics = set(ConsumerProtocolMemberMetadata.decode(metadata).subscription)
        if assignment:
            topics.update(
                t for t, _ in ConsumerProtocolMemberAssignment.decode(assignment).assignment
            )
    except Exception:  # not the consumer protocol's encoding
        return None
    return topics


def _record(msg: Any) -> Record:
    headers = msg.headers
    if headers and headers[0][0] is _tolerant.DEFECT:
        return Record(
            msg.topic,
            msg.partition,
            msg.offset,
            None,
            msg.value,
            (),
            msg.timestamp,
            defect=headers[0][1].decode(),
        )
    return Record(
        msg.topic,
        msg.partition,
        msg.offset,
        msg.key,
        msg.value,
        tuple(headers),
        msg.timestamp,
    )


class _ListenerAdapter(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's callbacks; aiokafka swallows listener errors, so we keep them."""

    def __init__(self, sub: KafkaSubscription, listener: RebalanceListener) -> None:
        self._sub = sub
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTP]) -> None:
        try:
            await self._listener.on_revoked(
                frozenset(TopicPartition(t.topic, t.partition) for t in revoked)
            )
        except Exception as exc:
            log.exception("rebalance listener failed on revoke")
            self._sub._failure = exc

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTP]) -> None:
        try:
            await self._listener.on_assigned(
                frozenset(TopicPartition(t.topic, t.partition) for t in assigned)
            )
        except Exception as exc:
            log.exception("rebalance listener failed on assign")
            self._sub._failure = exc


class KafkaSubscription:
    """A consumer-group member backed by an `AIOKafkaConsumer`."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._failure: Exception | None = None

    def _check(self) -> None:
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise TransportError(f"rebalance listener failed: {exc!r}") from exc

    async def getmany(self, *, timeout: float, max_records: int = 500) -> list[Record]:
        self._check()
        try:
            batches = await self._consumer.getmany(
                timeout_ms=int(timeout * 1000), max_records=max_records
            )
        except KafkaError as exc:
            raise TransportError(f"fetch failed: {exc!r}") from exc
        self._check()
        out: list[Record] = []
        for msgs in batches.values():
            out.extend(map(_record, msgs))
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        request = {
            KafkaTP(tp.topic, tp.partition): OffsetAndMetadata(off, "")
            for tp, off in offsets.items()
        }
        try:
            await self._consumer.commit(request)
        except (CommitFailedError, IllegalStateError) as exc:
            raise PartitionsLost(f"commit refused, partitions were reassigned: {exc}") from exc
        except KafkaError as exc:
            raise TransportError(f"commit failed: {exc!r}") from exc

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(TopicPartition(t.topic, t.partition) for t in self._consumer.assignment())

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        mine = self._consumer.assignment()
        tps = [KafkaTP(*tp) for tp in partitions if KafkaTP(*tp) in mine]
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        mine = self._consumer.assignment()
        tps = [KafkaTP(*tp) for tp in partitions if KafkaTP(*tp) in mine]
        if tps:
            self._consumer.resume(*tps)

    async def lag(self) -> dict[TopicPartition, int]:
        lags: dict[TopicPartition, int] = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched from it yet
            try:
                position = await self._consumer.position(tp)
            except (KafkaError, IllegalStateError):
                continue  # reassigned meanwhile
            lags[TopicPartition(tp.topic, tp.partition)] = max(0, highwater - position)
        return lags

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(KafkaTP(*partition), offset)
        except IllegalStateError as exc:
            raise TransportError(f"cannot seek {partition}: {exc}") from exc


class KafkaTransport:
    """Produce in batches, consume in groups with manual commits, replay partitions."""

    def __init__(self, settings: KafkaSettings | str) -> None:
        self.settings = KafkaSettings(settings) if isinstance(settings, str) else settings
        self.max_record_bytes = self.settings.max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._joined: Counter[str] = Counter()  # groups this transport's members are in
        _tolerant.install()  # no record a producer can write makes our consumers raise

    async def __aenter__(self) -> KafkaTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._producer is not None:
            return  # started already
        s = self.settings
        producer = AIOKafkaProducer(
            **s.client_options(),
            acks=s.acks,
            linger_ms=s.linger_ms,
            max_batch_size=s.max_batch_size,
            max_request_size=s.max_request_size,
            enable_idempotence=False,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise TransportError(
                f"cannot connect to Kafka at {s.describe()}: {await diagnose(s)}"
            ) from exc
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await producer.stop()

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise TransportError("KafkaTransport is not started (use `async with` or start())")
        return self._producer

    # admin --------------------------------------------------------------
    @asynccontextmanager
    async def _admin(self) -> AsyncIterator[Any]:
        admin = AIOKafkaAdminClient(**self.settings.client_options())
        try:
            await admin.start()
        except KafkaError as exc:
            reason = await diagnose(self.settings)
            raise TransportError(
                f"cannot reach Kafka's admin API at {self.settings.describe()}: {reason}"
            ) from exc
        try:
            yield admin
        finally:
            with anyio.CancelScope(shield=True):
                await admin.close()

    async def ensure_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Create what is missing (with its `configs`), then check every partition count.

        Unknown topics are only ever described after creation: a metadata request
        for an unknown topic auto-creates it with the broker's default count.
        """
        configs = configs or {}
        async with self._admin() as admin:
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(n, p, 1, topic_configs=dict(configs.get(n, {})))
                for n, p in topics.items()
                if n not in existing
            ]
            if missing:
                response = await admin.create_topics(missing)
                for err in getattr(response, "topic_errors", []):
                    name, code = err[0], err[1]
                    if code not in (0, _TOPIC_EXISTS):
                        raise TransportError(f"creating topic {name!r} failed with error {code}")
            described = await admin.describe_topics(list(topics))
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        for name, wanted in topics.items():
            if counts.get(name) != wanted:
                raise TopicMismatch(
                    f"topic {name!r} has {counts.get(name)} partitions, {wanted} are required; "
                    "partitions cannot be added later, so recreate the topic"
                )

    async def existing_topics(self) -> dict[str, int]:
        async with self._admin() as admin:
            names = [n for n in await admin.list_topics() if not n.startswith("__")]
            described = await admin.describe_topics(names) if names else []
        return {d["topic"]: len(d["partitions"]) for d in described}

    async def partition_count(self, topic: str) -> int:
        return await self._partitions(topic)

    # produce ------------------------------------------------------------
    async def _check_partition(self, topic: str, partition: int) -> None:
        count = await self._partitions(topic)
        if not 0 <= partition < count:
            raise TransportError(f"topic {topic!r} has no partition {partition} (it has {count})")

    async def send(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        """Build one record batch per partition and hand them to the producer together.

        Appending to a batch builder costs about half the client CPU of `producer.send`
        per record; order within a partition is kept, and each record's offset is its
        batch's base offset plus its index in the batch. A record with neither key nor
        value is legal in Kafka and is sent as it is; one that does not fit a batch goes
        in a batch of its own, up to `max_record_bytes`.
        """
        producer = self._require_producer()
        counts: dict[str, int] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        batches: list[tuple[str, int, Any]] = []  # in the order they were opened
        placed: list[tuple[int, int]] = []  # per record: (batch number, index in it)
        sizes: list[int] = []
        numbers: dict[int, int] = {}
        for r in records:
            size = record_size(r)
            if size > self.max_record_bytes:
                raise TransportError(
                    f"a record for {r.topic!r} has {size} bytes; at most "
                    f"{self.max_record_bytes} are allowed (KafkaSettings.max_request_size)"
                )
            if r.topic not in counts:
                counts[r.topic] = await self._partitions(r.topic)
            n = counts[r.topic]
            if r.partition is not None:
                if not 0 <= r.partition < n:
                    raise TransportError(
                        f"topic {r.topic!r} has no partition {r.partition} (it has {n})"
                    )
                partition = r.partition
            elif r.key is not None:
                partition = partition_for(r.key, n)
            else:
                partition = random.randrange(n)
            builder = open_batches.get((r.topic, partition))
            appended = None
            if builder is not None:
                appended = builder.append(
                    key=r.key, value=r.value, timestamp=None, headers=list(r.headers)
                )
            if appended is None:  # no batch yet for this partition, or it is full
                builder = open_batches[(r.topic, partition)] = self._new_batch(size)
                numbers[id(builder)] = len(batches)
                batches.append((r.topic, partition, builder))
                sizes.append(0)
                appended = builder.append(
                    key=r.key, value=r.value, timestamp=None, headers=list(r.headers)
                )
                if appended is None:
                    raise TransportError(f"a record for {r.topic!r} does not fit a record batch")
            number = numbers[id(builder)]
            placed.append((number, sizes[number]))
            sizes[number] += 1
        try:
            futures = [
                await producer.send_batch(builder, topic, partition=partition)
                for topic, partition, builder in batches
            ]
            bases = [await f for f in futures]
        except (KafkaError, AssertionError) as exc:
            raise TransportError(f"produce failed: {exc!r}") from exc
        return [
            Delivered(batches[number][0], batches[number][1], bases[number].offset + index)
            for number, index in placed
        ]

    def _new_batch(self, record_bytes: int) -> Any:
        if record_bytes + _BATCH_OVERHEAD <= self.settings.max_batch_size:
            return self._require_producer().create_batch()
        return BatchBuilder(record_bytes + _BATCH_OVERHEAD, 0, is_transactional=False)

    async def _partitions(self, topic: str) -> int:
        """The partition count of an existing topic; never creates one.

        A metadata request for an unknown topic makes Tansu (and Kafka with
        auto.create.topics.enable) create it, and aiokafka waits for it for the whole
        request timeout otherwise: a send to a topic nobody created is an error at once.
        """
        producer = self._require_producer()
        known = producer.client.cluster.partitions_for_topic(topic)
        if not known:
            if topic not in await self._topic_names():
                raise TransportError(f"topic {topic!r} does not exist; create it first")
            known = await producer.partitions_for(topic)
        return len(known)

    async def _topic_names(self) -> frozenset[str]:
        async with self._admin() as admin:
            return frozenset(await admin.list_topics())

    # consume ------------------------------------------------------------
    def _consumer(self, group_id: str | None, **extra: Any) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **s.client_options(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            **extra,
        )

    @asynccontextmanager
    async def subscribe(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        listener: RebalanceListener | None = None,
    ) -> AsyncIterator[Subscription]:
        consumer = self._consumer(group_id)
        sub = KafkaSubscription(consumer)
        adapter = _ListenerAdapter(sub, listener) if listener is not None else None
        try:
            await consumer.start()
            consumer.subscribe(list(topics), listener=adapter)
        except KafkaError as exc:
            with anyio.CancelScope(shield=True):
                await consumer.stop()
            raise TransportError(f"cannot join group {group_id!r}: {exc!r}") from exc
        self._joined[group_id] += 1
        try:
            yield sub
        finally:
            self._joined[group_id] -= 1
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()

    async def topic_readers(self, topics: Sequence[str]) -> dict[str, frozenset[str] | None]:
        """Live groups by their members' subscriptions and assignments (DescribeGroups);
        groups without members, or whose members come without them, by their committed
        offsets (OffsetFetch for the partitions of `topics`).

        A broker may list only the groups that have committed offsets (the embedded one
        does), so the groups this transport is a member of are described too: when even
        those come without subscriptions, the broker hides them.
        """
        wanted = list(dict.fromkeys(topics))
        found: dict[str, set[str]] = {t: set() for t in wanted}
        hidden = False
        mine = {g for g, members in self._joined.items() if members > 0}
        try:
            async with self._admin() as admin:
                listed = {
                    group
                    for group, protocol_type in await admin.list_consumer_groups()
                    if protocol_type in (ConsumerProtocol.PROTOCOL_TYPE, "")
                }
                unseen: list[str] = []  # groups to judge by their committed offsets
                for one in sorted(listed | mine):
                    # one group per request: the embedded broker garbles a reply on several
                    [response] = await admin.describe_consumer_groups([one])
                    for described in response.groups:
                        # error_code, group, state, protocol_type, protocol, members, ...
                        error_code, group, protocol_type = described[0], described[1], described[3]
                        members = described[5]
                        if error_code or protocol_type != ConsumerProtocol.PROTOCOL_TYPE:
                            continue
                        read = [_member_topics(m[3], m[4]) for m in members]
                        subscribed: set[str] = set().union(*(r for r in read if r))
                        for topic in subscribed & found.keys():
                            found[topic].add(group)
                        if not members or None in read:
                            unseen.append(group)
                            hidden = hidden or bool(members) or group in mine
                partitions = await self._partitions_of(admin, wanted)
                for group in unseen if partitions else []:
                    offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
                    for tp, committed in offsets.items():
                        if committed.offset >= 0 and tp.topic in found:
                            found[tp.topic].add(group)
        except KafkaError as exc:
            raise TransportError(f"learning which groups read {wanted} failed: {exc!r}") from exc
        return {t: frozenset(g) if g or not hidden else None for t, g in found.items()}

    @staticmethod
    async def _partitions_of(admin: Any, topics: Sequence[str]) -> list[KafkaTP]:
        """Every partition of those `topics` that exist (never describing one that does not:
        that would create it)."""
        existing = sorted(set(await admin.list_topics()) & set(topics))
        described = await admin.describe_topics(existing) if existing else []
        return [KafkaTP(d["topic"], p["partition"]) for d in described for p in d["partitions"]]

    async def group_lag(
        self, group_id: str, topics: Sequence[str], *, timeout: float = 10.0
    ) -> dict[TopicPartition, int]:
        """Records of `topics` the group has not committed yet, per partition.

        Read without joining the group: its committed offsets, and each partition's
        high-watermark from a fetch response (never ``end_offsets``, which some brokers
        get wrong after multi-record batches).
        """
        counts = {t: await self._partitions(t) for t in topics}
        tps = [KafkaTP(t, p) for t, n in counts.items() for p in range(n)]
        consumer = self._consumer(group_id)
        try:
            await consumer.start()
            consumer.assign(tps)
            committed = {}
            for tp in tps:
                committed[tp] = await consumer.committed(tp) or 0
                consumer.seek(tp, committed[tp])
            with anyio.fail_after(timeout):
                while any(consumer.highwater(tp) is None for tp in tps):
                    await consumer.getmany(*tps, timeout_ms=50, max_records=1)
            return {
                TopicPartition(tp.topic, tp.partition): max(
                    0, consumer.highwater(tp) - committed[tp]
                )
                for tp in tps
            }
        except (KafkaError, TimeoutError) as exc:
            raise TransportError(f"reading the lag of group {group_id!r} failed: {exc!r}") from exc
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()

    async def read(
        self, topic: str, partition: int, *, start: int = 0, max_records: int = 500
    ) -> AsyncGenerator[list[Record], None]:
        """Read to the fetch high-watermark, not to ``end_offsets``.

        ``end_offsets`` (and ``seek_to_end``) can be short of the real end after
        multi-record batches on some brokers; the high-watermark that comes with
        every fetch response is right.
        """
        await self._check_partition(topic, partition)
        tp = KafkaTP(topic, partition)
        consumer = self._consumer(None)
        try:
            await consumer.start()
            consumer.assign([tp])
            consumer.seek(tp, start)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=200, max_records=max_records)
                msgs = batches.get(tp, [])
                if msgs:
                    yield [_record(m) for m in msgs]
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    return
        except KafkaError as exc:
            raise TransportError(f"reading {topic}[{partition}] failed: {exc!r}") from exc
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()
