"""Where a saga's time goes: every message was caused by another (its `causation-id`), so
the time between the two records' timestamps is one hop — the consumer's fetch wait, the
handling (journal append, or a participant's database transaction) and the produce.

Record timestamps are the producers' clocks at send time, in milliseconds, all on this
machine; the hops are read from the topics after the run, so they cost the run nothing.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .._inspect import header, read_topic
from .._messages import StartSaga
from ..transport._base import Transport

KINDS = (".inbox", ".commands", ".events")


@dataclass(frozen=True, slots=True)
class _Sent:
    message_type: str
    saga_id: str
    causation_id: str
    timestamp: int
    by: str


def _writer(topic: str, message_type: str) -> str:
    """The component that wrote a record: the orchestrator writes commands, a participant
    its replies (named by their type) and its own events."""
    name = topic.rsplit(".", 2)
    if topic.endswith(".commands"):
        return "orchestrator"
    if topic.endswith(".events"):
        return name[-2]
    if message_type == StartSaga.message_type:
        return "client"
    return message_type.split(".", 1)[0]


async def hop_latencies(
    transport: Transport, namespace: str, since_ms: float, until_ms: float, skip: set[str]
) -> list[dict[str, Any]]:
    """Per kind of hop (cause type → message type, and who sent the message): count and
    p50/p99 in ms, for causes sent in [since_ms, until_ms), in the order sagas take them.

    `skip` names topic kinds known to be empty (``events`` in orchestration).
    """
    sent: dict[str, _Sent] = {}
    for topic in sorted(await transport.existing_topics()):
        if not topic.startswith(namespace) or not topic.endswith(KINDS):
            continue
        if topic.rsplit(".", 1)[1] in skip:
            continue
        for r in await read_topic(transport, topic):
            message_id = header(r, "message-id")
            message_type = header(r, "message-type") or "?"
            if message_id is None:
                continue
            sent[message_id] = _Sent(
                message_type,
                header(r, "saga-id") or "",
                header(r, "causation-id") or message_id,
                r.timestamp_ms,
                _writer(topic, message_type),
            )
    first: dict[str, int] = {}
    for s in sent.values():
        first[s.saga_id] = min(first.get(s.saga_id, s.timestamp), s.timestamp)
    hops: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    offsets: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for message_id, s in sent.items():
        cause = sent.get(s.causation_id)
        if cause is None or s.causation_id == message_id:
            continue
        if not since_ms <= cause.timestamp < until_ms:
            continue
        key = (cause.message_type, s.message_type, s.by)
        hops[key].append(s.timestamp - cause.timestamp)
        offsets[key].append(s.timestamp - first[s.saga_id])
    rows = []
    for key, values in hops.items():
        values.sort()
        rows.append(
            {
                "hop": f"{key[0]} → {key[1]}",
                "by": key[2],
                "count": len(values),
                "p50_ms": float(statistics.median(values)),
                "p99_ms": float(values[min(len(values) - 1, int(len(values) * 0.99))]),
                "at_ms": float(statistics.median(offsets[key])),
            }
        )
    return sorted(rows, key=lambda row: row["at_ms"])
