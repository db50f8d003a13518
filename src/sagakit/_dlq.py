"""Dead letters: a record that cannot be processed goes to ``<topic>.dlq`` with the reason."""

from __future__ import annotations

from .transport._base import OutgoingRecord, Record


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def dead_letter(
    record: Record, error_type: str, error_message: str, consumer: str | None = None
) -> OutgoingRecord:
    """The DLQ record for `record`: original key, value and headers plus where and why.

    `consumer` names who failed, for topics several services read (events).
    """
    by = (("failed-consumer", consumer.encode()),) if consumer else ()
    headers = (
        *record.headers,
        ("error-type", error_type.encode()),
        ("error-message", error_message[:4000].encode()),
        ("original-topic", record.topic.encode()),
        ("original-partition", str(record.partition).encode()),
        ("original-offset", str(record.offset).encode()),
        *by,
    )
    return OutgoingRecord(dlq_topic(record.topic), record.key, record.value, headers, partition=0)
