"""Starting sagas: a start request on ``<saga>.inbox``, keyed by saga id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from ._codec import DEFAULT_CODEC, Codec, encode_record
from ._definition import Saga
from ._messages import Envelope, StartSaga
from .transport._base import OutgoingRecord, Transport


def start_id(saga_id: str) -> str:
    """Deterministic message id of a saga's start request: re-sending it is harmless."""
    return f"{saga_id}:start"


class SagaClient:
    """Sends start requests. A start re-sent for an existing saga id changes nothing."""

    def __init__(
        self, transport: Transport, *, namespace: str = "", codec: Codec = DEFAULT_CODEC
    ) -> None:
        self.transport = transport
        self.namespace = namespace
        self.codec = codec

    def start_record(self, saga: Saga[Any], saga_id: str, state: BaseModel) -> OutgoingRecord:
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
        return encode_record(
            self.namespace + saga.inbox_topic,
            envelope,
            StartSaga(state=state.model_dump(mode="json")),
            codec=self.codec,
        )

    async def start(self, saga: Saga[Any], saga_id: str, state: BaseModel) -> None:
        await self.transport.send([self.start_record(saga, saga_id, state)])

    async def start_many(self, saga: Saga[Any], items: Iterable[tuple[str, BaseModel]]) -> None:
        """Start several sagas with one produce batch."""
        await self.transport.send([self.start_record(saga, sid, state) for sid, state in items])
