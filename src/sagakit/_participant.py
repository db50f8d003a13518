"""Participants: a `Service` groups command handlers and event reactions, effect-once.

    payments = Service("payments", SqliteStore("payments.db"))

    @payments.handles(ReserveCredit)            # orchestration: a command, a reply
    def reserve_credit(cmd: ReserveCredit, ctx: HandlerContext[sqlite3.Connection]) -> Reply:
        ...
        raise BusinessFailure(CreditLimitExceeded(...))   # becomes the failure reply

    @payments.on(OrderCreated)                   # choreography: an event, maybe an event
    def on_order(evt: OrderCreated, ctx: HandlerContext[sqlite3.Connection]) -> Event | None:
        ...

The framework decodes and validates, deduplicates by input message id (a duplicate
gets the stored output, the handler does not run again), routes a reply to the
command's ``reply-to`` topic, publishes a reaction's event on ``<service>.events``,
and sends what it cannot process to ``<topic>.dlq``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import anyio
from anyio.abc import TaskStatus

from ._clock import Clock, as_clock, within
from ._codec import DEFAULT_CODEC, Codec, encode_record, envelope_of
from ._dlq import DLQ_CONFIGS, dead_letter, dlq_topic
from ._errors import BusinessFailure, DecodeError, DefinitionError, PartitionsLost, TransportError
from ._failure_reply import HandlerFailed
from ._faults import fault_point
from ._idempotency import IdempotencyStore, StoredReply, StoreTransaction, check_handler
from ._interceptors import Interceptor, Scope
from ._messages import (
    Command,
    Envelope,
    Event,
    Message,
    Reply,
    is_registered,
    registered,
    undeclared_reply,
)
from ._metrics import Metrics
from ._observed import Observed
from ._pipeline import Pipeline
from ._runtime import ConsumeLoop, LoopSettings, Sender
from .tracing import Tracing
from .transport._base import (
    MAX_RECORD_BYTES,
    OutgoingRecord,
    Record,
    Subscription,
    TopicPartition,
    Transport,
)

log = logging.getLogger("sagakit.participant")

TxT = TypeVar("TxT")
C = TypeVar("C", bound=Command)
T = TypeVar("T")
E = TypeVar("E", bound=Event)


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
Reaction = Callable[[E, HandlerContext[TxT]], Event | Awaitable[Event | None] | None]
#: A coroutine that runs beside a service while it runs (`Service.task`).
Task = Callable[[Transport], Coroutine[Any, Any, None]]
#: An HTTP handler a service adds to its process's server (`Service.route`).
RouteHandler = Callable[[Any, Transport], Awaitable[Any]]


def events_topic(message_type: str, namespace: str = "") -> str:
    """The topic an event type is published on: ``<service>.events``, from its type name."""
    return f"{namespace}{message_type.split('.', 1)[0]}.events"


@dataclass
class ServiceStats:
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_letters: int = 0
    unknown_types: int = 0
    failed_batches: int = 0


def reply_id(command_message_id: str) -> str:
    """Deterministic id of the reply to a command, so a re-sent reply is a duplicate."""
    return f"{command_message_id}:reply"


def reaction_id(event_message_id: str, service: str) -> str:
    """Deterministic id of the event a service publishes in reaction to another."""
    return f"{event_message_id}>{service}"


class Service(Observed, Generic[TxT]):
    """A participant: handlers for the commands on ``<name>.commands`` and reactions to
    events of other services (choreography)."""

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
        shutdown_grace_s: float = 30.0,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        interceptors: Sequence[Interceptor] = (),
        clock: Clock | None = None,
        concurrency: int = 64,
        partition_concurrency: int | None = None,
        handler_timeout_s: float | None = 30.0,
        sync_handlers: Literal["thread", "inline"] = "thread",
    ) -> None:
        """`handler_attempts`: runs of a handler that raises a non-business error (or takes
        longer than `handler_timeout_s`; None: no limit) before the command is answered with
        `HandlerFailed` and goes to the DLQ (with `handler_backoff_s`, doubling, between
        runs). `concurrency`: records of different sagas handled at once in this process
        (`partition_concurrency` of them in one partition); one saga's records are always
        handled one at a time, in order. Plain (non-async) handlers run in worker threads, so
        a blocking call does not stop the others; `sync_handlers="inline"` runs them on the
        event loop instead, for handlers that never block (a thread hop costs more than a
        handler that only writes to SQLite).
        `shutdown_grace_s`: how long a cancelled run waits for the records in hand."""
        self.name = name
        self._tracing = tracing if tracing is not None else Tracing.disabled()
        self.metrics = metrics if metrics is not None else Metrics(name)
        self.metrics.watch_lag(lambda: self._sub)
        self.interceptors_given: tuple[Interceptor, ...] = tuple(interceptors)
        self._own_interceptors = self.interceptors_given
        self._wire()
        self._loop: ConsumeLoop | None = None
        self.handler_attempts = max(1, handler_attempts)
        self.handler_backoff_s = handler_backoff_s
        self.handler_timeout_s = handler_timeout_s
        self.concurrency = concurrency
        self.simulated_io_s = 0.0  # benchmarks: a wait before each record's transaction
        if sync_handlers not in ("thread", "inline"):
            raise DefinitionError(
                f"service {name!r}: sync_handlers is 'thread' or 'inline', not {sync_handlers!r}"
            )
        self.sync_handlers = sync_handlers
        self.partition_concurrency = partition_concurrency
        self._pipeline: Pipeline | None = None
        self._sender: Sender | None = None
        self._working: set[anyio.CancelScope] = set()
        self.namespace = namespace
        self.store = store
        self.partitions = partitions
        self.codec = codec
        self.max_records = max_records
        self.poll_timeout_s = poll_timeout_s
        self.stats = ServiceStats()
        self._handlers: dict[str, Callable[[Any, HandlerContext[TxT]], Any]] = {}
        self._reactions: dict[str, Callable[[Any, HandlerContext[TxT]], Any]] = {}
        self.tasks: list[Task] = []
        self.routes: list[tuple[str, str, RouteHandler]] = []
        self.shutdown_grace_s = shutdown_grace_s
        self.clock = as_clock(clock)
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._changed = anyio.Event()
        self._inboxes: frozenset[str] = frozenset()  # saga inboxes known to exist
        self._transport: Transport | None = None
        self._inboxes_checked = -1e9

    @property
    def commands_topic(self) -> str:
        return f"{self.namespace}{self.name}.commands"

    @property
    def events_topic(self) -> str:
        """Where this service publishes its domain events."""
        return f"{self.namespace}{self.name}.events"

    def _check_type(self, kind: type[Message], base: type[Message], what: str) -> None:
        if not (isinstance(kind, type) and issubclass(kind, base)):
            raise DefinitionError(f"service {self.name!r}: {kind!r} is not {what} model")
        if not is_registered(kind):
            raise DefinitionError(
                f"service {self.name!r}: {kind.__qualname__} is not registered "
                f'(declare it with type="<service>.{kind.__name__}")'
            )
        if kind.message_type in self._handlers or kind.message_type in self._reactions:
            raise DefinitionError(
                f"service {self.name!r} already has a handler for {kind.message_type}"
            )

    def handles(self, command: type[C]) -> Callable[[Handler[C, TxT]], Handler[C, TxT]]:
        """Register the decorated function as the handler of `command`."""
        self._check_type(command, Command, "a Command")

        def register(fn: Handler[C, TxT]) -> Handler[C, TxT]:
            check_handler(
                self.store, fn, f"handler of {command.message_type} in service {self.name!r}"
            )
            self._handlers[command.message_type] = fn
            return fn

        return register

    def on(self, event: type[E]) -> Callable[[Reaction[E, TxT]], Reaction[E, TxT]]:
        """Register the decorated function as this service's reaction to `event`.

        It returns the event to publish on ``<service>.events`` (or None), and may raise
        BusinessFailure(failure_event) to undo its own writes and publish that instead.
        """
        self._check_type(event, Event, "an Event")

        def register(fn: Reaction[E, TxT]) -> Reaction[E, TxT]:
            check_handler(
                self.store, fn, f"reaction to {event.message_type} in service {self.name!r}"
            )
            self._reactions[event.message_type] = fn
            return fn

        return register

    def task(self, fn: Task) -> Task:
        """Run the decorated coroutine beside the service while it runs (cancelled with it).

        It gets the transport, e.g. to publish events on a timer::

            @orders.task
            async def expire_overdue(transport: Transport) -> None:
                while True:
                    ...
                    await anyio.sleep(1)
        """
        self.tasks.append(fn)
        return fn

    def route(self, method: str, path: str) -> Callable[[RouteHandler], RouteHandler]:
        """Serve the decorated aiohttp handler at `path` in the process running this service.

        It gets the request and the transport (to start sagas, say)::

            @orders.route("POST", "/orders")
            async def place(request: web.Request, transport: Transport) -> web.Response: ...
        """

        def register(fn: RouteHandler) -> RouteHandler:
            self.routes.append((method.upper(), path, fn))
            return fn

        return register

    def configure(
        self,
        *,
        namespace: str | None = None,
        partitions: int | None = None,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        shutdown_grace_s: float | None = None,
        interceptors: Sequence[Interceptor] | None = None,
        clock: Clock | None = None,
        concurrency: int | None = None,
        simulated_io_s: float | None = None,
    ) -> None:
        """Settings of a run, given by whatever runs the service (`App`, `sagakit run`)."""
        if concurrency is not None:
            if concurrency < 1:
                raise ValueError(f"service {self.name!r}: concurrency must be at least 1")
            self.concurrency = concurrency
        if simulated_io_s is not None:
            self.simulated_io_s = max(0.0, simulated_io_s)
        if clock is not None:
            self.clock = clock
        if namespace is not None:
            self.namespace = namespace
        if partitions is not None:
            self.partitions = partitions
        if tracing is not None:
            self._tracing = tracing
        if metrics is not None and metrics is not self.metrics:
            self.metrics = metrics
            metrics.watch_lag(lambda: self._sub)
        if shutdown_grace_s is not None:
            self.shutdown_grace_s = shutdown_grace_s
        if interceptors is not None:
            self._own_interceptors = tuple(interceptors)
        self._wire()

    @property
    def ready(self) -> bool:
        """True once the consumer group has given this instance some partitions."""
        return bool(self._assignment)

    async def wait_ready(self) -> None:
        """Wait until `ready`."""
        await self.wait_assigned()

    def subscribed_topics(self) -> list[str]:
        """The topics this service reads: its commands, and the events it reacts to."""
        topics = {self.commands_topic} if self._handlers else set()
        topics.update(events_topic(t, self.namespace) for t in self._reactions)
        return sorted(topics)

    def event_record(
        self,
        event: Event,
        *,
        saga_id: str,
        message_id: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        parent: str | None = None,
    ) -> OutgoingRecord:
        """A domain event of this service, keyed by `saga_id`, for `transport.send`.

        Its trace span is a child of the current span, or of `parent` (a traceparent).
        """
        if events_topic(event.message_type) != f"{self.name}.events":
            raise DefinitionError(
                f"service {self.name!r} cannot publish {event.message_type}: "
                f"its events are named '{self.name}.<...>'"
            )
        envelope = Envelope(
            message_id=message_id,
            message_type=event.message_type,
            saga_id=saga_id,
            correlation_id=correlation_id or message_id,
            causation_id=causation_id or message_id,
        )
        envelope = self.interceptors.send(
            envelope, self.events_topic, name=f"send {event.message_type}", parent=parent
        )
        return encode_record(self.events_topic, envelope, event, codec=self.codec)

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The command partitions this instance consumes right now."""
        return self._assignment

    async def wait_assigned(self) -> None:
        """Wait until the consumer group has given this instance some partitions."""
        while not self._assignment:
            await self._changed.wait()

    @property
    def _sub(self) -> Subscription | None:
        return self._loop.sub if self._loop is not None else None

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        loop, pipeline = self._loop, self._pipeline
        if loop is not None and pipeline is not None and loop.sub is not None:
            # let the records in hand finish (effect, reply), then commit up to them
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.shutdown_grace_s):
                offsets = await pipeline.revoke(partitions)
                await loop.commit_now(offsets)
        self._assignment = self._assignment - partitions
        self._notify()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self._assignment = partitions
        if self._pipeline is not None:
            self._pipeline.assign(partitions)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _run_handler(
        self,
        handler: Callable[[Any, HandlerContext[TxT]], Any],
        batch: StoreTransaction[TxT],
        message: Message,
        env: Envelope,
        check: Callable[[str, Envelope, object], Message | None],
    ) -> Message | Exception | None:
        """The handler's output (a failure for BusinessFailure), or its last error.

        Each run is a savepoint: an error undoes the run's writes before the next run.
        """
        error: Exception | None = None
        for attempt in range(self.handler_attempts):
            if attempt:
                await self.clock.sleep(self.handler_backoff_s * 2 ** (attempt - 1))
            try:
                async with batch.savepoint():
                    result = await self._call(handler, message, HandlerContext(env, batch.db))
                return check(self.name, env, result)
            except BusinessFailure as failure:
                self.stats.failures += 1
                return check(self.name, env, failure.reply)
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

    async def _call(
        self,
        handler: Callable[[Any, HandlerContext[TxT]], Any],
        message: Message,
        ctx: HandlerContext[TxT],
    ) -> Any:
        if inspect.iscoroutinefunction(handler):
            return await within(self.clock, self.handler_timeout_s, lambda: handler(message, ctx))
        # in a worker thread, so the loop goes on (or inline, if the service says its plain
        # handlers never block); it cannot be cut short (a thread that is abandoned would go
        # on writing in the transaction), so no timeout applies
        if self.sync_handlers == "inline":
            result = handler(message, ctx)
        else:
            result = await anyio.to_thread.run_sync(handler, message, ctx)
        if inspect.isawaitable(result):
            awaitable = result
            result = await within(self.clock, self.handler_timeout_s, lambda: awaitable)
        return result

    def handled_types(self) -> frozenset[str]:
        return frozenset(self._handlers) | frozenset(self._reactions)

    def command_types(self) -> frozenset[str]:
        """The command types this service handles (orchestration)."""
        return frozenset(self._handlers)

    def event_types(self) -> frozenset[str]:
        """The event types this service reacts to (choreography)."""
        return frozenset(self._reactions)

    async def ensure_topics(self, transport: Transport) -> None:
        """Create (or check) what this service reads and writes, and their DLQs."""
        topics = {t: self.partitions for t in self.subscribed_topics()}
        topics[self.commands_topic] = self.partitions
        topics[self.events_topic] = self.partitions
        dlqs = [dlq_topic(t) for t in (*self.subscribed_topics(), self.commands_topic)]
        topics.update(dict.fromkeys(dlqs, 1))
        await transport.ensure_topics(topics, dict.fromkeys(dlqs, DLQ_CONFIGS))

    def bind(self, transport: Transport | None) -> None:
        """Use `transport` from now on (None: none), forgetting what was learnt of another
        (the saga inboxes that exist): a service object may run again, in another test."""
        self._transport = transport
        self._sender = None if transport is None else Sender(transport)
        self._inboxes = frozenset()
        self._inboxes_checked = -1e9

    async def run(
        self,
        transport: Transport,
        *,
        group_id: str | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume and handle commands and events until cancelled."""
        await self.ensure_topics(transport)
        self.bind(transport)
        group = group_id or f"{self.namespace}{self.name}.service"
        topics = self.subscribed_topics() or [self.commands_topic]
        self._pipeline = Pipeline(
            self._work,
            concurrency=self.concurrency,
            partition_concurrency=self.partition_concurrency,
            max_pending=max(self.max_records, 4 * self.concurrency),
        )
        self._loop = ConsumeLoop(
            self,
            transport,
            topics,
            group,
            LoopSettings(self.max_records, self.poll_timeout_s, self.shutdown_grace_s),
        )
        await self._loop.run(task_status=task_status)

    pipelined = True

    async def joined(self, loop: ConsumeLoop) -> None:
        assert self._pipeline is not None and self._sender is not None
        self._pipeline.start(loop.tg)
        self._pipeline.assign(self._assignment)
        for task in self.tasks:
            loop.tg.start_soon(task, loop.transport)

    async def leaving(self) -> None:
        """Nothing to hand over: the stored replies are the service's state."""

    def left(self) -> None:
        self._assignment = frozenset()

    def partitions_lost(self, lost: PartitionsLost) -> None:
        log.warning(
            "%s: commit refused (%s); the new owner answers from the stored replies",
            self.name,
            lost,
        )

    async def dispatch(self, records: Sequence[Record]) -> None:
        """Queue a fetched batch in the pipeline (waits while it is full)."""
        transport, pipeline = self._transport, self._pipeline
        assert transport is not None and pipeline is not None
        await self._refresh_inboxes(transport, records)
        await pipeline.dispatch(records)

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets below which every record is handled and answered."""
        return self._pipeline.committable() if self._pipeline is not None else {}

    async def drain(self) -> None:
        """Wait for the records in hand (the loop is stopping), at most the shutdown
        grace; then cut off what is still running (rolled back, it is read again)."""
        if self._pipeline is not None:
            with anyio.move_on_after(self.shutdown_grace_s):
                await self._pipeline.drain()
        for scope in list(self._working):
            log.warning("%s: cutting off a record still in hand after the grace", self.name)
            scope.cancel()

    async def _work(self, record: Record) -> bool:
        """Handle one record in its own transaction, then send what it produced; False if
        its partition went away (or the run stopped) before it was answered."""
        done = False
        # not cancelled with the loop (a commit or a send cut in half fails unobserved);
        # `drain` cuts it off if it outlasts the shutdown grace
        with anyio.CancelScope(shield=True) as scope:
            self._working.add(scope)
            try:
                if self.simulated_io_s:
                    await self.clock.sleep(self.simulated_io_s)
                outgoing = await self._transact(record)
                if outgoing is not None:
                    fault_point("participant.before-reply")
                    done = not outgoing or await self._deliver(record, outgoing)
            finally:
                self._working.discard(scope)
        return done

    async def _transact(self, record: Record) -> list[OutgoingRecord] | None:
        """The record's outcome, committed; retried while the store fails."""

        async def once() -> list[OutgoingRecord]:
            async with self.store.transaction() as tx:
                outgoing = await self._handle(tx, record)
            return outgoing

        return await self._keep_trying(record, "handling", once, Exception)

    async def handle_one(self, record: Record) -> bool:
        """Handle one record now, outside a consume loop (what `ServiceHarness` does)."""
        if self._transport is None:
            raise RuntimeError(f"service {self.name!r} has no transport: bind() one first")
        await self._refresh_inboxes(self._transport, [record])
        return await self._work(record)

    async def _deliver(self, record: Record, outgoing: list[OutgoingRecord]) -> bool:
        """Send a record's outcome; retried while sends fail (the outcome is stored, so
        a redelivered record is answered the same)."""
        sender = self._sender
        assert sender is not None, "bind() the service to a transport first"

        async def once() -> bool:
            await sender.send(outgoing)
            return True

        sent = await self._keep_trying(record, "sending the outcome of", once, TransportError)
        return sent is not None

    async def _keep_trying(
        self,
        record: Record,
        doing: str,
        once: Callable[[], Awaitable[T]],
        errors: type[Exception],
    ) -> T | None:
        """`once()` until it works, backing off; None if the record stopped being ours."""
        failures = 0
        while True:
            try:
                return await once()
            except errors as exc:
                failures += 1
                self.stats.failed_batches += 1
                log.error(
                    "%s: %s %s[%d]@%d failed (try %d), trying again: %r",
                    self.name,
                    doing,
                    record.topic,
                    record.partition,
                    record.offset,
                    failures,
                    exc,
                )
                if not await self._back_off(record, failures):
                    return None

    async def _back_off(self, record: Record, failures: int) -> bool:
        """Wait before trying a record again; False if it is no longer ours."""
        await anyio.sleep(min(0.05 * 2 ** (failures - 1), 5.0))
        loop = self._loop
        return record.tp in self._assignment and loop is not None and loop.running

    async def _refresh_inboxes(self, transport: Transport, records: Sequence[Record]) -> None:
        """Learn which saga inboxes exist when a command names one not seen yet.

        At most once a second: a reply-to is written by whoever sent the command. (An
        orchestrator creates its inbox before it joins its group, seconds before it sends
        a command.)
        """
        wanted = {
            value
            for r in records
            if r.topic == self.commands_topic
            for name, value in r.headers
            if name == "reply-to" and value is not None
        }
        names = {v.decode(errors="replace") for v in wanted}
        inboxes = {n for n in names if n.startswith(self.namespace) and n.endswith(".inbox")}
        if inboxes <= self._inboxes or anyio.current_time() - self._inboxes_checked < 1.0:
            return
        self._inboxes_checked = anyio.current_time()
        self._inboxes = frozenset(
            t
            for t in await transport.existing_topics()
            if t.startswith(self.namespace) and t.endswith(".inbox")
        )

    async def _handle(self, batch: StoreTransaction[TxT], record: Record) -> list[OutgoingRecord]:
        """The reply, event and/or dead letter for one record (none: nothing to say)."""
        try:
            env = envelope_of(record)
        except DecodeError as exc:
            return [self._dead(record, "DecodeError", str(exc))]
        if record.topic != self.commands_topic and env.message_type not in self._reactions:
            if registered(env.message_type) is None:
                self._unknown(record, env)
            return []  # an event of another service this one does not react to
        with self.interceptors.handle(self.name, record, env) as span:
            out = await self._handle_traced(batch, record, env, span)
            for o in out:
                if o.topic.endswith(".dlq"):
                    error_type = dict(o.headers).get("error-type", b"") or b""
                    span.error(error_type.decode(errors="replace"), "dead-lettered")
            return out

    async def _handle_traced(
        self, batch: StoreTransaction[TxT], record: Record, env: Envelope, span: Scope
    ) -> list[OutgoingRecord]:
        on_events_topic = record.topic != self.commands_topic
        table = self._reactions if on_events_topic else self._handlers
        handler = table.get(env.message_type)
        if not on_events_topic:
            bad_reply_to = self._check_reply_to(env)
            if bad_reply_to is not None:  # nowhere to answer: the saga's timeout must do
                return [self._dead(record, "BadReplyTo", bad_reply_to)]
            if handler is None:
                why = f"service {self.name!r} has no handler for {env.message_type}"
                failed = self._failure(env, "NoHandler", why, 0)
                return [self._dead(record, "NoHandler", why), self._output(env, failed, False)]
        assert handler is not None  # reactions were filtered before the span opened
        dead: OutgoingRecord | None = None
        stored = await batch.reply_for(env.message_id)
        if stored is not None:
            self.stats.duplicates += 1
            self._count(env, "duplicate")
        else:
            outcome: Message | Exception | None
            try:
                message = self.codec.decode(env.message_type, record.value)
            except DecodeError as exc:
                dead = self._dead(record, "DecodeError", str(exc))
                outcome = exc
            else:
                check = _check_event if on_events_topic else _check_reply
                outcome = await self._run_handler(handler, batch, message, env, check)
                if isinstance(outcome, Exception):
                    span.exception(outcome)
                    dead = self._dead(
                        record,
                        type(outcome).__name__,
                        f"handler raised after {self.handler_attempts} attempt(s): "
                        f"{_describe(outcome)}",
                    )
            if isinstance(outcome, Exception):
                assert dead is not None
                if on_events_topic:
                    return [dead]
                attempts = 0 if isinstance(outcome, DecodeError) else self.handler_attempts
                stored = self._failure(env, type(outcome).__name__, _describe(outcome), attempts)
            elif outcome is None:
                stored = StoredReply("", b"")
            else:
                stored = StoredReply(outcome.message_type, self.codec.encode(outcome))
            limit = getattr(self._transport, "max_record_bytes", MAX_RECORD_BYTES) - 16384
            if len(stored.payload) > limit:
                why = (
                    f"the {stored.message_type} it returned is {len(stored.payload)} bytes, "
                    f"more than the {limit} a record may hold"
                )
                dead = self._dead(record, "TooLarge", why)
                if on_events_topic:
                    return [dead]
                stored = self._failure(env, "TooLarge", why, self.handler_attempts)
            # stored, so a redelivered command gets the same answer without running again
            await batch.save_reply(env.message_id, stored)
            self.stats.handled += 1
            self._count(env, stored.message_type or "none")
        span.set(message_output=stored.message_type or None)
        out = [] if dead is None else [dead]
        if stored.message_type:
            out.append(self._output(env, stored, on_events_topic))
        return out

    def _failure(self, env: Envelope, error_type: str, error: str, attempts: int) -> StoredReply:
        """The framework's failure reply to a command the service could not handle."""
        failed = HandlerFailed(
            service=self.name,
            command_type=env.message_type[:200],
            error_type=error_type[:200],
            error=error[:2000],
            attempts=attempts,
        )
        return StoredReply(failed.message_type, self.codec.encode(failed))

    def _output(self, env: Envelope, stored: StoredReply, on_events_topic: bool) -> OutgoingRecord:
        """The record of a handler's reply (to the command's reply-to) or a reaction's
        event (on this service's events topic)."""
        if on_events_topic:
            out_env = Envelope(
                message_id=reaction_id(env.message_id, self.name),
                message_type=stored.message_type,
                saga_id=env.saga_id,
                correlation_id=env.correlation_id,
                causation_id=env.message_id,
            )
            topic = self.events_topic
        else:
            out_env = Envelope(
                message_id=reply_id(env.message_id),
                message_type=stored.message_type,
                saga_id=env.saga_id,
                correlation_id=env.correlation_id,
                causation_id=env.message_id,
                saga_type=env.saga_type,
                saga_version=env.saga_version,
            )
            assert env.reply_to is not None
            topic = env.reply_to
        out_env = self.interceptors.send(out_env, topic, name=f"send {stored.message_type}")
        return OutgoingRecord(
            topic=topic,
            key=env.saga_id.encode(),
            value=stored.payload,
            headers=tuple(out_env.to_headers()),
        )

    def _check_reply_to(self, env: Envelope) -> str | None:
        """Why a command's reply-to is not acceptable, or None.

        A reply goes only to the inbox of the saga that sent the command, named by its
        saga-type header, in this service's namespace, and only if that topic exists:
        never to a journal, a DLQ or any other topic the sender names.
        """
        if not env.reply_to:
            return f"command {env.message_id} has no reply-to header"
        if not env.saga_type:
            return f"command {env.message_id} has no saga-type header"
        expected = f"{self.namespace}{env.saga_type}.inbox"
        if env.reply_to != expected:
            return (
                f"command {env.message_id} of saga type {env.saga_type!r} asks for its reply "
                f"on {env.reply_to[:200]!r}; replies go only to that saga's inbox {expected!r}"
            )
        if expected not in self._inboxes:
            return (
                f"command {env.message_id} asks for its reply on {expected!r}, which does not exist"
            )
        return None

    def _unknown(self, record: Record, env: Envelope) -> None:
        self.stats.unknown_types += 1
        if self.interceptors.unknown_type(self.name, record.topic, env.message_type):
            log.warning(
                "%s: skipping records of unknown message type %r on %s (first at offset %d of "
                "partition %d); sagakit_unknown_messages_total counts them",
                self.name,
                env.message_type[:200],
                record.topic,
                record.offset,
                record.partition,
            )

    def _dead(self, record: Record, error_type: str, message: str) -> OutgoingRecord:
        self.stats.dead_letters += 1
        out = dead_letter(record, error_type, message, consumer=self.name)
        self.interceptors.dead_letter(self.name, out, error_type)
        return out

    def _count(self, env: Envelope, outcome: str) -> None:
        self.interceptors.handled(self.name, env, outcome)


def _describe(error: Exception) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "the handler did not finish in time (handler_timeout_s)"
    return str(error) or type(error).__name__


def _check_reply(service: str, env: Envelope, result: object) -> Message | None:
    if not isinstance(result, Reply) or not is_registered(type(result)):
        raise TypeError(
            f"handler of {env.message_type} in service {service!r} "
            f"returned {type(result).__name__}; "
            "it must return a registered Reply (or raise BusinessFailure)"
        )
    command = registered(env.message_type)
    if isinstance(command, type) and issubclass(command, Command):
        wrong = undeclared_reply(command, result)
        if wrong is not None:
            raise TypeError(f"handler of {env.message_type} in service {service!r}: {wrong}")
    return result


def _check_event(service: str, env: Envelope, result: object) -> Message | None:
    if result is None:
        return None
    if not isinstance(result, Event) or not is_registered(type(result)):
        raise TypeError(
            f"reaction to {env.message_type} in service {service!r} "
            f"returned {type(result).__name__}; it must return a registered Event or None"
        )
    if events_topic(result.message_type) != f"{service}.events":
        raise TypeError(
            f"reaction in service {service!r} returned {result.message_type}; a service "
            f"publishes only its own events ('{service}.<...>')"
        )
    return result
