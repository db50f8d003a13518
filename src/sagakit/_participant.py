"""Participants: a `Service` groups command handlers and runs them effect-once.

    payments = Service("payments", SqliteStore("payments.db"))

    @payments.handles(ReserveCredit)
    def reserve_credit(cmd: ReserveCredit, ctx: HandlerContext[sqlite3.Connection]) -> Reply:
        ...
        raise BusinessFailure(CreditLimitExceeded(...))   # becomes the failure reply

The framework decodes and validates, deduplicates by command message id (a duplicate
gets the stored reply, the handler does not run again), routes the reply to the
command's ``reply-to`` topic, and sends what it cannot process to ``<topic>.dlq``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from ._codec import DEFAULT_CODEC, Codec, decode_record
from ._dlq import dead_letter, dlq_topic
from ._errors import BusinessFailure, DecodeError, DefinitionError, PartitionsLost
from ._faults import fault_point
from ._idempotency import IdempotencyStore, StoreBatch, StoredReply
from ._messages import Command, Envelope, Reply, is_registered
from .transport._base import OutgoingRecord, Record, Subscription, TopicPartition, Transport

log = logging.getLogger("sagakit.participant")

TxT = TypeVar("TxT")
C = TypeVar("C", bound=Command)


@dataclass(frozen=True, slots=True)
class HandlerContext(Generic[TxT]):
    """What a handler gets besides the command: the envelope and the store's transaction."""

    envelope: Envelope
    db: TxT

    @property
    def message_id(self) -> str:
        return self.envelope.message_id

    @property
    def saga_id(self) -> str:
        return self.envelope.saga_id

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id


Handler = Callable[[C, HandlerContext[TxT]], Reply | Awaitable[Reply]]


@dataclass
class ServiceStats:
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_letters: int = 0


def reply_id(command_message_id: str) -> str:
    """Deterministic id of the reply to a command, so a re-sent reply is a duplicate."""
    return f"{command_message_id}:reply"


