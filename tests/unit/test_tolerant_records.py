"""The record decoder our consumers use never raises on what a producer wrote: header names
that are not UTF-8 are kept escaped, undecodable batches become one defect record."""

from __future__ import annotations

from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from sagakit.transport._tolerant import DEFECT, TolerantRecords


class RawName(str):
    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff" + str.encode(self)


def batch(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]], *, gzip: bool = False
) -> bytearray:
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=1 if gzip else 0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value, headers) in enumerate(records):
        builder.append(offset, timestamp=1000 + offset, key=key, value=value, headers=headers)
    return builder.build()


def decoded(data: bytes) -> list[object]:
    records = TolerantRecords(data)
    out: list[object] = []
    while records.has_next():
        out.extend(records.next_batch() or [])
    return out


def test_good_batches_decode_as_aiokafka_decodes_them() -> None:
    data = bytes(batch([(b"k", b"v", [("a", b"1")]), (None, None, [])]))
    got = decoded(data)
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in got] == [  # type: ignore[attr-defined]
        (0, b"k", b"v", [("a", b"1")]),
        (1, None, None, []),
    ]


def test_a_header_name_that_is_not_utf8_is_kept_escaped_and_the_rest_of_the_batch_too() -> None:
    for gzip in (False, True):
        data = bytes(
            batch(
                [(b"k0", b"v0", []), (b"k1", b"v1", [(RawName("x"), b"1")]), (b"k2", b"v2", [])],
                gzip=gzip,
            )
        )
        got = decoded(data)
        assert [r.key for r in got] == [b"k0", b"k1", b"k2"]  # type: ignore[attr-defined]
        name = got[1].headers[0][0]  # type: ignore[attr-defined]
        assert name.encode("utf-8", "surrogateescape") == b"\xffx"


def test_a_corrupt_batch_is_one_defect_record_at_its_last_offset() -> None:
    data = batch([(b"k0", b"v0", []), (b"k1", b"v1", [])])
    data[-1] ^= 0xFF  # the CRC no longer matches
    [defect] = decoded(bytes(data))
    assert defect.offset == 1  # type: ignore[attr-defined]
    assert defect.headers[0][0] is DEFECT  # type: ignore[attr-defined]
    assert b"CRC" in defect.headers[0][1]  # type: ignore[attr-defined]


def test_garbage_after_a_good_batch_is_a_defect_not_an_error() -> None:
    good = bytes(batch([(b"k0", b"v0", [])]))
    garbage = bytearray(good)
    garbage[16] = 9  # an unknown record format (magic byte)
    got = decoded(good + bytes(garbage))
    assert got[0].key == b"k0"  # type: ignore[attr-defined]
    assert got[1].headers[0][0] is DEFECT  # type: ignore[attr-defined]


def test_a_partial_batch_at_the_end_of_a_fetch_is_left_for_the_next_fetch() -> None:
    good = bytes(batch([(b"k0", b"v0", [])]))
    assert [r.key for r in decoded(good + good[:20])] == [b"k0"]  # type: ignore[attr-defined]
