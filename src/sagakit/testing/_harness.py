"""One service on its own: call a handler with a command, get its reply and its store."""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._codec import encode_record
from .._dlq import DeadLetter
from .._errors import SagaError
from .._idempotency import SqliteStore
from .._messages import Command, Envelope, Event, Message
from .._participant import Service, events_topic
from ..transport._base import Record
from ..transport.memory import MemoryBroker, MemoryTransport
from ._stores import StoreSwap

TxT = TypeVar("TxT")


class DeadLettered(SagaError):
    """The harness's command or event went to the DLQ; `letter` says why."""

    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(f"dead-lettered as {letter.error_type}: {letter.error_message}")
        self.letter = letter


class ServiceHarness(Generic[TxT]):
    """Calls one service's handlers and reactions directly, through the code that runs
    them on Kafka (decoding, the store's transaction, deduplication, reply routing)::

        async with ServiceHarness(payments) as harness:
            reply = await harness.handle(ReserveCredit(order_id="o1", ...))
            assert isinstance(reply, CreditReserved)
            assert harness.db.execute("SELECT held FROM customers").fetchone() == (100,)
            again = await harness.handle(ReserveCredit(...), message_id=harness.last_id)
            # a duplicate: the stored reply, the handler did not run again

    The service gets an empty store of its kind (SQLite in memory, with its schema) for
    the harness's lifetime and its own back afterwards; ``fresh_store=False`` keeps it.
    """

    def __init__(
        self, service: Service[TxT], *, saga_type: str = "harness", fresh_store: bool = True
    ) -> None:
        self.service = service
        self.fresh_store = fresh_store
        self._stores = StoreSwap()
        self.saga_type = saga_type
        self.broker = MemoryBroker()
        self.transport = MemoryTransport(self.broker)
        self.last_id = ""
        self._ids = itertools.count(1)

    async def __aenter__(self) -> ServiceHarness[TxT]:
        if self.fresh_store:
            self._stores.empty(self.service)
        self.service.configure(namespace="")
        await self.service.ensure_topics(self.transport)
        await self.transport.ensure_topics({self.inbox: 1})
        for topic in self.service.subscribed_topics():
            producer = topic.removesuffix(".events")
            if topic.endswith(".events") and producer != self.service.name:
                await self.transport.ensure_topics({topic: self.service.partitions})
        self.service.bind(self.transport)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.service.bind(None)
        self._stores.restore()

    @property
    def inbox(self) -> str:
        return f"{self.saga_type}.inbox"

    @property
    def db(self) -> Any:
        """The store's connection (SQLite), to look at the service's state."""
        store = self.service.store
        if isinstance(store, SqliteStore):
            return store.connection
        raise SagaError(f"{type(store).__name__} has no database to look into")

    async def handle(
        self, command: Command, *, saga_id: str = "s-1", message_id: str | None = None
    ) -> Message | None:
        """Handle `command` as the orchestrator would send it; the reply (None: none)."""
        self.last_id = message_id or f"{saga_id}:harness:{next(self._ids)}"
        envelope = Envelope(
            message_id=self.last_id,
            message_type=command.message_type,
            saga_id=saga_id,
            correlation_id=saga_id,
            causation_id=saga_id,
            saga_type=self.saga_type,
            saga_version="1",
            reply_to=self.inbox,
        )
        return await self._deliver(
            encode_record(self.service.commands_topic, envelope, command), self.inbox
        )

    async def react(
        self, event: Event, *, saga_id: str = "s-1", message_id: str | None = None
    ) -> Message | None:
        """Deliver a domain event to the service's reaction; the event it publishes."""
        self.last_id = message_id or f"{saga_id}:event:{next(self._ids)}"
        envelope = Envelope(
            message_id=self.last_id,
            message_type=event.message_type,
            saga_id=saga_id,
            correlation_id=saga_id,
            causation_id=self.last_id,
        )
        topic = events_topic(event.message_type)
        await self.transport.ensure_topics({topic: self.service.partitions})
        return await self._deliver(encode_record(topic, envelope, event), self.service.events_topic)

    async def _deliver(self, outgoing: Any, answers: str) -> Message | None:
        [delivered] = await self.transport.send([outgoing])
        record = self.broker.records(delivered.topic, delivered.partition)[delivered.offset]
        before = len(self.broker.records(answers))
        dead_topic = f"{delivered.topic}.dlq"
        dead_before = len(self.broker.records(dead_topic))
        if not await self.service.handle_one(record):
            raise SagaError("the service could not send what it produced (see the log)")
        dead = self.broker.records(dead_topic)[dead_before:]
        if dead:
            raise DeadLettered(DeadLetter.of(dead[-1]))
        produced = self.broker.records(answers)[before:]
        return self._decode(produced[-1]) if produced else None

    def _decode(self, record: Record) -> Message:
        envelope = Envelope.from_headers(record.headers)
        return self.service.codec.decode(envelope.message_type, record.value)
