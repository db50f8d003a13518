"""Dead letters: a record that cannot be processed goes to ``<topic>.dlq`` with the reason.

A dead letter carries the framework's headers (`error-type`, `error-message`,
`original-topic`, ...) and the original record's headers each renamed
``original-header:<name>``. No framework header starts with that prefix, so nothing
the sender wrote can pass for the reason, the origin or where a replay goes.

A record too large to copy whole keeps what fits: the first bytes of its value (and
key), the SHA-256 and size of the whole value, and ``dlq-truncated`` naming what was
cut; such a dead letter is kept for people and is never replayed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ._errors import SagaError
from .transport._base import OutgoingRecord, Record

DLQ_SUFFIX = ".dlq"
ORIGINAL_HEADER = "original-header:"

ERROR_TYPE = "error-type"
ERROR_MESSAGE = "error-message"
ORIGINAL_TOPIC = "original-topic"
ORIGINAL_PARTITION = "original-partition"
ORIGINAL_OFFSET = "original-offset"
ORIGINAL_TIMESTAMP = "original-timestamp"
FAILED_CONSUMER = "failed-consumer"
VALUE_BYTES = "dlq-value-bytes"
VALUE_SHA256 = "dlq-value-sha256"
TRUNCATED = "dlq-truncated"

#: What a dead letter keeps of the original record, at most (it must fit a produce
#: request of the default 1 MiB with room to spare).
VALUE_LIMIT = 512 * 1024
KEY_LIMIT = 16 * 1024
HEADERS_LIMIT = 64 * 1024
MESSAGE_LIMIT = 4000


#: The settings of every dead-letter topic: a dead letter waits for a person, so it never
#: expires.
DLQ_CONFIGS: dict[str, str] = {"retention.ms": "-1"}


def dlq_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


def _name(name: str) -> str:
    """A header name as it can be written: invalid UTF-8 (kept as escapes) shown as ``\\xNN``."""
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def dead_letter(
    record: Record, error_type: str, error_message: str, consumer: str | None = None
) -> OutgoingRecord:
    """The DLQ record for `record`: where it came from and why, then what can be kept of it.

    `consumer` names who failed, for topics several services read (events).
    """
    truncated: list[str] = []
    value = record.value
    if value is not None and len(value) > VALUE_LIMIT:
        value = value[:VALUE_LIMIT]
        truncated.append("value")
    key = record.key
    if key is not None and len(key) > KEY_LIMIT:
        key = key[:KEY_LIMIT]
        truncated.append("key")
    headers: list[tuple[str, bytes]] = [
        (ERROR_TYPE, error_type.encode()),
        (ERROR_MESSAGE, error_message[:MESSAGE_LIMIT].encode()),
        (ORIGINAL_TOPIC, record.topic.encode()),
        (ORIGINAL_PARTITION, str(record.partition).encode()),
        (ORIGINAL_OFFSET, str(record.offset).encode()),
        (ORIGINAL_TIMESTAMP, str(record.timestamp_ms).encode()),
    ]
    if consumer:
        headers.append((FAILED_CONSUMER, consumer.encode()))
    if record.value is not None:
        headers.append((VALUE_BYTES, str(len(record.value)).encode()))
        if "value" in truncated:
            headers.append((VALUE_SHA256, hashlib.sha256(record.value).hexdigest().encode()))
    budget = HEADERS_LIMIT
    for name, header_value in record.headers:
        renamed = ORIGINAL_HEADER + _name(name)
        size = len(renamed) + len(header_value or b"")
        if size > budget:
            truncated.append("headers")
            break
        budget -= size
        headers.append((renamed, header_value))  # null values too
    if truncated:
        headers.append((TRUNCATED, ",".join(truncated).encode()))
    return OutgoingRecord(dlq_topic(record.topic), key, value, tuple(headers), partition=0)


class NotReplayable(SagaError):
    """A dead letter that `dlq replay` must not produce again, and why."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter read back: the framework's headers, and the original record."""

    record: Record
    error_type: str
    error_message: str
    original_topic: str
    original_partition: int | None
    original_offset: int | None
    consumer: str | None
    truncated: tuple[str, ...]
    original_headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: Record) -> DeadLetter:
        framework: dict[str, str] = {}
        original: list[tuple[str, bytes]] = []
        for name, value in record.headers:
            if name.startswith(ORIGINAL_HEADER):
                original.append((name[len(ORIGINAL_HEADER) :], value))
            elif name not in framework:
                framework[name] = (value or b"").decode(errors="replace")
        return cls(
            record=record,
            error_type=framework.get(ERROR_TYPE, ""),
            error_message=framework.get(ERROR_MESSAGE, ""),
            original_topic=framework.get(ORIGINAL_TOPIC, ""),
            original_partition=_int(framework.get(ORIGINAL_PARTITION)),
            original_offset=_int(framework.get(ORIGINAL_OFFSET)),
            consumer=framework.get(FAILED_CONSUMER),
            truncated=tuple(t for t in framework.get(TRUNCATED, "").split(",") if t),
            original_headers=tuple(original),
        )

    def header(self, name: str) -> str | None:
        """An original header's value (the first of that name), decoded for display."""
        for key, value in self.original_headers:
            if key == name:
                return (value or b"").decode(errors="replace")
        return None

    @property
    def message_id(self) -> str:
        return self.header("message-id") or ""

    @property
    def message_type(self) -> str:
        return self.header("message-type") or ""

    def replay_record(self, allowed: frozenset[str] | None = None) -> OutgoingRecord:
        """The original record, to produce again to the topic this dead letter came from.

        That topic is the one this DLQ belongs to (``X.dlq`` holds the dead letters of
        ``X``); the recorded `original-topic` must agree, and, given `allowed`, it must be
        one of those topics (the topics the app consumes).
        """
        topic = self.record.topic
        if not topic.endswith(DLQ_SUFFIX):
            raise NotReplayable(f"{topic!r} is not a dead-letter topic")
        home = topic[: -len(DLQ_SUFFIX)]
        where = f"{topic}@{self.record.offset}"
        if self.original_topic != home:
            raise NotReplayable(
                f"{where} says it came from {self.original_topic or 'nowhere'!r}, but the "
                f"dead letters of {home!r} are in {topic!r}: not replayed"
            )
        if allowed is not None and home not in allowed:
            raise NotReplayable(f"{where}: {home!r} is not a topic this app consumes")
        if self.truncated:
            raise NotReplayable(
                f"{where} was truncated ({', '.join(self.truncated)}) when it was "
                "dead-lettered; only what was kept of it is here"
            )
        if self.record.defect is not None or not self.original_headers:
            raise NotReplayable(f"{where} holds no decodable record (it has no headers)")
        return OutgoingRecord(home, self.record.key, self.record.value, self.original_headers)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
