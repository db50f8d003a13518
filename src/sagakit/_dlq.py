"""Dead letters: a record that cannot be processed goes to ``<topic>.dlq`` with the reason."""

from __future__ import annotations

from .transport._base import OutgoingRecord, Record


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def dead_letter(record: Record, error_type: str, error_message: str) -> OutgoingRecord:
    """The DLQ record for `record`: original key, value and headers plus where and why."""
    headers = (
        *record.headers,
        ("error-type", error_type.encode()),
        ("error-message", error_message[:4000].encode()),
        ("original-topic", record.topic.encode()),
        ("original-partition", str(record.partition).encode()),
        ("original-offset", str(record.offset).encode()),
    )
    return OutgoingRecord(dlq_topic(record.topic), record.key, record.value, headers, partition=0)
