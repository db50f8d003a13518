"""Record batches that never raise on what a producer put in them.

aiokafka decodes every header name as UTF-8 while it hands records over; one record
whose header name is not UTF-8 (legal in Kafka: names are bytes on the wire), a batch
with a bad CRC or a compression codec this process lacks makes ``getmany`` raise, and
the consumer fetches the same batch again on every call: one record stops a partition
for good. aiokafka's fetcher is given `TolerantRecords` instead of its ``MemoryRecords``:
batches are decoded by aiokafka's own (C) code as before, and only a batch that fails is
decoded again here, record by record, with header names decoded leniently (invalid
bytes kept as surrogate escapes, which `Envelope.from_headers` then refuses). What
cannot be decoded at all comes out as one *defect* record at the batch's first offset,
marked with `DEFECT` as its only header name (an object no broker can send), so the
consumer dead-letters it with the reason and moves past the batch.

The patch is process-wide (`install()`), and it only ever turns a raise into records.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from aiokafka.consumer import fetcher as _fetcher
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

_LOG_OVERHEAD = 12  # base offset (int64) + batch length (int32)
_MAGIC_OFFSET = 16  # ... + partition leader epoch (int32)
_MIN_BATCH = 26  # the smallest legacy record a broker may return


class _DefectName(str):
    """The header name of a defect record: a distinct object, compared by identity."""

    __slots__ = ()


DEFECT = _DefectName("sagakit-defect")


class _Record:
    """A record as aiokafka's fetcher reads it (the attributes it uses)."""

    __slots__ = ("headers", "key", "offset", "timestamp", "timestamp_type", "value")
    checksum = None

    def __init__(
        self,
        offset: int,
        timestamp: int,
        timestamp_type: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
    ) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.key = key
        self.value = value
        self.headers = headers


def defect(offset: int, reason: str, raw: bytes) -> _Record:
    """A stand-in for records that could not be decoded: their raw bytes and why.

    It takes the batch's last offset, so the consumer's position moves past the batch
    whatever offset inside it the fetch started from.
    """
    return _Record(offset, -1, 0, None, raw, [(DEFECT, reason.encode())])


class _TolerantBatch:
    """One batch: aiokafka's decoding first, this module's if that raises."""

    __slots__ = ("_inner", "_raw")

    def __init__(self, inner: Any, raw: bytes) -> None:
        self._inner = inner
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def validate_crc(self) -> bool:
        return True  # checked in __iter__, where a bad batch becomes a defect record

    def __iter__(self) -> Iterator[Any]:
        inner = self._inner
        try:
            if not inner.validate_crc():
                return iter([defect(_last(inner), "record batch fails its CRC", self._raw)])
            return iter(list(inner))
        except Exception as exc:
            return iter(self._salvage(exc))

    def _salvage(self, first_error: Exception) -> list[Any]:
        last = _last(self._inner)
        if self._inner.magic != 2:
            return [
                defect(
                    last,
                    f"record batch of format {self._inner.magic} does not decode: {first_error!r}",
                    self._raw,
                )
            ]
        try:
            return list(_lenient_records(self._raw))
        except Exception as exc:
            return [defect(last, f"record batch does not decode: {exc!r}", self._raw)]


def _last(batch: Any) -> int:
    """The batch's last offset: at or after any offset a fetch can start from inside it."""
    try:
        return max(int(batch.base_offset), int(batch.next_offset) - 1)
    except Exception:
        return int(batch.base_offset)


def _lenient_records(raw: bytes) -> Iterator[_Record]:
    """The records of a v2 batch, header names decoded with surrogate escapes."""
    batch = _DefaultRecordBatchPy(raw)
    batch._maybe_uncompress()
    buffer: bytearray = batch._buffer
    pos: int = batch._pos
    for _ in range(batch._num_records):
        length, pos = decode_varint(buffer, pos)
        start = pos
        _, pos = decode_varint(buffer, pos)  # attributes
        ts_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _nullable(buffer, pos)
        value, pos = _nullable(buffer, pos)
        count, pos = decode_varint(buffer, pos)
        if count < 0:
            raise ValueError(f"negative header count {count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name_len, pos = decode_varint(buffer, pos)
            if name_len < 0:
                raise ValueError(f"negative header name length {name_len}")
            name = bytes(buffer[pos : pos + name_len]).decode("utf-8", "surrogateescape")
            pos += name_len
            header_value, pos = _nullable(buffer, pos)
            headers.append((name, header_value))
        if pos - start != length:
            raise ValueError(f"record length {length} but {pos - start} bytes read")
        timestamp = (
            batch.max_timestamp
            if batch.timestamp_type == batch.LOG_APPEND_TIME
            else batch.first_timestamp + ts_delta
        )
        yield _Record(
            batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value, headers
        )


def _nullable(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buffer, pos)
    if size < 0:
        return None, pos
    if pos + size > len(buffer):
        raise ValueError("field runs past the end of the batch")
    return bytes(buffer[pos : pos + size]), pos + size


class TolerantRecords:
    """aiokafka's ``MemoryRecords`` interface over the bytes of one fetch response."""

    __slots__ = ("_data", "_next", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._next: bytes | None = None
        self._cache_next()

    def _cache_next(self) -> None:
        data, pos = self._data, self._pos
        self._next = None
        if len(data) - pos < _LOG_OVERHEAD:
            return
        (length,) = struct.unpack_from(">i", data, pos + 8)
        end = pos + _LOG_OVERHEAD + length
        if length < 0 or end > len(data):
            return  # a partial batch at the end of a fetch: fetched again later
        self._next = bytes(data[pos:end])
        self._pos = end

    def size_in_bytes(self) -> int:
        return len(self._data)

    def has_next(self) -> bool:
        return self._next is not None

    def next_batch(self) -> _TolerantBatch | None:
        raw = self._next
        if raw is None:
            return None
        self._cache_next()
        (base,) = struct.unpack_from(">q", raw, 0)
        if len(raw) < _MIN_BATCH or raw[_MAGIC_OFFSET] > 2:
            return _TolerantBatch(_Opaque(base, raw), raw)
        inner = MemoryRecords(raw).next_batch()
        return _TolerantBatch(inner, raw)


class _Opaque:
    """A batch too short or of an unknown format: one defect, then the next batch."""

    def __init__(self, base: int, raw: bytes) -> None:
        self.base_offset = base
        self.magic = raw[_MAGIC_OFFSET] if len(raw) > _MAGIC_OFFSET else -1
        self.next_offset = base + 1
        self.is_control_batch = False
        self.is_transactional = False
        self.producer_id = None
        self._raw = raw

    def validate_crc(self) -> bool:
        return True

    def __iter__(self) -> Iterator[_Record]:
        raise ValueError(f"record batch of {len(self._raw)} bytes, magic {self.magic}")


def install() -> None:
    """Make aiokafka's fetcher decode through `TolerantRecords` (idempotent)."""
    _fetcher.MemoryRecords = TolerantRecords
