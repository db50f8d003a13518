"""Checking a person's request (resume, resolve, signal, cancel) before it is sent, so a
refusal is said to the person instead of in a dead letter: the CLI and the console ask
the saga's own definition what it would do."""

from __future__ import annotations

from typing import Any

from ._codec import Incoming
from ._definition import Saga
from ._evaluator import SagaInstance, SagaStatus, decide
from ._messages import Envelope, Message, ResolveSaga, ResumeSaga


def refusal(definition: Saga[Any] | None, instance: SagaInstance, request: Message) -> str | None:
    """Why the saga would not take `request` now (None: it would, or without its
    `definition` nothing more can be said)."""
    saga_id = instance.saga_id
    if isinstance(request, ResumeSaga | ResolveSaga):
        if instance.status is SagaStatus.FAILED_NEEDS_ATTENTION:
            return None
        return (
            f"saga {saga_id} is {instance.status.value}; only FAILED_NEEDS_ATTENTION sagas "
            "can be resumed or resolved"
        )
    if instance.status.terminal:
        return f"saga {saga_id} is {instance.status.value}: it has ended"
    if definition is None:
        return None
    envelope = Envelope(
        message_id=f"{saga_id}:check",
        message_type=request.message_type,
        saga_id=saga_id,
        correlation_id=saga_id,
        causation_id=f"{saga_id}:check",
    )
    return decide(definition, instance, Incoming(envelope, request, instance.updated_ms)).rejected
