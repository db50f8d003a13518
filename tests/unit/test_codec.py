"""The wire edge: payloads to bytes and back, envelope headers, the type registry,
and records; everything undecodable is a DecodeError that says what is wrong."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sagakit import (
    Command,
    DecodeError,
    DefinitionError,
    Envelope,
    Header,
    JsonCodec,
    Message,
    OutgoingRecord,
    Record,
    Reply,
    SagaError,
    StartSaga,
)
from sagakit._codec import decode_record, encode_record
from sagakit._messages import is_registered, registered
from services.payments.messages import CreditLimitExceeded, ReserveCredit

codec = JsonCodec()


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Line(BaseModel):
    sku: str
    quantity: int


class Rich(Command, type="ctest.Rich"):
    """A command with most field types a user would reach for."""

    text: str
    count: int
    ratio: float
    flag: bool
    nothing: str | None
    price: Decimal
    when: dt.datetime
    day: dt.date
    ident: uuid.UUID
    colour: Colour
    tags: frozenset[str]
    pair: tuple[int, str]
    lines: list[Line]
    extra: dict[str, int]


class Simple(Reply, type="ctest.Simple"):
    name: str
    amount: int


class Timed(Command, type="ctest.Timed"):
    timeout: dt.timedelta


class Blob(Command, type="ctest.Blob"):
    data: bytes


def rich() -> Rich:
    return Rich(
        text="zürich ✓",
        count=-3,
        ratio=0.25,
        flag=True,
        nothing=None,
        price=Decimal("12.30"),
        when=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        day=dt.date(2024, 2, 29),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        colour=Colour.BLUE,
        tags=frozenset({"b", "a"}),
        pair=(1, "x"),
        lines=[Line(sku="s1", quantity=2)],
        extra={"k": 1},
    )


# -- JsonCodec -------------------------------------------------------------------------------


def test_round_trip_of_a_sample_message() -> None:
    message = ReserveCredit(order_id="o1", customer_id="c1", amount=300)
    data = codec.encode(message)
    assert orjson.loads(data) == {"order_id": "o1", "customer_id": "c1", "amount": 300}
    assert codec.decode("payments.ReserveCredit", data) == message


def test_round_trip_of_many_field_types() -> None:
    message = rich()
    data = codec.encode(message)
    assert isinstance(data, bytes)
    body = orjson.loads(data)
    assert body["price"] == "12.30"
    assert sorted(body["tags"]) == ["a", "b"]
    decoded = codec.decode("ctest.Rich", data)
    assert type(decoded) is Rich
    assert decoded == message


def test_round_trip_of_a_start_request() -> None:
    message = StartSaga(state={"order_id": "o1", "nested": {"x": [1, 2]}})
    assert codec.decode("sagakit.StartSaga", codec.encode(message)) == message


@settings(max_examples=100, deadline=None)
@given(
    name=st.text(),
    amount=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_round_trip_of_arbitrary_values(name: str, amount: int) -> None:
    message = Simple(name=name, amount=amount)
    assert codec.decode("ctest.Simple", codec.encode(message)) == message


@pytest.mark.parametrize(
    "message", [Timed(timeout=dt.timedelta(seconds=90)), Blob(data=b"\x00raw")], ids=["td", "bytes"]
)
def test_round_trip_of_timedelta_and_bytes_fields(message: Message) -> None:
    assert codec.decode(message.message_type, codec.encode(message)) == message


@pytest.mark.parametrize("data", [b"\xff\xfe not json", b"{", b"", b"{'single': 'quotes'}"])
def test_decode_of_bytes_that_are_not_json(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("ctest.Simple", data)
    assert "'ctest.Simple' is not JSON" in str(info.value)
    assert "is not JSON" in str(info.value)


def test_decode_of_an_unknown_message_type() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("ctest.NoSuchThing", b'{"name": "x"}')
    assert "unknown message-type 'ctest.NoSuchThing'" in str(info.value)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "x"}, "amount"),
        ({"name": "x", "amount": "lots"}, "amount"),
        ({"name": "x", "amount": 1, "surprise": True}, "surprise"),
        ([1, 2], "<root>"),
    ],
)
def test_decode_of_a_payload_that_fails_validation(body: object, where: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("ctest.Simple", orjson.dumps(body))
    message = str(info.value)
    assert "does not validate as 'ctest.Simple'" in message
    assert f"first: {where}:" in message
    assert isinstance(info.value.__cause__, ValidationError)


def test_decode_of_a_missing_value() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("ctest.Simple", None)
    assert "'ctest.Simple' has no value" in str(info.value)


def test_decode_error_is_a_saga_error() -> None:
    assert issubclass(DecodeError, SagaError)


# -- the registry ----------------------------------------------------------------------------


def test_registered_types_are_looked_up_by_name() -> None:
    assert registered("ctest.Simple") is Simple
    assert registered("payments.CreditLimitExceeded") is CreditLimitExceeded
    assert registered("ctest.Nope") is None
    assert is_registered(Simple)

    class Unnamed(Reply):
        name: str

    class Sub(Simple):
        pass

    assert not is_registered(Unnamed)
    assert not is_registered(Sub)
    assert Sub.message_type == ""
    assert registered("ctest.Simple") is Simple  # a subclass does not take the name over


def test_two_classes_under_one_type_name() -> None:
    with pytest.raises(DefinitionError) as info:

        class Impostor(Reply, type="ctest.Simple"):
            name: str

    message = str(info.value)
    assert "'ctest.Simple'" in message
    assert "Impostor" in message and f"{__name__}.Simple" in message
    assert registered("ctest.Simple") is Simple


def test_the_same_class_declared_again_keeps_its_name() -> None:
    """Re-running a class statement (a module reload) is not a conflict."""

    def declare() -> type[Message]:
        class Again(Command, type="ctest.Again"):
            n: int

        return Again

    first = declare()
    second = declare()
    assert first is not second
    assert registered("ctest.Again") is second


@pytest.mark.parametrize("name", ["", " ctest.Padded", "ctest.Padded ", "ctest.Two Words"])
def test_bad_message_type_names(name: str) -> None:
    with pytest.raises(DefinitionError) as info:

        class Bad(Command, type=name):
            pass

    assert "Bad" in str(info.value) and "non-empty name" in str(info.value)
    assert registered(name) is None


# -- the envelope ----------------------------------------------------------------------------

MINIMAL = Envelope(
    message_id="m1",
    message_type="ctest.Simple",
    saga_id="s1",
    correlation_id="c1",
    causation_id="k1",
)
FULL = Envelope(
    message_id="m1",
    message_type="ctest.Simple",
    saga_id="s1",
    correlation_id="c1",
    causation_id="k1",
    saga_type="place-order",
    saga_version="2",
    reply_to="place-order.inbox",
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    tracestate="vendor=x",
    extra=(("x-tenant", b"acme"), ("x-raw", b"\xff\x00"), ("x-tenant", b"again")),
)


def test_envelope_headers_have_the_wire_names() -> None:
    assert MINIMAL.to_headers() == [
        ("message-id", b"m1"),
        ("message-type", b"ctest.Simple"),
        ("saga-id", b"s1"),
        ("correlation-id", b"c1"),
        ("causation-id", b"k1"),
    ]
    headers = dict(FULL.to_headers()[:10])
    assert headers[Header.SAGA_TYPE] == b"place-order"
    assert headers[Header.SAGA_VERSION] == b"2"
    assert headers[Header.REPLY_TO] == b"place-order.inbox"
    assert headers[Header.TRACEPARENT] == FULL.traceparent.encode()  # type: ignore[union-attr]
    assert headers[Header.TRACESTATE] == b"vendor=x"
    assert FULL.to_headers()[-3:] == list(FULL.extra)


@pytest.mark.parametrize("envelope", [MINIMAL, FULL], ids=["minimal", "full"])
def test_envelope_round_trip(envelope: Envelope) -> None:
    assert Envelope.from_headers(envelope.to_headers()) == envelope


def test_unknown_headers_are_preserved_in_order() -> None:
    headers = [("x-first", b"1"), *MINIMAL.to_headers(), ("x-raw", b"\x80"), ("x-none", None)]
    envelope = Envelope.from_headers(headers)
    assert envelope.extra == (("x-first", b"1"), ("x-raw", b"\x80"), ("x-none", None))
    assert envelope.evolve(extra=()) == MINIMAL


header_text = st.text(min_size=1, max_size=20)
known_names = {getattr(Header, n) for n in dir(Header) if not n.startswith("_") and n.isupper()}


@settings(max_examples=100, deadline=None)
@given(
    required=st.tuples(*[header_text] * 5),
    optional=st.tuples(*[st.none() | st.text(max_size=20)] * 5),
    extra=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=10).filter(lambda n: n not in known_names), st.binary()
        ),
        max_size=4,
    ),
)
def test_envelope_round_trip_of_arbitrary_values(
    required: tuple[str, ...], optional: tuple[str | None, ...], extra: list[tuple[str, bytes]]
) -> None:
    envelope = Envelope(*required, *optional, extra=tuple(extra))
    assert Envelope.from_headers(envelope.to_headers()) == envelope


def test_missing_correlation_and_causation_default_to_the_saga_and_message() -> None:
    headers = [h for h in MINIMAL.to_headers() if h[0] not in {"correlation-id", "causation-id"}]
    envelope = Envelope.from_headers(headers)
    assert envelope.correlation_id == "s1"
    assert envelope.causation_id == "m1"


@pytest.mark.parametrize(
    ("drop", "missing"),
    [
        ({"message-id", "message-type", "saga-id"}, "message-id, message-type, saga-id"),
        ({"message-type"}, "message-type"),
        ({"message-id", "saga-id"}, "message-id, saga-id"),
    ],
)
def test_missing_required_headers(drop: set[str], missing: str) -> None:
    headers = [h for h in FULL.to_headers() if h[0] not in drop]
    with pytest.raises(DecodeError) as info:
        Envelope.from_headers(headers)
    assert str(info.value) == f"record lacks required header(s) {missing}"


@pytest.mark.parametrize("value", [b"", None])
def test_empty_required_header_counts_as_missing(value: bytes | None) -> None:
    headers = [(n, value if n == "saga-id" else v) for n, v in MINIMAL.to_headers()]
    with pytest.raises(DecodeError) as info:
        Envelope.from_headers(headers)
    assert "saga-id" in str(info.value)
    assert "message-id" not in str(info.value)


@pytest.mark.parametrize("name", ["message-id", "saga-id", "saga-type", "traceparent"])
def test_non_utf8_known_header(name: str) -> None:
    headers = [*(h for h in MINIMAL.to_headers() if h[0] != name), (name, b"\xc3\x28")]
    with pytest.raises(DecodeError) as info:
        Envelope.from_headers(headers)
    assert "not UTF-8" in str(info.value)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("name", ["message-id", "saga-id", "reply-to"])
def test_a_wire_contract_header_given_twice_is_refused(name: str) -> None:
    # which of the two would count is anybody's guess: a forger's second saga-id, say
    headers = [*MINIMAL.to_headers(), ("reply-to", b"a.inbox"), (name, b"forged")]
    with pytest.raises(DecodeError, match=f"header '{name}' more than once"):
        Envelope.from_headers(headers)


def test_a_header_name_that_is_not_utf8_is_refused() -> None:
    # what the tolerant record decoder hands over for a name that is not UTF-8
    bad_name = b"\xff\xfex".decode("utf-8", "surrogateescape")
    with pytest.raises(DecodeError, match="not UTF-8"):
        Envelope.from_headers([*MINIMAL.to_headers(), (bad_name, b"v")])


@pytest.mark.parametrize("headers", [[("message-id",)], [("message-id", "m1")], None, [42]])
def test_headers_that_are_not_name_value_pairs(headers: object) -> None:
    with pytest.raises(DecodeError):
        Envelope.from_headers(headers)


# -- records ---------------------------------------------------------------------------------


def consumed(
    out: OutgoingRecord, *, offset: int = 7, timestamp_ms: int = 1_700_000_000_000
) -> Record:
    return Record(
        topic=out.topic,
        partition=out.partition if out.partition is not None else 0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=out.headers,
        timestamp_ms=timestamp_ms,
    )


def test_record_round_trip_keyed_by_saga_id() -> None:
    message = ReserveCredit(order_id="o1", customer_id="c1", amount=300)
    envelope = FULL.evolve(message_type="payments.ReserveCredit", saga_id="order-ü1")
    out = encode_record("payments.commands", envelope, message, partition=3)
    assert out.topic == "payments.commands"
    assert out.key == "order-ü1".encode()
    assert out.partition == 3
    assert out.headers == tuple(envelope.to_headers())
    assert codec.decode("payments.ReserveCredit", out.value) == message

    record = consumed(out)
    incoming = decode_record(record)
    assert incoming.envelope == envelope
    assert incoming.message == message
    assert type(incoming.message) is ReserveCredit
    assert incoming.at_ms == 1_700_000_000_000
    assert incoming.record is record


def test_record_without_partition_is_left_to_the_partitioner() -> None:
    out = encode_record("x.inbox", MINIMAL, Simple(name="n", amount=1))
    assert out.partition is None
    assert out.key == b"s1"


def test_record_with_bad_headers_does_not_decode() -> None:
    out = encode_record("x.inbox", MINIMAL, Simple(name="n", amount=1))
    record = consumed(out)
    broken = Record(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        tuple(h for h in record.headers if h[0] != "message-type"),
        record.timestamp_ms,
    )
    with pytest.raises(DecodeError) as info:
        decode_record(broken)
    assert "message-type" in str(info.value)


def test_record_whose_value_does_not_match_its_type() -> None:
    out = encode_record("x.inbox", MINIMAL, Simple(name="n", amount=1))
    record = consumed(out)
    wrong = Record(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        b'{"order_id": "o1"}',
        record.headers,
        record.timestamp_ms,
    )
    with pytest.raises(DecodeError) as info:
        decode_record(wrong)
    assert "ctest.Simple" in str(info.value)
