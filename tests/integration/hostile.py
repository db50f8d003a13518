"""Records of every shape Kafka allows, written the way an adversary with produce access
would write them: raw aiokafka batches, bypassing everything sagakit checks on send."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from sagakit import Envelope
from sagakit.transport import partition_for


class RawName(str):
    """A header name that encodes to bytes that are not UTF-8 (legal on the wire)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe" + str.encode(self)


@dataclass(frozen=True)
class Shape:
    """One hostile record: what it looks like, and a word the dead letter's reason names."""

    name: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    reason: str


def envelope(saga_id: str, message_type: str, **extra: str) -> tuple[tuple[str, bytes], ...]:
    env = Envelope(
        message_id=f"{saga_id}:hostile",
        message_type=message_type,
        saga_id=saga_id,
        correlation_id=saga_id,
        causation_id=saga_id,
        **extra,  # type: ignore[arg-type]
    )
    return tuple(env.to_headers())


def shapes(message_type: str, **extra: str) -> list[Shape]:
    """The hostile shapes, each a valid-looking record but for one defect; each has a key
    of its own (but the first, which has none) to find its dead letter by."""

    def ok(saga_id: str) -> tuple[tuple[str, bytes], ...]:
        return envelope(saga_id, message_type, **extra)

    return [
        Shape("no key, no value, no headers", None, None, (), "lacks required header"),
        Shape("no headers", b"h-1", b"{}", (), "lacks required header"),
        Shape(
            "header name not UTF-8",
            b"h-2",
            b"{}",
            (*ok("h-2"), (RawName("x-evil"), b"1")),
            "not UTF-8",
        ),
        Shape(
            "header value not UTF-8",
            b"h-3",
            b"{}",
            tuple((n, b"\xff\xfe" if n == "saga-id" else v) for n, v in ok("h-3")),
            "not UTF-8",
        ),
        Shape("empty value", b"h-4", b"", ok("h-4"), "not JSON"),
        Shape("null value", b"h-5", None, ok("h-5"), "has no value"),
        Shape("oversized value", b"h-6", b"x" * 1_500_000, ok("h-6"), "not JSON"),
        Shape("key is not the saga id", b"someone-else", b"{}", ok("h-7"), "is not its saga-id"),
    ]


class HostileProducer:
    """Produces records exactly as given, one batch per record."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=4_000_000
        )

    async def __aenter__(self) -> HostileProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, shapes: Sequence[Shape]) -> None:
        partitions = len(await self._producer.partitions_for(topic))
        for shape in shapes:
            await self.send_raw(
                topic,
                shape.key,
                shape.value,
                list(shape.headers),
                partition=partition_for(shape.key, partitions) if shape.key else 0,
            )

    async def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
        *,
        partition: int = 0,
        corrupt: bool = False,
    ) -> None:
        size = len(key or b"") + len(value or b"") + 4096
        batch = BatchBuilder(size, 0, is_transactional=False)
        # the pure-Python builder writes header names through str.encode, which RawName
        # overrides; aiokafka's C builder would refuse them
        batch._builder = _CorruptingBuilder(corrupt, size)
        assert batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
        future = await self._producer.send_batch(batch, topic, partition=partition)
        await future


class _CorruptingBuilder(_DefaultRecordBatchBuilderPy):
    """Builds the batch, then (if asked) flips a byte of the records after the CRC."""

    def __init__(self, corrupt: bool, size: int) -> None:
        super().__init__(
            magic=2,
            compression_type=0,
            is_transactional=False,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=size,
        )
        self._corrupt = corrupt

    def build(self) -> bytearray:
        data = super().build()
        if self._corrupt:
            data[-1] ^= 0xFF
        return data
