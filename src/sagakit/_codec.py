"""Pydantic models to bytes and back (orjson), looked up by registered message type."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from ._errors import DecodeError
from ._messages import Envelope, Message, registered
from .transport._base import OutgoingRecord, Record

M = TypeVar("M", bound=Message)


class Codec(Protocol):
    """Turns registered message models into record values and back."""

    def encode(self, message: Message) -> bytes: ...

    def decode(self, message_type: str, data: bytes | None) -> Message: ...


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


class JsonCodec:
    """JSON through pydantic-core's serializer and parser; the default codec.

    pydantic-core writes JSON straight from the model (timedelta, bytes, big integers
    included) about four times faster than dumping to a dict and encoding that.
    """

    def encode(self, message: Message) -> bytes:
        data: bytes = type(message).__pydantic_serializer__.to_json(message)
        return data

    def decode(self, message_type: str, data: bytes | None) -> Message:
        model = registered(message_type)
        if model is None:
            raise DecodeError(f"unknown message-type {message_type!r}: no model is registered")
        if data is None:
            raise DecodeError(f"record of message-type {message_type!r} has no value")
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
                raise DecodeError(
                    f"value of {message_type!r} is not JSON: {_first_error(exc)}"
                ) from exc
            raise DecodeError(
                f"value does not validate as {message_type!r}: "
                f"{exc.error_count()} error(s), first: {_first_error(exc)}"
            ) from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{where}: {err['msg']}"


DEFAULT_CODEC = JsonCodec()


@dataclass(frozen=True, slots=True)
class Incoming(Generic[M]):
    """A decoded record: its envelope, its payload, when it was written, where it came from."""

    envelope: Envelope
    message: M
    at_ms: int
    record: Record | None = None


def envelope_of(record: Record) -> Envelope:
    """The envelope of a consumed record, checked as input from outside.

    Raises DecodeError when the transport could not decode the record, its headers are
    not a valid envelope, or its key is not its ``saga-id`` (a saga's records must all
    land on the saga's partition, and the key is what places them).
    """
    if record.defect is not None:
        raise DecodeError(f"the broker's bytes at this offset do not decode: {record.defect}")
    envelope = Envelope.from_headers(record.headers)
    if record.key is None or record.key != envelope.saga_id.encode():
        shown = record.key[:200] if record.key is not None else None
        raise DecodeError(
            f"record key {shown!r} is not its saga-id {envelope.saga_id[:200]!r}; "
            "records must be keyed by saga id"
        )
    return envelope


def decode_record(record: Record, codec: Codec = DEFAULT_CODEC) -> Incoming[Message]:
    """Decode headers and value of `record`; raises DecodeError naming what is wrong."""
    envelope = envelope_of(record)
    message = codec.decode(envelope.message_type, record.value)
    return Incoming(envelope, message, record.timestamp_ms, record)


def encode_record(
    topic: str,
    envelope: Envelope,
    message: Message,
    *,
    partition: int | None = None,
    codec: Codec = DEFAULT_CODEC,
) -> OutgoingRecord:
    """The record for `message`: key = saga id, value = encoded payload, envelope headers."""
    return OutgoingRecord(
        topic=topic,
        key=envelope.saga_id.encode(),
        value=codec.encode(message),
        headers=tuple(envelope.to_headers()),
        partition=partition,
    )
