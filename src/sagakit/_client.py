"""Starting sagas: a start request on ``<saga>.inbox``, keyed by saga id."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from ._codec import DEFAULT_CODEC, Codec, encode_record
from ._definition import Saga
from ._evaluator import SagaInstance
from ._messages import CancelSaga, Envelope, Message, ResolveSaga, ResumeSaga, StartSaga
from .tracing import Tracing
from .transport._base import OutgoingRecord, Transport


def start_id(saga_id: str) -> str:
    """Deterministic message id of a saga's start request: re-sending it is harmless."""
    return f"{saga_id}:start"


class SagaClient:
    """Sends start requests (and operators' requests), and tells how a saga stands.

    A start re-sent for an existing saga id with the same state changes nothing; with
    another state it is refused (dead-lettered as ``StartConflict``). `status` reads the
    saga's journal.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        namespace: str = "",
        codec: Codec = DEFAULT_CODEC,
        tracing: Tracing | None = None,
    ) -> None:
        self.transport = transport
        self.namespace = namespace
        self.codec = codec
        self.tracing = tracing if tracing is not None else Tracing.disabled()

    def start_record(
        self, saga: Saga[Any], saga_id: str, state: BaseModel, *, parent: str | None = None
    ) -> OutgoingRecord:
        """The start request of one saga; its trace starts here unless `parent` continues one."""
        if not isinstance(state, saga.state):
            raise TypeError(
                f"saga {saga.name!r} takes a {saga.state.__qualname__} state, "
                f"got {type(state).__name__}"
            )
        message_id = start_id(saga_id)
        envelope = Envelope(
            message_id=message_id,
            message_type=StartSaga.message_type,
            saga_id=saga_id,
            correlation_id=message_id,
            causation_id=message_id,
            saga_type=saga.name,
            saga_version=str(saga.version),
        )
        topic = self.namespace + saga.inbox_topic
        if self.tracing.enabled:
            if parent is None:
                with self.tracing.root(f"start {saga.name}", saga_id=saga_id, saga_type=saga.name):
                    envelope = self.tracing.stamp(envelope, topic)
            else:
                envelope = self.tracing.stamp(envelope, topic, parent=parent)
        return encode_record(
            topic, envelope, StartSaga(state=state.model_dump(mode="json")), codec=self.codec
        )

    async def start(self, saga: Saga[Any], saga_id: str, state: BaseModel) -> None:
        await self.transport.send([self.start_record(saga, saga_id, state)])

    async def start_many(
        self,
        saga: Saga[Any],
        items: Iterable[tuple[str, BaseModel]],
        parents: Mapping[str, str | None] | None = None,
    ) -> None:
        """Start several sagas with one produce batch (`parents`: traceparent by saga id)."""
        parents = parents or {}
        await self.transport.send(
            [self.start_record(saga, sid, state, parent=parents.get(sid)) for sid, state in items]
        )

    async def status(self, saga: Saga[Any] | str, saga_id: str) -> SagaInstance | None:
        """The saga's instance as its journal says now (None: it has not started).

        Reads the saga's journal partition: meant for people and tools, not for every
        request of a busy client.
        """
        from ._evaluator import replay
        from ._inspect import HistoryGone, saga_history

        name = saga if isinstance(saga, str) else saga.name
        topic = f"{self.namespace}{name}.journal"
        partitions = await self.transport.partition_count(topic)
        try:
            history = await saga_history(self.transport, topic, partitions, saga_id)
        except HistoryGone:
            return None  # if it ran, it ended longer ago than the journal's retention
        return replay(history).get(saga_id) if history else None

    def operator_record(
        self,
        saga_type: str,
        saga_id: str,
        request: Message,
        message_id: str | None = None,
        *,
        parent: str | None = None,
        actor: str | None = None,
        note: str | None = None,
    ) -> OutgoingRecord:
        """A person's request (resume, resolve, signal, cancel) for one saga, on that saga's
        inbox partition; `actor` (who asks) and `note` (why) go into the saga's journal."""
        message_id = message_id or f"{saga_id}:operator:{uuid.uuid4().hex}"
        envelope = Envelope(
            message_id=message_id,
            message_type=request.message_type,
            saga_id=saga_id,
            correlation_id=saga_id,
            causation_id=message_id,
            saga_type=saga_type,
            operator=actor or None,
            operator_note=note or None,
        )
        topic = f"{self.namespace}{saga_type}.inbox"
        if self.tracing.enabled and parent is not None:  # part of that trace (the saga's)
            envelope = self.tracing.stamp(envelope, topic, parent=parent)
        return encode_record(topic, envelope, request, codec=self.codec)

    async def resume(
        self, saga_type: str, saga_id: str, note: str = "", *, actor: str | None = None
    ) -> None:
        """Ask a FAILED_NEEDS_ATTENTION saga to retry from where it stopped (`actor`: who
        asks, recorded in its journal with the `note`)."""
        await self.transport.send(
            [self.operator_record(saga_type, saga_id, ResumeSaga(note=note), actor=actor)]
        )

    async def resolve(
        self, saga_type: str, saga_id: str, note: str, *, actor: str | None = None
    ) -> None:
        """Mark a FAILED_NEEDS_ATTENTION saga resolved by hand (it ends as RESOLVED)."""
        await self.transport.send(
            [self.operator_record(saga_type, saga_id, ResolveSaga(note=note), actor=actor)]
        )

    async def signal(
        self,
        saga_type: str,
        saga_id: str,
        message: Message,
        *,
        message_id: str | None = None,
        parent: str | None = None,
        actor: str | None = None,
        note: str | None = None,
    ) -> None:
        """Send a saga the message one of its waits (`WaitFor`) takes, e.g. a manager's
        ``Approved``. A saga that has not reached the wait yet keeps it; one that has
        ended, or is past that wait, dead-letters it with the reason. Give a `message_id`
        (the webhook's delivery id, say) to make a signal sent twice count once; `actor`
        and `note` (who and why) are recorded in the saga's journal."""
        await self.transport.send(
            [
                self.operator_record(
                    saga_type, saga_id, message, message_id, parent=parent, actor=actor, note=note
                )
            ]
        )

    async def cancel(
        self, saga_type: str, saga_id: str, reason: str, *, actor: str | None = None
    ) -> None:
        """Ask a running saga to stop: before its pivot it compensates what it did and
        ends COMPENSATED with ``cancelled: <reason>``; after the pivot (or once it has
        ended) the request is refused and dead-lettered with why."""
        await self.transport.send(
            [self.operator_record(saga_type, saga_id, CancelSaga(reason=reason), actor=actor)]
        )
