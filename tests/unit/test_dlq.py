"""Dead letters: the reason and the origin cannot be forged, what is too large is kept in
part, and a replay goes only back to where the record came from."""

from __future__ import annotations

import hashlib

import pytest

from sagakit import MemoryTransport, Record
from sagakit._dlq import DeadLetter, NotReplayable, dead_letter
from sagakit._inspect import replay_dead_letters

pytestmark = pytest.mark.anyio

FORGED = (
    ("message-id", b"m-1"),
    ("error-type", b"Harmless"),
    ("error-message", b"nothing to see"),
    ("original-topic", b"shop.journal"),
    ("original-partition", b"3"),
    ("dlq-truncated", b"value"),
)


def record(topic: str = "shop.commands", value: bytes | None = b"{}", **kw: object) -> Record:
    fields: dict[str, object] = {
        "topic": topic,
        "partition": 1,
        "offset": 42,
        "key": b"s-1",
        "value": value,
        "headers": FORGED,
        "timestamp_ms": 7,
    }
    fields.update(kw)
    return Record(**fields)  # type: ignore[arg-type]


def read_back(out: object) -> DeadLetter:
    from sagakit import OutgoingRecord

    assert isinstance(out, OutgoingRecord)
    return DeadLetter.of(Record(out.topic, 0, 0, out.key, out.value, out.headers, 0))


def test_the_original_headers_cannot_pass_for_the_reason_or_the_origin() -> None:
    letter = read_back(dead_letter(record(), "DecodeError", "value is not JSON", consumer="pay"))
    assert letter.error_type == "DecodeError"
    assert letter.error_message == "value is not JSON"
    assert letter.original_topic == "shop.commands"
    assert (letter.original_partition, letter.original_offset) == (1, 42)
    assert letter.consumer == "pay"
    assert letter.truncated == ()
    # the sender's headers are all kept, renamed, in order
    assert letter.original_headers == FORGED
    assert letter.message_id == "m-1"


def test_a_value_too_large_is_truncated_with_its_hash_and_size() -> None:
    big = b"v" * 2_000_000
    out = dead_letter(record(value=big), "DecodeError", "too big")
    letter = read_back(out)
    assert letter.truncated == ("value",)
    assert out.value is not None and len(out.value) < len(big)
    headers = dict(out.headers)
    assert headers["dlq-value-bytes"] == b"2000000"
    assert headers["dlq-value-sha256"] == hashlib.sha256(big).hexdigest().encode()


def test_header_names_that_are_not_utf8_are_kept_escaped() -> None:
    name = b"\xff\xfex".decode("utf-8", "surrogateescape")
    out = dead_letter(record(headers=((name, b"1"),)), "DecodeError", "not UTF-8")
    for header_name, _ in out.headers:
        header_name.encode()  # every name can be produced
    assert read_back(out).original_headers == (("\\xff\\xfex", b"1"),)


def test_a_null_record_becomes_a_dead_letter_with_neither_key_nor_value() -> None:
    out = dead_letter(record(key=None, value=None, headers=()), "DecodeError", "empty")
    assert (out.key, out.value) == (None, None)
    assert read_back(out).error_message == "empty"


def test_a_replay_goes_back_to_the_topic_the_dlq_belongs_to() -> None:
    letter = read_back(dead_letter(record(), "RuntimeError", "handler failed"))
    replayed = letter.replay_record(frozenset({"shop.commands"}))
    assert replayed.topic == "shop.commands"  # not the forged original-topic
    assert replayed.headers == FORGED and replayed.key == b"s-1"


@pytest.mark.parametrize(
    ("headers", "dlq", "allowed", "why"),
    [
        ((("original-topic", b"shop.journal"),), "shop.commands.dlq", None, "says it came from"),
        (
            (("original-topic", b"shop.journal"),),
            "shop.journal.dlq",
            {"shop.commands"},
            "not a topic",
        ),
        (
            (("original-topic", b"shop.commands"), ("dlq-truncated", b"value")),
            "shop.commands.dlq",
            None,
            "truncated",
        ),
        ((("original-topic", b"shop.commands"),), "shop.commands.dlq", None, "no decodable record"),
        ((("original-topic", b"shop.commands"),), "shop.commands", None, "not a dead-letter topic"),
    ],
)
def test_what_cannot_be_replayed_is_refused_with_the_reason(
    headers: tuple[tuple[str, bytes], ...], dlq: str, allowed: set[str] | None, why: str
) -> None:
    letter = DeadLetter.of(Record(dlq, 0, 5, b"k", b"{}", headers, 0))
    with pytest.raises(NotReplayable, match=why):
        letter.replay_record(frozenset(allowed) if allowed is not None else None)


async def test_replay_refuses_journals_and_replays_the_rest() -> None:
    transport = MemoryTransport()
    await transport.ensure_topics(
        {"shop.commands": 1, "shop.commands.dlq": 1, "shop.journal": 1, "shop.journal.dlq": 1}
    )
    good = dead_letter(record(), "RuntimeError", "handler failed")
    # written straight into a DLQ by someone with produce access: aims at the journal
    aimed = dead_letter(record(topic="shop.journal"), "DecodeError", "x")
    await transport.send([good, aimed])
    outcome = await replay_dead_letters(transport, "shop.commands", None)
    assert [d.message_id for d in outcome.replayed] == ["m-1"] and outcome.refused == []
    refused = await replay_dead_letters(transport, "shop.journal", None)
    assert refused.replayed == []
    assert "not a topic this app consumes" in refused.refused[0][1]
    assert transport.broker.records("shop.journal") == []
    [again] = transport.broker.records("shop.commands")
    assert again.headers == FORGED
