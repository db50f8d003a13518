"""The yardstick: raw aiokafka on the same broker, with the client settings sagakit uses.

Two figures every saga figure is divided by:

- the two-hop round trip (produce → consume → produce → consume, one message in flight),
  which is what one saga step costs at best (its command, then its reply);
- raw throughput, batched: messages per second produced (acks from the broker) and
  consumed, with records of about the size and header count of sagakit's.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from .._flows import percentiles
from ..transport.kafka import KafkaSettings, KafkaTransport

ProgressFn = Callable[[str, float, float], None]

#: Headers like the envelope of a sagakit command (names and rough value sizes).
HEADER_NAMES = (
    "message-id",
    "message-type",
    "saga-id",
    "saga-type",
    "saga-version",
    "correlation-id",
    "causation-id",
    "reply-to",
)
VALUE_BYTES = 200


@dataclass(frozen=True, slots=True)
class Baseline:
    """Raw aiokafka on one broker: the round trip and the batched message rates."""

    round_trip_ms: dict[str, float]
    round_trips: int
    produce_msgs_per_s: float
    consume_msgs_per_s: float
    messages: int
    record_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def producer_for(settings: KafkaSettings) -> AIOKafkaProducer:
    """A producer configured as `KafkaTransport` configures its own."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-baseline",
        acks=settings.acks,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.max_batch_size,
        request_timeout_ms=settings.request_timeout_ms,
        enable_idempotence=False,
    )


def consumer_for(settings: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer with sagakit's fetch settings, manually assigned (no group to join)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-baseline",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        request_timeout_ms=settings.request_timeout_ms,
    )


def sample_record(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) shaped like a saga command: a saga-id key, ~200 B of JSON."""
    key = f"bench-{i:08d}".encode()
    value = (b'{"order_id":"' + key + b'","pad":"').ljust(VALUE_BYTES - 2, b"x") + b'"}'
    headers = [(name, f"{key.decode()}:{name}".encode()) for name in HEADER_NAMES]
    return key, value, headers


def record_size(i: int = 0) -> int:
    key, value, headers = sample_record(i)
    return len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)


async def skip_to_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    """Read past every record `tp` holds now (the fetch's high-watermark is its end: the
    embedded broker's ListOffsets is not, after batched produce requests)."""
    if (await consumer.end_offsets([tp]))[tp] == 0:
        return  # empty
    with anyio.fail_after(120):
        while True:
            await consumer.getmany(tp, timeout_ms=100, max_records=10_000)
            mark = consumer.highwater(tp)
            if mark is not None and await consumer.position(tp) >= mark:
                return


async def round_trips(
    settings: KafkaSettings,
    ping: str,
    pong: str,
    count: int,
    warmup: int,
    *,
    from_end: bool = False,
) -> list[float]:
    """Latencies (ms) of `count` two-hop round trips after `warmup` unmeasured ones;
    `from_end`: on topics that hold records already (read past them first)."""
    producer = producer_for(settings)
    bouncer, receiver = consumer_for(settings), consumer_for(settings)
    await producer.start()
    await bouncer.start()
    await receiver.start()
    try:
        bouncer.assign([TopicPartition(ping, 0)])
        receiver.assign([TopicPartition(pong, 0)])
        if from_end:
            await skip_to_end(bouncer, TopicPartition(ping, 0))
            await skip_to_end(receiver, TopicPartition(pong, 0))

        async def bounce() -> None:
            while True:
                batches = await bouncer.getmany(timeout_ms=1000)
                futures = [
                    await producer.send(pong, m.value, key=m.key, headers=list(m.headers))
                    for msgs in batches.values()
                    for m in msgs
                ]
                if futures:
                    await asyncio.gather(*futures)

        latencies: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(bounce)
            for i in range(warmup + count):
                key, value, headers = sample_record(i)
                started = time.perf_counter()
                await producer.send(ping, value, key=key, headers=headers)
                with anyio.fail_after(10):
                    await receiver.getone()
                if i >= warmup:
                    latencies.append((time.perf_counter() - started) * 1000)
            tg.cancel_scope.cancel()
        return latencies
    finally:
        with anyio.CancelScope(shield=True):
            await receiver.stop()
            await bouncer.stop()
            await producer.stop()


async def produce_rate(settings: KafkaSettings, topic: str, count: int) -> float:
    """Messages per second produced in batches, until the broker acknowledged the last."""
    producer = producer_for(settings)
    await producer.start()
    try:
        records = [sample_record(i) for i in range(count)]
        started = time.perf_counter()
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        with anyio.CancelScope(shield=True):
            await producer.stop()


async def consume_rate(settings: KafkaSettings, topic: str, partitions: int, count: int) -> float:
    """Messages per second consumed from the beginning of `topic` until `count` arrived."""
    consumer = consumer_for(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        received = 0
        started = time.perf_counter()
        with anyio.fail_after(60):
            while received < count:
                batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
                received += sum(len(msgs) for msgs in batches.values())
        return count / (time.perf_counter() - started)
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()


async def measure_baseline(
    settings: KafkaSettings,
    *,
    partitions: int = 8,
    round_trip_count: int = 200,
    warmup: int = 20,
    messages: int = 20_000,
    progress: ProgressFn | None = None,
) -> Baseline:
    """Measure the raw figures on fresh topics of the broker `settings` points at."""
    run = f"bench-raw-{uuid.uuid4().hex[:8]}-{os.getpid()}"
    ping, pong, bulk = f"{run}.ping", f"{run}.pong", f"{run}.bulk"
    async with KafkaTransport(settings) as transport:
        await transport.ensure_topics({ping: 1, pong: 1, bulk: partitions})
    if progress:
        progress("baseline: round trips", 0, 3)
    latencies = await round_trips(settings, ping, pong, round_trip_count, warmup)
    if progress:
        progress("baseline: produce", 1, 3)
    produced = await produce_rate(settings, bulk, messages)
    if progress:
        progress("baseline: consume", 2, 3)
    consumed = await consume_rate(settings, bulk, partitions, messages)
    return Baseline(
        round_trip_ms=percentiles(latencies),
        round_trips=len(latencies),
        produce_msgs_per_s=round(produced, 1),
        consume_msgs_per_s=round(consumed, 1),
        messages=messages,
        record_bytes=record_size(),
    )