class Service(Generic[TxT]):
    """A participant: handlers for the commands on ``<name>.commands``."""

    def __init__(
        self,
        name: str,
        store: IdempotencyStore[TxT],
        *,
        partitions: int = 8,
        namespace: str = "",
        codec: Codec = DEFAULT_CODEC,
        max_records: int = 500,
        poll_timeout_s: float = 0.1,
        handler_attempts: int = 3,
        handler_backoff_s: float = 0.01,
    ) -> None:
        """`handler_attempts`: runs of a handler that raises a non-business error before the
        command goes to the DLQ (with `handler_backoff_s`, doubling, between runs)."""
        self.name = name
        self.handler_attempts = max(1, handler_attempts)
        self.handler_backoff_s = handler_backoff_s
        self.namespace = namespace
        self.store = store
        self.partitions = partitions
        self.codec = codec
        self.max_records = max_records
        self.poll_timeout_s = poll_timeout_s
        self.stats = ServiceStats()
        self._handlers: dict[str, Callable[[Any, HandlerContext[TxT]], Any]] = {}
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._changed = anyio.Event()

    @property
    def commands_topic(self) -> str:
        return f"{self.namespace}{self.name}.commands"

    def handles(self, command: type[C]) -> Callable[[Handler[C, TxT]], Handler[C, TxT]]:
        """Register the decorated function as the handler of `command`."""
        if not (isinstance(command, type) and issubclass(command, Command)):
            raise DefinitionError(f"service {self.name!r}: {command!r} is not a Command model")
        if not is_registered(command):
            raise DefinitionError(
                f"service {self.name!r}: command {command.__qualname__} is not registered "
                f'(declare it with type="{self.name}.{command.__name__}")'
            )
        if command.message_type in self._handlers:
            raise DefinitionError(
                f"service {self.name!r} already has a handler for {command.message_type}"
            )

        def register(fn: Handler[C, TxT]) -> Handler[C, TxT]:
            self._handlers[command.message_type] = fn
            return fn

        return register

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The command partitions this instance consumes right now."""
        return self._assignment

    async def wait_assigned(self) -> None:
        """Wait until the consumer group has given this instance some partitions."""
        while not self._assignment:
            await self._changed.wait()

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self._assignment = frozenset()
        self._notify()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self._assignment = partitions
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _run_handler(
        self,
        handler: Callable[[Any, HandlerContext[TxT]], Any],
        batch: StoreBatch[TxT],
        command: Command,
        env: Envelope,
    ) -> Reply | Exception:
        """The handler's reply (a failure reply for BusinessFailure), or its last error.

        Each run is a savepoint: an error undoes the run's writes before the next run.
        """
        error: Exception | None = None
        for attempt in range(self.handler_attempts):
            if attempt:
                await anyio.sleep(self.handler_backoff_s * 2 ** (attempt - 1))
            try:
                with batch.savepoint():
                    result = await _call(handler, command, HandlerContext(env, batch.db))
                return _check_reply(self.name, env, result)
            except BusinessFailure as failure:
                self.stats.failures += 1
                return failure.reply
            except Exception as exc:
                log.warning(
                    "%s: handler of %s failed (attempt %d of %d): %r",
                    self.name,
                    env.message_type,
                    attempt + 1,
                    self.handler_attempts,
                    exc,
                )
                error = exc
        assert error is not None
        return error

    def handled_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    async def ensure_topics(self, transport: Transport) -> None:
        await transport.ensure_topics(
            {self.commands_topic: self.partitions, dlq_topic(self.commands_topic): 1}
        )

    async def run(
        self,
        transport: Transport,
        *,
        group_id: str | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume and handle commands until cancelled."""
        await self.ensure_topics(transport)
        group = group_id or f"{self.namespace}{self.name}.service"
        async with transport.subscribe([self.commands_topic], group_id=group, listener=self) as sub:
            task_status.started()
            while True:
                records = await sub.getmany(
                    timeout=self.poll_timeout_s, max_records=self.max_records
                )
                if records:
                    # a cancelled run finishes its batch (store, replies, commit) first
                    with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                        await self._process(transport, sub, records)

    async def _process(
        self, transport: Transport, sub: Subscription, records: Sequence[Record]
    ) -> None:
        outgoing: list[OutgoingRecord] = []
        offsets: dict[TopicPartition, int] = {}
        batch = self.store.begin()
        try:
            for record in records:
                offsets[record.tp] = record.offset + 1
                out = await self._handle(batch, record)
                outgoing.append(out)
            batch.commit()
        except BaseException:
            batch.rollback()
            raise
        fault_point("participant.before-reply")
        if outgoing:
            await transport.send(outgoing)
        try:
            await sub.commit(offsets)
        except PartitionsLost as exc:
            log.warning(
                "%s: commit refused (%s); the new owner answers from the stored replies",
                self.name,
                exc,
            )

    async def _handle(self, batch: StoreBatch[TxT], record: Record) -> OutgoingRecord:
        try:
            incoming = decode_record(record, self.codec)
        except DecodeError as exc:
            self.stats.dead_letters += 1
            return dead_letter(record, "DecodeError", str(exc))
        env = incoming.envelope
        handler = self._handlers.get(env.message_type)
        if handler is None:
            self.stats.dead_letters += 1
            return dead_letter(
                record, "NoHandler", f"service {self.name!r} has no handler for {env.message_type}"
            )
        if not env.reply_to:
            self.stats.dead_letters += 1
            return dead_letter(
                record, "NoReplyTo", f"command {env.message_id} has no reply-to header"
            )
        stored = batch.reply_for(env.message_id)
        if stored is not None:
            self.stats.duplicates += 1
        else:
            command = incoming.message
            assert isinstance(command, Command)  # handles() registers Command types only
            outcome = await self._run_handler(handler, batch, command, env)
            if isinstance(outcome, Exception):
                self.stats.dead_letters += 1
                return dead_letter(
                    record,
                    type(outcome).__name__,
                    f"handler raised after {self.handler_attempts} attempt(s): {outcome}",
                )
            reply = outcome
            stored = StoredReply(reply.message_type, self.codec.encode(reply))
            batch.save_reply(env.message_id, stored)
            self.stats.handled += 1
        reply_env = Envelope(
            message_id=reply_id(env.message_id),
            message_type=stored.message_type,
            saga_id=env.saga_id,
            correlation_id=env.correlation_id,
            causation_id=env.message_id,
            saga_type=env.saga_type,
            saga_version=env.saga_version,
        )
        return OutgoingRecord(
            topic=env.reply_to,
            key=env.saga_id.encode(),
            value=stored.payload,
            headers=tuple(reply_env.to_headers()),
        )


async def _call(
    handler: Callable[[Any, HandlerContext[TxT]], Any], command: Command, ctx: HandlerContext[TxT]
) -> Any:
    result = handler(command, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


def _check_reply(service: str, env: Envelope, result: object) -> Reply:
    if not isinstance(result, Reply) or not is_registered(type(result)):
        raise TypeError(
            f"handler of {env.message_type} in service {service!r} "
            f"returned {type(result).__name__}; "
            "it must return a registered Reply (or raise BusinessFailure)"
        )
    return result
