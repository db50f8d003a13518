"""The orchestrator: consumes ``<saga>.inbox``, decides, journals, sends, commits.

Per batch, in this order: decide every record (each saga serial, in offset order) →
append the journal records and wait for their acks → send the commands (and dead
letters) and wait for their acks → commit the inbox offsets. A crash anywhere
redelivers the batch; what the journal already holds is skipped by message id, and
commands without a recorded reply are re-sent when a partition is restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._clock import Clock, as_clock, wait_until
from ._codec import DEFAULT_CODEC, Codec, decode_record, encode_record
from ._definition import Saga
from ._dlq import DLQ_CONFIGS, dead_letter, dlq_topic
from ._errors import DecodeError, DefinitionError, PartitionsLost, TransportError
from ._evaluator import (
    EndedSaga,
    Notice,
    PendingCommand,
    Phase,
    SagaInstance,
    SagaStatus,
    Timer,
    Transition,
    decide,
    ended_notice,
    timers,
)
from ._faults import fault_point
from ._interceptors import Interceptor, Interceptors
from ._journal import decode_instance, decode_transition, encode_transition, journal_entries
from ._messages import CompensateChild, Envelope, StartChild, TimerFired
from ._metrics import Metrics
from ._observed import Observed
from ._readers import watch_readers
from ._runtime import ConsumeLoop, LoopSettings, first_offsets
from ._snapshots import History, evict, forget_expired, restore_partition, write_snapshot
from ._timers import TimerSchedule
from .eventlog._base import EventLog
from .eventlog.kafka import KafkaEventLog
from .tracing import Tracing
from .transport._base import (
    MAX_RECORD_BYTES,
    OutgoingRecord,
    Record,
    Subscription,
    TopicPartition,
    Transport,
    record_size,
)

log = logging.getLogger("sagakit.orchestrator")


@dataclass
class _Partition:
    """What this instance holds for one inbox partition it owns."""

    epoch: int = 0
    instances: dict[str, SagaInstance] = field(default_factory=dict)
    #: sagas that ended and left memory, for deduplication (see `History`)
    ended: dict[str, EndedSaga] = field(default_factory=dict)
    ready: bool = False
    restore_scope: anyio.CancelScope | None = None
    #: journal records written since the latest snapshot, and when that was (clock ms)
    changes: int = 0
    snapshot_ms: int = 0


@dataclass
class _Batch:
    """What one consumed batch produces, to journal, send and schedule together."""

    journal: dict[int, list[tuple[str, bytes]]] = field(default_factory=dict)  # encoded
    epochs: dict[int, int] = field(default_factory=dict)  # writer's claim epoch, per partition
    transitions: list[Transition] = field(default_factory=list)
    scheduled: list[tuple[TopicPartition, str, tuple[Timer, ...]]] = field(default_factory=list)
    outgoing: list[OutgoingRecord] = field(default_factory=list)
    dead: int = 0

    def dead_letter(
        self, record: OutgoingRecord, interceptors: Interceptors, component: str, error_type: str
    ) -> None:
        self.outgoing.append(record)
        self.dead += 1
        interceptors.dead_letter(component, record, error_type)


@dataclass
class OrchestratorStats:
    batches: int = 0
    records: int = 0
    transitions: int = 0
    commands_sent: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    restores: int = 0
    snapshots: int = 0
    fenced_records: int = 0
    foreign_records: int = 0
    timers_fired: int = 0
    failed_batches: int = 0


def command_envelope(
    saga: Saga[Any], instance: SagaInstance, pending: PendingCommand, namespace: str = ""
) -> Envelope:
    command = pending.command
    if isinstance(command, (StartChild, CompensateChild)):  # to a child saga's inbox
        return Envelope(
            message_id=pending.message_id,
            message_type=command.message_type,
            saga_id=command.child_id,
            correlation_id=instance.correlation_id,
            causation_id=pending.causation_id,
            saga_type=command.child_type,
            reply_to=namespace + saga.inbox_topic,
        )
    return Envelope(
        message_id=pending.message_id,
        message_type=command.message_type,
        saga_id=instance.saga_id,
        correlation_id=instance.correlation_id,
        causation_id=pending.causation_id,
        saga_type=saga.name,
        saga_version=str(instance.version),
        reply_to=namespace + saga.inbox_topic,
    )


def saga_versions(sagas: Sequence[Saga[Any]]) -> dict[int, Saga[Any]]:
    """The versions of one saga type by number; DefinitionError if they are not one type,
    or two different definitions share a number."""
    versions: dict[int, Saga[Any]] = {}
    for saga in sagas:
        if saga.name != sagas[0].name:
            raise DefinitionError(
                f"one orchestrator runs versions of one saga type: {sagas[0].name!r} and "
                f"{saga.name!r} are two"
            )
        other = versions.get(saga.version)
        if other is not None and other is not saga and other.shape != saga.shape:
            raise DefinitionError(
                f"saga {saga.name!r} has two definitions of version {saga.version} with "
                "different shapes: give the changed one a new version number"
            )
        versions.setdefault(saga.version, saga)
    return versions


def check_versions(
    versions: Mapping[int, Saga[Any]], instances: Iterable[SagaInstance], partition: int
) -> None:
    """DefinitionError listing live sagas whose version is not given, or whose version
    number now has another shape than the one they started on."""
    missing: dict[int, list[str]] = {}
    changed: dict[int, list[str]] = {}
    for i in instances:
        if i.status.terminal:
            continue
        definition = versions.get(i.version)
        if definition is None:
            missing.setdefault(i.version, []).append(i.saga_id)
        elif i.shape is not None and i.shape != definition.shape:
            changed.setdefault(i.version, []).append(i.saga_id)
    name = next(iter(versions.values())).name
    problems = []
    for version, ids in sorted(missing.items()):
        problems.append(
            f"version {version}, which this orchestrator does not run, still has "
            f"{len(ids)} live saga(s) in partition {partition}: {', '.join(sorted(ids)[:5])}"
            + (" ..." if len(ids) > 5 else "")
            + f"; run it beside the others (App(sagas=[...{name} v{version}, ...]))"
        )
    for version, ids in sorted(changed.items()):
        problems.append(
            f"version {version} has changed shape since {len(ids)} live saga(s) started on "
            f"it ({', '.join(sorted(ids)[:5])}): give the changed definition a new version "
            "number and keep the old one running"
        )
    if problems:
        raise DefinitionError(f"saga {name!r}: " + "; ".join(problems))


class Orchestrator(Observed):
    """Runs one saga definition. Several instances may share the work (one consumer group).

    The owner of inbox partition *p* is the only writer of journal partition *p*.
    """

    def __init__(
        self,
        saga: Saga[Any],
        transport: Transport,
        *,
        event_log: EventLog | None = None,
        partitions: int = 8,
        group_id: str | None = None,
        namespace: str = "",
        codec: Codec = DEFAULT_CODEC,
        max_records: int = 500,
        poll_timeout_s: float = 0.1,
        on_transition: Callable[[Transition], None] | None = None,
        clock: Clock | Callable[[], float] | None = None,
        shutdown_grace_s: float = 30.0,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        interceptors: Sequence[Interceptor] = (),
        reader_check_s: float | None = 30.0,
        versions: Sequence[Saga[Any]] = (),
        history: History | None = None,
        checkpoints: EventLog | None = None,
    ) -> None:
        """`tracing` and `metrics` are interceptors too; `interceptors` are yours, called
        after them (see `Interceptor`). `reader_check_s` after joining, the orchestrator
        warns about each command topic no consumer group reads (None: it does not check).

        `versions`: other versions of the saga to run beside `saga` (one orchestrator runs
        them all). A new saga starts on the newest, or on the version its start request
        names; every saga goes on with the version it started on.

        `history`: snapshots, how long ended sagas are remembered, the journal's retention
        (see `History`). `checkpoints`: where the snapshots are listed (by default the
        ``<saga>.checkpoints`` topic; with a memory `event_log`, give a memory one too)."""
        self.versions = saga_versions([saga, *versions])
        saga = self.versions[max(self.versions)]
        self.saga = saga
        self.namespace = namespace
        self.inbox_topic = namespace + saga.inbox_topic
        self.on_transition = on_transition
        self.transport = transport
        self.event_log = (
            event_log
            if event_log is not None
            else KafkaEventLog(transport, namespace + saga.journal_topic)
        )
        self.checkpoints = (
            checkpoints
            if checkpoints is not None
            else KafkaEventLog(transport, namespace + saga.checkpoints_topic)
        )
        self.history = history if history is not None else History()
        self.partitions = partitions
        self.group_id = group_id or f"{namespace}{saga.name}.orchestrator"
        self.codec = codec
        self.max_records = max_records
        self.poll_timeout_s = poll_timeout_s
        self.stats = OrchestratorStats()
        self._owned: dict[TopicPartition, _Partition] = {}
        self._loop: ConsumeLoop | None = None
        self._unhandled_assignment: frozenset[TopicPartition] = frozenset()
        self._changed = anyio.Event()
        self._timers = TimerSchedule()
        self._dirty = anyio.Event()
        self.clock = as_clock(clock)
        self.shutdown_grace_s = shutdown_grace_s
        self.timers_in_flight = 0  # popped as due, their records not yet sent
        self.reader_check_s = reader_check_s
        self._max_record = getattr(transport, "max_record_bytes", MAX_RECORD_BYTES)
        self._own_interceptors = tuple(interceptors)
        self._tracing = tracing if tracing is not None else Tracing.disabled()
        self.metrics = metrics if metrics is not None else Metrics("saga-orchestrator")
        self._wire()
        self.metrics.in_flight.labels(saga.name, str(saga.version)).set_function(
            lambda: sum(1 for i in self.instances() if not i.status.settled)
        )
        self.metrics.needing_attention.labels(saga.name, str(saga.version)).set_function(
            lambda: sum(
                1 for i in self.instances() if i.status is SagaStatus.FAILED_NEEDS_ATTENTION
            )
        )
        self.metrics.oldest_running.labels(saga.name, str(saga.version)).set_function(
            self._oldest_running_s
        )
        held = self.metrics.held
        held.labels(saga.name, str(saga.version), "instances").set_function(
            lambda: sum(len(p.instances) for p in self._owned.values())
        )
        held.labels(saga.name, str(saga.version), "ended").set_function(
            lambda: sum(len(p.ended) for p in self._owned.values())
        )
        self.metrics.watch_lag(lambda: self._sub)
        self.name = f"orchestrator:{saga.name}"

    def _oldest_running_s(self) -> float:
        started = [i.started_ms for i in self.instances() if not i.status.settled]
        return max(0.0, self.clock.time() - min(started) / 1000) if started else 0.0

    @property
    def _sub(self) -> Subscription | None:
        return self._loop.sub if self._loop is not None else None

    # public -----------------------------------------------------------------------------
    async def ensure_topics(self) -> None:
        """Create inbox, journal and checkpoints (same partition count), DLQ and command
        topics, or check them."""
        dlq = dlq_topic(self.inbox_topic)
        topics = {self.inbox_topic: self.partitions, dlq: 1}
        for version in self.versions.values():
            for topic in version.command_topics():
                topics[self.namespace + topic] = self.partitions
        await self.transport.ensure_topics(topics, {dlq: DLQ_CONFIGS})
        configs = self.history.topic_configs()
        await self.event_log.ensure(self.partitions, configs)
        await self.checkpoints.ensure(self.partitions, configs)

    def instance(self, saga_id: str) -> SagaInstance | None:
        """The current instance of `saga_id`, if one of this orchestrator's partitions holds it."""
        for part in self._owned.values():
            found = part.instances.get(saga_id)
            if found is not None:
                return found
        return None

    def status(self, saga_id: str) -> SagaStatus | None:
        """The status of `saga_id` if one of this orchestrator's partitions knows it: a
        live saga, or one that ended and left memory (inside the dedupe window)."""
        for part in self._owned.values():
            found = part.instances.get(saga_id) or part.ended.get(saga_id)
            if found is not None:
                return found.status
        return None

    def instances(self) -> list[SagaInstance]:
        return [i for part in list(self._owned.values()) for i in part.instances.values()]

    def owned_partitions(self) -> frozenset[int]:
        return frozenset(tp.partition for tp, part in self._owned.items() if part.ready)

    @property
    def ready(self) -> bool:
        """True when this instance owns partitions and has restored all of them."""
        return bool(self._owned) and all(p.ready for p in self._owned.values())

    async def wait_ready(self) -> None:
        """Wait until `ready` (the group has settled and every owned partition is restored)."""
        while not self.ready:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until cancelled. Reports started once it has joined the group."""
        await self.ensure_topics()
        self._loop = ConsumeLoop(
            self,
            self.transport,
            [self.inbox_topic],
            self.group_id,
            LoopSettings(self.max_records, self.poll_timeout_s, self.shutdown_grace_s),
        )
        await self._loop.run(task_status=task_status)

    async def joined(self, loop: ConsumeLoop) -> None:
        loop.tg.start_soon(self._fire_timers)
        loop.tg.start_soon(self._snapshot_on_time, loop)
        if self.reader_check_s is not None:  # does anything read the command topics?
            args = (self.saga, self.transport, self.metrics, self.namespace, self.reader_check_s)
            loop.tg.start_soon(watch_readers, *args)
        if self._unhandled_assignment:
            await self.on_assigned(self._unhandled_assignment)

    async def leaving(self) -> None:
        loop = self._loop
        if loop is None:
            return
        async with loop.lock:
            await self._hand_over(list(self._owned.items()))

    async def _hand_over(self, parts: list[tuple[TopicPartition, _Partition]]) -> None:
        """Snapshot the partitions about to move that changed since their latest snapshot
        (under the loop's lock): their next owner replays no tail."""
        for tp, part in parts:
            if part.ready and part.changes:
                await self._snapshot(tp.partition, part)

    def left(self) -> None:
        self._owned.clear()
        self._unhandled_assignment = frozenset()

    # rebalance listener -----------------------------------------------------------------
    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self._unhandled_assignment -= partitions
        loop = self._loop
        if loop is None:
            return
        async with loop.lock:  # let the in-flight batch finish its append, sends and commit
            await loop.commit.wait()
            await self._hand_over([(tp, self._owned[tp]) for tp in partitions if tp in self._owned])
            for tp in partitions:
                part = self._owned.pop(tp, None)
                self._timers.drop_partition(tp)
                if part is not None and part.restore_scope is not None:
                    part.restore_scope.cancel()
            self._notify()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        loop = self._loop
        if loop is None or loop.sub is None or not loop.running:
            self._unhandled_assignment = partitions  # assigned before the loop had joined
            return
        self._unhandled_assignment = frozenset()
        loop.sub.pause(partitions)
        for tp in partitions:
            part = _Partition()
            self._owned[tp] = part
            loop.tg.start_soon(self._restore, tp, part)

    def _command_record(
        self,
        instance: SagaInstance,
        pending: PendingCommand,
        *,
        reason: str | None = None,
        parent: str | None = None,
    ) -> OutgoingRecord:
        topic = self.namespace + pending.topic
        envelope = command_envelope(self.saga, instance, pending, self.namespace)
        if self.interceptors.sends:
            if pending.phase is Phase.COMPENSATE:
                name = f"compensate {pending.step}"
            elif pending.attempt > 1:
                name = f"retry {pending.step}"
            else:
                name, reason = f"send {pending.step}", None
            envelope = self.interceptors.send(
                envelope,
                topic,
                name=name,
                parent=parent,
                saga_step=pending.step,
                saga_phase=pending.phase.value,
                saga_attempt=pending.attempt,
                saga_state=instance.status.value,
                saga_reason=reason,
            )
        return encode_record(topic, envelope, pending.command, codec=self.codec)

    def _notice_record(self, notice: Notice, instance: SagaInstance) -> OutgoingRecord:
        """A child's end, to its parent's inbox (the topic it was started with)."""
        envelope = Envelope(
            message_id=notice.message_id,
            message_type=notice.message.message_type,
            saga_id=notice.saga_id,
            correlation_id=instance.correlation_id,
            causation_id=notice.causation_id,
        )
        envelope = self.interceptors.send(
            envelope, notice.topic, name="saga ended", parent=instance.trace
        )
        return encode_record(notice.topic, envelope, notice.message, codec=self.codec)

    def _definition(self, instance: SagaInstance | EndedSaga | None, env: Envelope) -> Saga[Any]:
        """The version that decides: the saga's own, else the one its start names, else the
        newest (which refuses a start naming a version this orchestrator does not run)."""
        if instance is not None:
            return self.versions.get(instance.version, self.saga)
        if env.saga_version is not None and env.saga_version.isdigit():
            return self.versions.get(int(env.saga_version), self.saga)
        return self.saga

    # restore ------------------------------------------------------------------------------
    async def _restore(self, tp: TopicPartition, part: _Partition) -> None:
        """Restore `tp`, trying again (with back-off) while the broker cannot be reached."""
        delay = 0.5
        while self._owned.get(tp) is part:
            try:
                await self._restore_once(tp, part)
                return
            except TransportError as exc:
                log.error("restoring %s[%d] failed, trying again in %.1fs: %s", *tp, delay, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _restore_once(self, tp: TopicPartition, part: _Partition) -> None:
        began = time.perf_counter()
        with anyio.CancelScope() as scope:
            part.restore_scope = scope
            replayed = await restore_partition(
                self.event_log,
                tp.partition,
                lambda data: decode_transition(data, self.versions),
                checkpoints=self.checkpoints,
                decode_instance=lambda data: decode_instance(data, self.versions),
            )
            check_versions(self.versions, replayed.instances.values(), tp.partition)
            if self._owned.get(tp) is not part:
                return
            part.epoch = replayed.epoch
            part.instances = replayed.instances
            part.ended = replayed.ended
            part.snapshot_ms = self._now_ms()
            part.changes = replayed.applied if replayed.snapshot is None else 0
            resend = [
                self._command_record(inst, pending, parent=inst.trace)
                for inst in replayed.instances.values()
                for pending in inst.in_flight
            ]
            # A child that ended may not have told its parent yet (the parent drops
            # repeats). One that ended before the snapshot has: a snapshot is written
            # after its batch's sends were acknowledged.
            touched = replayed.touched
            resend += [
                self._notice_record(notice, inst)
                for inst in replayed.instances.values()
                if (touched is None or inst.saga_id in touched)
                and (notice := ended_notice(inst)) is not None
            ]
            # what the dedupe window let go while the partition had no owner leaves memory
            # now, not at the next snapshot (which an idle partition may never need); what
            # ended inside the window stays as the journal has it (a repeat of a message
            # it took, re-delivered after a crash, is still recognised as one)
            forget_expired(part.instances, part.ended, self._now_ms(), self._window_ms)
            if resend:
                await self.transport.send(resend)
                self.stats.commands_sent += len(resend)
            if self._owned.get(tp) is not part or self._sub is None:
                return
            part.ready = True
            part.restore_scope = None
            for inst in replayed.instances.values():
                self._timers.set(tp, inst.saga_id, timers(inst))
            self.stats.restores += 1
            self._changed_partition()  # its snapshot schedule starts now
            self.stats.fenced_records += replayed.fenced
            self.stats.foreign_records += replayed.foreign
            self._sub.resume([tp])
            self._notify()
            snapshot = replayed.snapshot
            source = "replay" if snapshot is None else "snapshot"
            self.metrics.restore_seconds.labels(self.saga.name, source).observe(
                time.perf_counter() - began
            )
            self.metrics.restored_records.labels(self.saga.name).inc(replayed.applied)
            log.info(
                "restored %s[%d]: epoch %d, %d sagas (%d ended kept for deduplication), "
                "%s, %d records after it, %d fenced, %d re-sent",
                tp.topic,
                tp.partition,
                replayed.epoch,
                len(replayed.instances),
                len(replayed.ended),
                "no snapshot"
                if snapshot is None
                else f"snapshot at journal offset {snapshot.offset}",
                replayed.applied,
                replayed.fenced,
                len(resend),
            )

    # the batch ------------------------------------------------------------------------------
    async def process(self, records: Sequence[Record]) -> dict[TopicPartition, int] | None:
        """Decide, journal and send one batch; the inbox offsets to commit (None: failed)."""
        sub = self._sub
        assert sub is not None
        batch = _Batch()
        offsets: dict[TopicPartition, int] = {}
        rewind: dict[TopicPartition, int] = {}
        for record in records:
            tp = record.tp
            part = self._owned.get(tp)
            if part is None:
                # Revoked after this batch was fetched: the new owner reads it from the
                # committed offset.
                continue
            if not part.ready:
                # Fetched before the partition was paused for its restore: read it again
                # once restored. (Whatever this instance processed before is journaled.)
                rewind.setdefault(tp, record.offset)
                continue
            offsets[tp] = record.offset + 1
            self._handle(record, part, batch)
        assigned = sub.assignment()
        for tp, offset in rewind.items():
            if tp in assigned:
                sub.seek(tp, offset)
        try:
            if batch.journal:
                fault_point("orchestrator.before-append")
                limit = self._max_record - 4096  # room for the record's headers
                await self.event_log.append(
                    [
                        (p, entry)
                        for p, encoded in batch.journal.items()
                        for entry in journal_entries(encoded, batch.epochs[p], limit)
                    ]
                )
            if batch.outgoing:
                fault_point("orchestrator.before-send")
                await self.transport.send(batch.outgoing)
        except TransportError as exc:
            self.batch_failed(records, str(exc))
            return None
        for tp, saga_id, due in batch.scheduled:
            if tp in self._owned:
                self._timers.set(tp, saga_id, due)
        for p, encoded in batch.journal.items():
            part = self._owned.get(TopicPartition(self.inbox_topic, p))
            if part is not None and part.ready:
                if not part.changes:
                    self._changed_partition()
                part.changes += len(encoded)
                if part.changes >= self.history.snapshot_every:
                    await self._snapshot(p, part)
        self.stats.batches += 1
        self.stats.records += len(records)
        self.stats.transitions += len(batch.transitions)
        self.stats.commands_sent += len(batch.outgoing) - batch.dead
        self.stats.dead_letters += batch.dead
        if self.on_transition is not None:
            for t in batch.transitions:
                self.on_transition(t)
        if offsets:
            fault_point("orchestrator.before-commit")
        return offsets

    def batch_failed(self, records: Sequence[Record], why: str) -> None:
        """A batch's journal append or sends failed: nothing of it is committed.

        Its decisions may be in memory and partly in the journal, so each of its
        partitions is restored from the journal again (which re-sends unanswered
        commands) and read again from the batch's first record; what the journal already
        holds is skipped as duplicates then.
        """
        self.stats.failed_batches += 1
        firsts = first_offsets(records)
        loop = self._loop
        if loop is None or loop.sub is None:
            return
        sub = loop.sub
        log.error(
            "a batch of %d record(s) failed and is read again after a restore of its "
            "partitions %s: %s",
            len(records),
            sorted(tp.partition for tp in firsts),
            why,
        )
        assigned = sub.assignment()
        for tp, offset in firsts.items():
            current = self._owned.get(tp)
            if current is None or not current.ready or tp not in assigned:
                continue  # not ours any more, or being restored already
            part = _Partition()
            self._owned[tp] = part
            self._timers.drop_partition(tp)
            sub.pause([tp])
            sub.seek(tp, offset)
            loop.tg.start_soon(self._restore, tp, part)
        self._notify()

    def partitions_lost(self, lost: PartitionsLost) -> None:
        """A commit was refused: the partitions no longer in the assignment are gone."""
        log.warning("commit refused, dropping lost partitions: %s", lost)
        sub = self._sub
        still = sub.assignment() if sub is not None else frozenset()
        for tp in list(self._owned):
            if tp not in still:
                del self._owned[tp]
                self._timers.drop_partition(tp)

    def _handle(self, record: Record, part: _Partition, batch: _Batch) -> None:
        """Decide one record, adding its journal records, commands and timers to `batch`."""
        interceptors, name = self.interceptors, self.name
        try:
            incoming = decode_record(record, self.codec)
        except DecodeError as exc:
            batch.dead_letter(
                dead_letter(record, "DecodeError", str(exc)), interceptors, name, "DecodeError"
            )
            with interceptors.handle(name, record, None) as span:
                span.error("DecodeError", str(exc))
            return
        env = incoming.envelope
        with interceptors.handle(name, record, env) as span:
            try:
                known = part.instances.get(env.saga_id) or part.ended.get(env.saga_id)
                decision = decide(self._definition(known, env), known, incoming)
            except Exception as exc:  # a state update or command builder of the definition raised
                log.exception("deciding %s for saga %s failed", env.message_type, env.saga_id)
                span.exception(exc)
                kind = type(exc).__name__
                batch.dead_letter(
                    dead_letter(record, kind, f"decide failed: {exc}"), interceptors, name, kind
                )
                return
            if decision.rejected is not None:
                kind = decision.rejected_as
                span.error(kind, decision.rejected)
                if kind == "StartConflict":
                    log.warning("%s", decision.rejected)
                batch.dead_letter(
                    dead_letter(record, kind, decision.rejected), interceptors, name, kind
                )
                return
            if decision.ignored is not None:
                span.set(saga_ignored=decision.ignored)
                self.stats.duplicates += 1
                return
            instance = decision.instance
            assert instance is not None
            records = decision.records
            trace = interceptors.trace_context()
            if trace is not None:
                records = tuple(replace(t, trace=trace) for t in records)
                instance = replace(instance, trace=trace)
            last = records[-1] if records else None
            reason = (last.note if last else None) or instance.failure
            encoded = [(t.saga_id, encode_transition(t)) for t in records]
            commands = [
                self._command_record(instance, pending, reason=reason)
                for pending in decision.commands
            ]
            commands += [self._notice_record(n, instance) for n in decision.notices]
            too_large = self._too_large(encoded, commands)
            if too_large is not None:
                span.error("TooLarge", too_large)
                batch.dead_letter(
                    dead_letter(record, "TooLarge", too_large), interceptors, name, "TooLarge"
                )
                return
            previous = part.instances.get(env.saga_id)
            for t in records:
                interceptors.transition(self.versions.get(t.version, self.saga), previous, t)
            part.instances[env.saga_id] = instance
            span.set(
                saga_type=self.saga.name,
                saga_state=instance.status.value,
                saga_step=last.step if last else None,
                saga_event=last.event if last else None,
                saga_failure=instance.failure,
            )
            batch.journal.setdefault(record.partition, []).extend(encoded)
            batch.epochs[record.partition] = part.epoch
            batch.transitions.extend(records)
            batch.outgoing.extend(commands)
            batch.scheduled.append((record.tp, env.saga_id, decision.timers))

    def _too_large(
        self, encoded: list[tuple[str, bytes]], commands: list[OutgoingRecord]
    ) -> str | None:
        """Why this decision cannot be written (a journal record or command too large)."""
        limit = self._max_record - 4096
        for _, data in encoded:
            if len(data) > limit:
                return (
                    f"the saga's journal record would be {len(data)} bytes, more than the "
                    f"{limit} a record may hold; keep large data out of the saga state"
                )
        for command in commands:
            size = record_size(command)
            if size > self._max_record:
                return (
                    f"command for {command.topic!r} would be {size} bytes, more than the "
                    f"{self._max_record} a record may hold"
                )
        return None

    # snapshots ----------------------------------------------------------------------------
    @property
    def _window_ms(self) -> int:
        return round(self.history.dedupe_window_s * 1000)

    def _now_ms(self) -> int:
        return round(self.clock.time() * 1000)

    async def _snapshot(self, partition: int, part: _Partition) -> None:
        """Let the sagas that ended leave memory, and snapshot the partition (between
        batches: the caller holds the loop's lock or is the batch)."""
        now_ms = self._now_ms()
        evict(part.instances, part.ended, now_ms, self._window_ms)
        try:
            await write_snapshot(
                self.event_log,
                self.checkpoints,
                partition,
                part.epoch,
                part.instances.values(),
                part.ended.values(),
                max_bytes=self._max_record - 4096,
                at_ms=now_ms,
            )
        except TransportError as exc:  # the journal holds everything: only restores are slower
            log.warning("snapshot of journal partition %d failed: %s", partition, exc)
            return
        part.changes = 0
        part.snapshot_ms = now_ms
        self.stats.snapshots += 1

    def _changed_partition(self) -> None:
        """A partition has records its latest snapshot lacks: its interval starts."""
        self._dirty.set()
        self._dirty = anyio.Event()

    def _snapshot_due_ms(self, part: _Partition) -> int | None:
        history = self.history
        if part.changes:
            return part.snapshot_ms + round(history.snapshot_interval_s * 1000)
        if history.refresh_s is not None and (part.instances or part.ended):
            return part.snapshot_ms + round(history.refresh_s * 1000)
        return None

    async def _snapshot_on_time(self, loop: ConsumeLoop) -> None:
        """Snapshot partitions that changed `snapshot_interval_s` ago or more, and those
        whose latest snapshot gets old (so that retention never deletes it)."""
        while True:
            now_ms = self._now_ms()
            due, next_ms = [], None
            for tp, part in list(self._owned.items()):
                at = self._snapshot_due_ms(part) if part.ready else None
                if at is None:
                    continue
                if at <= now_ms:
                    due.append((tp, part))
                else:
                    next_ms = at if next_ms is None else min(next_ms, at)
            for tp, part in due:
                async with loop.lock:
                    if self._owned.get(tp) is part and part.ready:
                        await self._snapshot(tp.partition, part)
            if due:
                continue
            wait_s = None if next_ms is None else (next_ms - now_ms) / 1000
            await wait_until(self._dirty, wait_s, self.clock)

    # timers -------------------------------------------------------------------------------
    async def _fire_timers(self) -> None:
        """Write each due timer to its saga's inbox partition, to be decided in order."""
        while True:
            now_ms = round(self.clock.time() * 1000)  # to the nearest ms, as deadlines
            due = [(tp, t) for tp, t in self._timers.pop_due(now_ms) if self._ready(tp)]
            if due:
                records = [self._timer_record(tp, t) for tp, t in due]
                # out of the schedule and not yet in the inbox: nothing else shows them
                self.timers_in_flight = len(due)
                try:
                    await self.transport.send([r for r in records if r is not None])
                    self.stats.timers_fired += len(due)
                except TransportError as exc:
                    log.error("firing %d timer(s) failed, trying again in 1s: %s", len(due), exc)
                    for tp, t in due:  # due again: they are derived from the instances
                        instance = (
                            self._owned[tp].instances.get(t.saga_id) if self._ready(tp) else None
                        )
                        if instance is not None:
                            self._timers.set(tp, t.saga_id, timers(instance))
                    await anyio.sleep(1.0)
                    continue
                finally:
                    self.timers_in_flight = 0
            next_due = self._timers.next_due_ms()
            wait_s = None if next_due is None else max(0.0, (next_due - now_ms) / 1000)
            await self._timers.wait(wait_s, self.clock)

    def _ready(self, tp: TopicPartition) -> bool:
        part = self._owned.get(tp)
        return part is not None and part.ready

    def _timer_record(self, tp: TopicPartition, timer: Timer) -> OutgoingRecord | None:
        instance = self._owned[tp].instances.get(timer.saga_id)
        if instance is None:
            return None
        envelope = Envelope(
            message_id=timer.message_id,
            message_type=TimerFired.message_type,
            saga_id=timer.saga_id,
            correlation_id=instance.correlation_id,
            causation_id=timer.message_id,
            saga_type=self.saga.name,
            saga_version=str(instance.version),
        )
        message = TimerFired(kind=timer.kind, ref=timer.ref)
        envelope = self.interceptors.send(
            envelope,
            self.inbox_topic,
            name=f"timer {timer.kind}",
            parent=instance.trace,
            saga_timer=timer.ref,
        )
        return encode_record(
            self.inbox_topic, envelope, message, partition=tp.partition, codec=self.codec
        )
