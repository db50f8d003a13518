"""Whether anything reads the topics a saga sends its commands to, checked after start-up.

A command whose type names no running service (``payment.ReserveCredit`` where the
service is ``payments``) goes to a topic nobody reads, and its sagas wait for replies
that never come. The orchestrator asks the transport which consumer groups read its
command topics a while after it joined (participants usually start beside it, a few
seconds apart), warns once about each topic nobody reads, and keeps the
``sagakit_unread_command_topics`` gauge right until every topic is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from ._definition import Saga
from ._metrics import Metrics
from .transport._base import Transport

log = logging.getLogger("sagakit.orchestrator")

#: How long one check may take before it is given up (and tried again later).
CHECK_TIMEOUT_S = 10.0
#: The wait between checks doubles up to this while some topic is not known to be read.
MAX_RECHECK_S = 600.0


def senders(saga: Saga[Any], namespace: str = "") -> dict[str, list[str]]:
    """Each command topic of `saga`, with what sends to it (``step 'x' (payments.X)``)."""
    found: dict[str, list[str]] = {}
    for step in saga.resolved():
        for action in (step.action, step.compensation):
            if action is not None:
                what = f"step {step.name!r} ({action.command.message_type})"
                found.setdefault(namespace + action.topic, []).append(what)
    return found


async def watch_readers(
    saga: Saga[Any],
    transport: Transport,
    metrics: Metrics,
    namespace: str = "",
    after_s: float = 30.0,
) -> None:
    """Check `after_s` after start, then again, less and less often, while some command
    topic is not known to be read. Never raises: a check that fails is logged at debug."""
    sending = senders(saga, namespace)
    pending = set(sending)
    warned: set[str] = set()
    wait = after_s
    while pending:
        await anyio.sleep(wait)
        wait = min(max(wait * 2, 0.1), MAX_RECHECK_S)
        readers = await _readers(transport, sorted(pending))
        unknown = []
        for topic in sorted(pending):
            groups = readers.get(topic)
            gauge = metrics.unread_command_topics
            if groups:
                gauge.labels(topic).set(0)
                pending.discard(topic)
                if topic in warned:
                    log.info("%s is read now, by %s", topic, ", ".join(sorted(groups)))
            elif groups is None:
                unknown.append(topic)
            else:
                gauge.labels(topic).set(1)
                if topic not in warned:
                    warned.add(topic)
                    log.warning("%s", _unread(saga, topic, sending[topic], namespace))
        if unknown:
            log.debug("cannot tell whether a consumer group reads %s", ", ".join(unknown))


async def _readers(transport: Transport, topics: list[str]) -> Mapping[str, frozenset[str] | None]:
    """The transport's answer, or nothing if it failed or took too long."""
    try:
        with anyio.move_on_after(CHECK_TIMEOUT_S) as scope:
            return await transport.topic_readers(topics)
    except Exception as exc:  # a check must never stop the orchestrator
        log.debug("checking which consumer groups read %s failed: %r", ", ".join(topics), exc)
        return {}
    if scope.cancelled_caught:
        log.debug("checking which consumer groups read %s took over %.0fs", topics, CHECK_TIMEOUT_S)
    return {}


def _unread(saga: Saga[Any], topic: str, sent_by: list[str], namespace: str) -> str:
    service = topic.removeprefix(namespace).removesuffix(".commands")
    return (
        f"no consumer group reads {topic}, where saga {saga.name!r} sends the commands of "
        f"{', '.join(sent_by)}: those steps wait for replies until a service consumes it. "
        f"Is the service {service!r} running, and is the command type's prefix right?"
    )
