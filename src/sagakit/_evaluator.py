"""The pure core: decide(definition, instance, message) -> Decision, and evolve/replay.

No I/O and no clock: time comes in with the message (its record timestamp). The
orchestrator journals each Decision's records before it sends the commands; replaying
those records through `evolve` (the same function `decide` uses) rebuilds every
instance exactly. Timers (step timeouts, retry back-offs, the saga deadline) are part
of the journaled instance; `timers()` derives them, and when one comes due the owner
feeds a `TimerFired` message back through the saga's inbox, so it is ordered with the
replies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from ._codec import Incoming
from ._definition import (
    TIMED_OUT,
    RetryPolicy,
    Saga,
    SagaInfo,
    _Choice,
    _Each,
    _Leaf,
    _Par,
    _ResolvedStep,
    _Seq,
    _Wait,
    case_key,
)
from ._failure_reply import HandlerFailed
from ._messages import (
    CancelSaga,
    Command,
    CompensateChild,
    Message,
    Reply,
    ResolveSaga,
    ResumeSaga,
    SagaEnded,
    StartChild,
    StartSaga,
    TimerFired,
    registered,
)


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED_NEEDS_ATTENTION = "FAILED_NEEDS_ATTENTION"
    RESOLVED = "RESOLVED"

    @property
    def terminal(self) -> bool:
        """Ended for good: nothing more will happen to the saga."""
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.RESOLVED)

    @property
    def settled(self) -> bool:
        """Ended, or parked until a person acts."""
        return self.terminal or self is SagaStatus.FAILED_NEEDS_ATTENTION


class Phase(StrEnum):
    FORWARD = "forward"
    COMPENSATE = "compensate"


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A command sent and not yet answered; re-sent as it is after a restore.

    `deadline_ms` is when the attempt times out (None: never); `budget_from` is the
    attempt that started the current retry budget (a resume starts a new one);
    `uncertain` says an earlier attempt of this step timed out, so the step may have
    taken effect even if this attempt fails: then it is compensated too.
    """

    step: str
    phase: Phase
    attempt: int
    message_id: str
    topic: str
    command: Command
    causation_id: str
    deadline_ms: int | None = None
    budget_from: int = 1
    uncertain: bool = False

    @property
    def command_type(self) -> str:
        """The command's message type (also for a command read back without its model)."""
        return self.command.message_type or getattr(self.command, "journaled_type", "")


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """The attempt to send next: after a back-off (`due_ms`), or on a person's resume."""

    step: str
    phase: Phase
    attempt: int
    budget_from: int
    due_ms: int | None
    uncertain: bool = False

    @property
    def ref(self) -> str:
        return f"{self.step}:{self.phase.value}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class Timer:
    """A durable timer of one saga, derived from its journaled instance."""

    saga_id: str
    kind: str
    ref: str
    due_ms: int

    @property
    def message_id(self) -> str:
        return f"{self.saga_id}:timer:{self.kind}:{self.ref}"


class _Outstanding:
    """What a saga waits on: every command in flight, every attempt to send later."""

    __slots__ = ()
    in_flight: tuple[PendingCommand, ...]
    waiting: tuple[NextAttempt, ...]

    @property
    def pending(self) -> PendingCommand | None:
        """The command in flight (the first, when branches run in parallel)."""
        return self.in_flight[0] if self.in_flight else None

    @property
    def next(self) -> NextAttempt | None:
        """The attempt waiting to be sent (the first, when several are)."""
        return self.waiting[0] if self.waiting else None


@dataclass(frozen=True, slots=True)
class Transition(_Outstanding):
    """One journal record: what a message did to one saga, and the instance after it."""

    saga_id: str
    saga_type: str
    version: int
    seq: int
    cause: str
    cause_type: str
    at_ms: int
    event: str
    step: str | None
    status: SagaStatus
    state: BaseModel
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    #: the commands sent and not yet answered (several while branches run in parallel)
    in_flight: tuple[PendingCommand, ...]
    failure: str | None
    correlation_id: str
    started_ms: int
    #: attempts to send later: after a back-off (`due_ms`), or parked for a person (None)
    waiting: tuple[NextAttempt, ...] = ()
    deadline_ms: int | None = None
    note: str | None = None
    trace: str | None = None
    #: A digest of the start request's state (on the start transition only): a second
    #: start with another state conflicts.
    start_digest: str | None = None
    #: the case each `Switch` reached took, by switch name
    choices: tuple[tuple[str, str], ...] = ()
    #: a forward step failed (or the deadline passed): the saga is on its way back
    aborted: bool = False
    #: the waits (`WaitFor`) the saga has reached, with when each times out (None: never)
    waits: tuple[tuple[str, int | None], ...] = ()
    #: signals that came before the saga reached their wait: (type, message id, JSON)
    signals: tuple[tuple[str, str, str], ...] = ()
    #: the definition's shape (`Saga.shape`), on the start transition only
    shape: str | None = None
    #: for a child saga: where its end is reported (reply topic, parent saga id, the id
    #: of the parent's command it answers); on the records that set or change it
    parent: tuple[str, str, str] | None = None
    #: who asked for it, on a transition an operator request caused (its `operator`
    #: header: whoever could produce to the saga's inbox says who they are)
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class SagaInstance(_Outstanding):
    """The orchestrator's view of one saga."""

    saga_id: str
    saga_type: str
    version: int
    status: SagaStatus
    state: BaseModel
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    in_flight: tuple[PendingCommand, ...]
    failure: str | None
    correlation_id: str
    started_ms: int
    updated_ms: int
    seq: int
    applied: frozenset[str]
    waiting: tuple[NextAttempt, ...] = ()
    deadline_ms: int | None = None
    trace: str | None = None
    start_digest: str | None = None
    choices: tuple[tuple[str, str], ...] = ()
    aborted: bool = False
    waits: tuple[tuple[str, int | None], ...] = ()
    signals: tuple[tuple[str, str, str], ...] = ()
    #: the shape of the definition version the saga started on (None: journaled before)
    shape: str | None = None
    parent: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True)
class EndedSaga:
    """What an orchestrator keeps of a saga that ended, once the saga has left memory.

    Enough to answer a message that comes again inside the dedupe window: a start
    re-sent (recognised, or a conflict if its state differs), a late reply or timer
    (ignored), a cancel or signal (refused). Child sagas are not reduced to this: their
    parent may still ask them to compensate.
    """

    saga_id: str
    status: SagaStatus
    version: int
    ended_ms: int
    start_digest: str | None = None

    @classmethod
    def of(cls, instance: SagaInstance) -> EndedSaga:
        return cls(
            instance.saga_id,
            instance.status,
            instance.version,
            instance.updated_ms,
            instance.start_digest,
        )


@dataclass(frozen=True, slots=True)
class Notice:
    """A message to another saga's inbox: a child's end, for its parent."""

    topic: str
    saga_id: str
    message_id: str
    causation_id: str
    message: Message


def ended_notice(instance: SagaInstance) -> Notice | None:
    """What a child saga that has ended tells its parent (None: not a child, or running)."""
    if instance.parent is None or not instance.status.terminal:
        return None
    topic, parent_id, causation = instance.parent
    return Notice(
        topic=topic,
        saga_id=parent_id,
        message_id=f"{instance.saga_id}:ended:{instance.seq}",
        causation_id=causation,
        message=SagaEnded(
            saga_type=instance.saga_type,
            saga_id=instance.saga_id,
            status=instance.status.value,
            state=instance.state.model_dump(mode="json"),
            failure=instance.failure,
        ),
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """What to journal and send for one message.

    ``ignored`` says why a message changes nothing (a duplicate, a stale reply or
    timer); ``rejected`` says why it cannot be processed at all (it belongs in a DLQ, as
    error type ``rejected_as``).
    """

    records: tuple[Transition, ...] = ()
    commands: tuple[PendingCommand, ...] = ()
    timers: tuple[Timer, ...] = ()
    instance: SagaInstance | None = None
    #: a child saga that ended: the `SagaEnded` for its parent
    notices: tuple[Notice, ...] = ()
    ignored: str | None = None
    rejected: str | None = None
    rejected_as: str = "Rejected"


def evolve(instance: SagaInstance | None, t: Transition) -> SagaInstance:
    """The instance after journal record `t`."""
    applied = instance.applied if instance is not None else frozenset()
    return SagaInstance(
        saga_id=t.saga_id,
        saga_type=t.saga_type,
        version=t.version,
        status=t.status,
        state=t.state,
        completed=t.completed,
        compensated=t.compensated,
        in_flight=t.in_flight,
        failure=t.failure,
        correlation_id=t.correlation_id,
        started_ms=t.started_ms,
        updated_ms=t.at_ms,
        seq=t.seq,
        applied=applied | {t.cause},
        waiting=t.waiting,
        choices=t.choices,
        aborted=t.aborted,
        waits=t.waits,
        signals=t.signals,
        shape=t.shape if t.shape is not None else (instance.shape if instance else None),
        parent=t.parent if t.parent is not None else (instance.parent if instance else None),
        deadline_ms=t.deadline_ms,
        trace=t.trace if t.trace is not None else (instance.trace if instance else None),
        start_digest=t.start_digest
        if t.start_digest is not None
        else (instance.start_digest if instance else None),
    )


def replay(records: Iterable[Transition]) -> dict[str, SagaInstance]:
    """Fold journal records into instances by saga id."""
    instances: dict[str, SagaInstance] = {}
    for t in records:
        instances[t.saga_id] = evolve(instances.get(t.saga_id), t)
    return instances


def timers(instance: SagaInstance) -> tuple[Timer, ...]:
    """The timers an instance is waiting on (none once it is ended or parked)."""
    if instance.status.settled:
        return ()
    found = [
        Timer(instance.saga_id, "timeout", p.message_id, p.deadline_ms)
        for p in instance.in_flight
        if p.deadline_ms is not None
    ]
    found += [
        Timer(instance.saga_id, "retry", w.ref, w.due_ms)
        for w in instance.waiting
        if w.due_ms is not None
    ]
    found += [
        Timer(instance.saga_id, "wait", name, due)
        for name, due in instance.waits
        if due is not None
    ]
    if instance.deadline_ms is not None and instance.status is SagaStatus.RUNNING:
        found.append(Timer(instance.saga_id, "deadline", "saga", instance.deadline_ms))
    return tuple(found)


def command_id(saga_id: str, step: str, phase: Phase, attempt: int) -> str:
    """Deterministic command message id: ``{saga}:{step}:{attempt}``, ``{saga}:{step}:c{attempt}``.

    A forward id ends in digits and a compensation id in ``c`` and digits, and step
    names hold no ``:``, so no two commands of any two sagas share an id.
    """
    if phase is Phase.FORWARD:
        return f"{saga_id}:{step}:{attempt}"
    return f"{saga_id}:{step}:c{attempt}"


def decide(
    definition: Saga[Any],
    instance: SagaInstance | EndedSaga | None,
    incoming: Incoming[Message],
) -> Decision:
    """The decision for one inbox message, given the saga's current instance, what is
    kept of it after it ended and left memory (`EndedSaga`), or None."""
    env = incoming.envelope
    message = incoming.message
    if isinstance(message, (StartSaga, StartChild)):  # checked even when the saga exists
        return _start(definition, instance, incoming)
    if isinstance(instance, EndedSaga):
        return _after_end(definition, instance, incoming)
    if instance is not None and env.message_id in instance.applied:
        return Decision(instance=instance, ignored=f"duplicate message {env.message_id}")
    if instance is None:
        return Decision(rejected=f"{env.message_type} for unknown saga {env.saga_id}")
    if isinstance(message, Reply):
        return _reply(definition, instance, incoming)
    if isinstance(message, TimerFired):
        return _timer(definition, instance, incoming, message)
    if isinstance(message, (ResumeSaga, ResolveSaga)):
        return _operator(definition, instance, incoming, message)
    if isinstance(message, CancelSaga):
        return _cancel(definition, instance, incoming, message)
    if isinstance(message, CompensateChild):
        return _compensate_child(definition, instance, incoming)
    wait = definition.signal_wait(type(message))
    if wait is not None:
        return _signal(definition, instance, incoming, wait)
    return Decision(
        instance=instance,
        rejected=f"{env.message_type} is not a start request, reply, timer, operator request "
        f"or a signal one of its waits takes; saga {definition.name!r} cannot handle it",
    )


# -- start ---------------------------------------------------------------------------------
def _start(
    definition: Saga[Any],
    instance: SagaInstance | EndedSaga | None,
    incoming: Incoming[Message],
) -> Decision:
    env = incoming.envelope
    if env.saga_type is not None and env.saga_type != definition.name:
        return Decision(
            rejected=f"start request for saga type {env.saga_type!r} reached {definition.name!r}"
        )
    if env.saga_version is not None and env.saga_version != str(definition.version):
        return Decision(
            rejected=f"start request for version {env.saga_version} of {definition.name!r}; "
            f"this orchestrator runs version {definition.version}"
        )
    assert isinstance(incoming.message, (StartSaga, StartChild))
    try:
        state = definition.state.model_validate(incoming.message.state)
    except ValidationError as exc:
        return Decision(
            rejected=f"initial state does not validate as {definition.state.__qualname__}: "
            f"{exc.error_count()} error(s): {exc.errors(include_url=False)[0]['msg']}"
        )
    digest = state_digest(state)
    if instance is not None:
        kept = instance if isinstance(instance, SagaInstance) else None
        if instance.start_digest is not None and instance.start_digest != digest:
            return Decision(
                instance=kept,
                rejected=f"saga {env.saga_id} was started with another state (it is "
                f"{instance.status.value}); a start request for an existing saga id must "
                "repeat its state, or use a new id",
                rejected_as="StartConflict",
            )
        if kept is not None and env.message_id in kept.applied:
            return Decision(instance=kept, ignored=f"duplicate message {env.message_id}")
        return Decision(instance=kept, ignored=f"saga {env.saga_id} already started")
    deadline = (
        incoming.at_ms + round(definition.deadline_s * 1000)
        if definition.deadline_s is not None
        else None
    )
    draft = _Draft(
        definition=definition,
        saga_id=env.saga_id,
        cause=env.message_id,
        cause_type=env.message_type,
        at_ms=incoming.at_ms,
        seq=1,
        state=state,
        completed=(),
        compensated=(),
        failure=None,
        correlation_id=env.correlation_id,
        started_ms=incoming.at_ms,
        deadline_ms=deadline,
        start_digest=digest,
        shape=definition.shape,
    )
    if isinstance(incoming.message, StartChild):
        if env.reply_to is None:
            return Decision(rejected="a child saga's start names no reply-to for its end")
        draft.parent = (env.reply_to, incoming.message.parent_id, env.message_id)
    return draft.progress("started", None)


def state_digest(state: BaseModel) -> str:
    """A short digest of a state's JSON: equal states, equal digests."""
    import hashlib

    return hashlib.sha256(state.__pydantic_serializer__.to_json(state)).hexdigest()[:32]


def _after_end(definition: Saga[Any], ended: EndedSaga, incoming: Incoming[Message]) -> Decision:
    """A message for a saga that ended and left memory: nothing it says can change the
    saga. What a full instance would ignore is ignored; a cancel or a signal, which a full
    instance refuses unless it is a repeat of one it took, is refused (dead-lettered)."""
    env = incoming.envelope
    message = incoming.message
    what = f"saga {ended.saga_id} ended {ended.status.value}"
    if isinstance(message, (Reply, TimerFired, ResumeSaga, ResolveSaga)):
        return Decision(ignored=f"{what}: {env.message_type} {env.message_id} changes nothing")
    if isinstance(message, CancelSaga):
        return Decision(
            rejected=f"cancel of saga {ended.saga_id} refused: it is {ended.status.value}",
            rejected_as="CancelRefused",
        )
    if isinstance(message, CompensateChild):
        return Decision(rejected=f"saga {ended.saga_id} has no parent")
    if definition.signal_wait(type(message)) is not None:
        return Decision(
            rejected=f"signal {env.message_type} for saga {ended.saga_id}, which is "
            f"{ended.status.value}: nothing waits for it any more",
            rejected_as="SignalTooLate",
        )
    return Decision(
        rejected=f"{env.message_type} is not a start request, reply, timer, operator request "
        f"or a signal one of its waits takes; saga {definition.name!r} cannot handle it"
    )


# -- replies -------------------------------------------------------------------------------
def _reply(definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message]) -> Decision:
    env = incoming.envelope
    reply = incoming.message
    assert isinstance(reply, Reply)
    pending = next((p for p in instance.in_flight if p.message_id == env.causation_id), None)
    if pending is None:
        awaited = ", ".join(p.message_id for p in instance.in_flight) or "nothing"
        return Decision(
            instance=instance,
            ignored=f"reply to {env.causation_id} is not awaited "
            f"(saga {instance.saga_id} is {instance.status}, awaiting {awaited})",
        )
    key = pending.step  # the step's name; for an item of a ForEach, name#index
    step = definition.step(key)
    kind = type(reply)
    if not isinstance(reply, HandlerFailed) and pending.phase is Phase.FORWARD:
        known = (*step.success, *step.failures, *step.retryable)
        if kind not in known:
            expected = sorted(r.message_type for r in known)
            return Decision(
                instance=instance,
                rejected=f"step {key!r} of saga {definition.name!r} does not expect "
                f"{reply.message_type} (expects {', '.join(expected)})",
            )
    draft = _Draft.from_instance(definition, instance, incoming)
    draft.in_flight.remove(pending)
    if isinstance(reply, SagaEnded):
        return _child_ended(draft, step, pending, key, reply)
    if isinstance(reply, HandlerFailed):
        # the participant could not handle it, and nothing of it took effect
        what = "compensation of " if pending.phase is Phase.COMPENSATE else ""
        return draft.retry_or_give_up(step, pending, f"{what}{key}: {reply.describe()}")
    if pending.phase is Phase.COMPENSATE:
        if kind in step.compensation_failures:
            return draft.retry_or_give_up(
                step, pending, f"compensation of {key} failed: {reply.message_type}"
            )
        draft.compensated = (*draft.compensated, key)
        return draft.progress("step-compensated", key)
    if kind in step.success:
        update = step.success[kind]
        if update is not None:
            draft.state = update(draft.state, reply)
        draft.completed = (*draft.completed, key)
        return draft.progress("step-succeeded", key)
    if kind in step.retryable:
        return draft.retry_or_give_up(step, pending, f"{key}: {reply.message_type}")
    # a business failure
    if step.step.on_failure is not None:
        draft.state = step.step.on_failure(draft.state, reply)
    if pending.uncertain and step.compensation is not None:
        draft.completed = (*draft.completed, key)  # an earlier attempt timed out
    draft.abort(f"{key}: {reply.message_type}")
    return draft.progress("step-failed", key)


def _child_ended(
    draft: _Draft, step: _ResolvedStep[Any], pending: PendingCommand, key: str, ended: SagaEnded
) -> Decision:
    """A child saga answered: completed (the step succeeded), or compensated (it failed);
    asked to compensate: compensated (undone), or not (it cannot be undone)."""
    what = f"child saga {ended.saga_id} ended {ended.status}"
    if ended.failure:
        what += f" ({ended.failure})"
    if pending.phase is Phase.COMPENSATE:
        if ended.status == SagaStatus.COMPENSATED.value:
            draft.compensated = (*draft.compensated, key)
            return draft.progress("step-compensated", key)
        return draft.park(step, pending, f"compensation of {key}: {what}")
    if ended.status == SagaStatus.COMPLETED.value:
        draft.state = step.success[SagaEnded](draft.state, ended)  # type: ignore[misc]
        draft.completed = (*draft.completed, key)
        return draft.progress("step-succeeded", key)
    draft.abort(f"{key}: {what}")
    return draft.progress("step-failed", key)


def _compensate_child(
    definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message]
) -> Decision:
    """The parent compensates: undo this (completed) child's steps, in reverse."""
    env = incoming.envelope
    if instance.parent is None:
        return Decision(instance=instance, rejected=f"saga {instance.saga_id} has no parent")
    draft = _Draft.from_instance(definition, instance, incoming)
    draft.parent = (instance.parent[0], instance.parent[1], env.message_id)
    if instance.status is SagaStatus.COMPENSATED:
        return draft.decide("compensation-asked", None, SagaStatus.COMPENSATED)
    if instance.status is not SagaStatus.COMPLETED:
        return Decision(
            instance=instance,
            ignored=f"child saga {instance.saga_id} is {instance.status.value}; its parent "
            "waits for its end before asking it to compensate",
        )
    if definition.pivot_index is not None:  # a completed saga is past its pivot
        draft.note = "cannot be undone: it is past its pivot"
        return draft.decide("compensation-refused", None, SagaStatus.COMPLETED)
    draft.aborted = True
    draft.failure = "compensation asked by its parent saga"
    return draft.progress("compensation-asked", None)


# -- timers --------------------------------------------------------------------------------
def _timer(
    definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message], fired: TimerFired
) -> Decision:
    due = {(t.kind, t.ref) for t in timers(instance)}
    if (fired.kind, fired.ref) not in due:
        return Decision(instance=instance, ignored=f"timer {fired.kind}:{fired.ref} is stale")
    draft = _Draft.from_instance(definition, instance, incoming)
    if fired.kind == "retry":
        nxt = next(w for w in draft.waiting if w.ref == fired.ref)
        draft.waiting.remove(nxt)
        step = definition.step(nxt.step)
        if nxt.phase is Phase.FORWARD and draft.aborting:
            draft.settle_unsent(step, nxt.uncertain, nxt.step)  # no new attempt now
        else:
            draft.send(
                step, nxt.phase, nxt.attempt, nxt.budget_from, uncertain=nxt.uncertain, key=nxt.step
            )
        return draft.progress("retry", nxt.step)
    if fired.kind == "wait":
        wait = next(w for w in definition.waits() if w.name == fired.ref)
        draft.waits.pop(wait.name)
        reason = f"{wait.name}: no {' or '.join(k.message_type for k in wait.events)} within "
        reason += f"{wait.timeout_s:g}s"
        draft.note = reason
        if wait.on_timeout is None:
            draft.abort(reason)
        else:
            draft.choices[wait.name] = TIMED_OUT  # the steps for a timeout run instead
        return draft.progress("wait-timed-out", wait.name)
    if fired.kind == "timeout":
        pending = next(p for p in draft.in_flight if p.message_id == fired.ref)
        draft.in_flight.remove(pending)
        step = definition.step(pending.step)
        policy = _policy(step, pending.phase)
        what = pending.step
        if pending.phase is Phase.COMPENSATE:  # say it was the undo that got no answer
            what = f"compensation of {pending.step} ({pending.command.message_type})"
        return draft.retry_or_give_up(
            step,
            pending,
            f"{what} attempt {pending.attempt} got no reply within {policy.timeout_s}s",
            outcome_unknown=True,
        )
    # the saga deadline
    draft.deadline_ms = None
    forward = [p for p in draft.in_flight if p.phase is Phase.FORWARD]
    later = [w for w in draft.waiting if w.phase is Phase.FORWARD and w.due_ms is not None]
    doubtful = [
        name
        for name in (*(p.step for p in forward), *(w.step for w in later if w.uncertain))
        if definition.step(name).compensation is None
    ]
    if doubtful:
        # A step in flight may take (or have taken) effect and cannot be undone, so
        # the steps before it must not be undone either: its outcome decides.
        draft.note = (
            f"saga deadline passed while {doubtful[0]} was in doubt; it has no "
            "compensation, so the saga goes on until its outcome is known"
        )
        return draft.decide("deadline-deferred", doubtful[0], SagaStatus.RUNNING)
    draft.failure = "saga deadline passed"
    draft.aborted = True
    # The steps in flight (or waiting to retry) may have taken effect: they are
    # compensated too, so compensations must tolerate "nothing to undo". Their late
    # replies are no longer awaited.
    for name in (*(p.step for p in forward), *(w.step for w in later)):
        if name not in draft.completed and definition.step(name).compensation is not None:
            draft.completed = (*draft.completed, name)
    draft.in_flight = [p for p in draft.in_flight if p.phase is not Phase.FORWARD]
    draft.waiting = [w for w in draft.waiting if not (w.phase is Phase.FORWARD and w.due_ms)]
    current = forward[0].step if forward else (later[0].step if later else None)
    return draft.progress("deadline-passed", current)


# -- signals and cancel ----------------------------------------------------------------------
def _signal(
    definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message], wait: _Wait
) -> Decision:
    """A message for one of the saga's waits: taken now if the saga is at that wait, kept
    if it has not got there yet, dead-lettered if the saga ended or is past the wait."""
    env = incoming.envelope
    if instance.status.terminal:
        return Decision(
            instance=instance,
            rejected=f"signal {env.message_type} for saga {instance.saga_id}, which is "
            f"{instance.status.value}: nothing waits for it any more",
            rejected_as="SignalTooLate",
        )
    if wait.name in instance.completed or wait.name in dict(instance.choices):
        return Decision(
            instance=instance,
            rejected=f"signal {env.message_type} for saga {instance.saga_id}: it is past "
            f"{wait.name!r} (that wait was already answered or timed out)",
            rejected_as="SignalTooLate",
        )
    if any(message_id == env.message_id for _t, message_id, _p in instance.signals):
        return Decision(instance=instance, ignored=f"duplicate signal {env.message_id}")
    draft = _Draft.from_instance(definition, instance, incoming)
    draft.actor = env.operator
    message = incoming.message
    if wait.name in draft.waits:  # the saga is there: the signal decides the wait
        draft.take_signal(wait, message)
        draft.note = env.operator_note
        return draft.progress("signalled", wait.name)
    payload = message.__pydantic_serializer__.to_json(message).decode()
    draft.signals.append((env.message_type, env.message_id, payload))
    draft.note = f"signal {env.message_type} kept until the saga reaches {wait.name!r}"
    status = instance.status
    return draft.decide("signal-kept", wait.name, status)


def _cancel(
    definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message], request: CancelSaga
) -> Decision:
    if instance.status.settled:
        return Decision(
            instance=instance,
            rejected=f"cancel of saga {instance.saga_id} refused: it is {instance.status.value}"
            + (" (resolve a parked saga instead)" if not instance.status.terminal else ""),
            rejected_as="CancelRefused",
        )
    pivot = definition.pivot_index
    if pivot is not None:
        sent = {p.step for p in instance.in_flight} | set(instance.completed)
        sent |= {w.step for w in instance.waiting}
        past = [r.name for r in definition.resolved() if r.top >= pivot and r.name in sent]
        if past:
            return Decision(
                instance=instance,
                rejected=f"cancel of saga {instance.saga_id} refused: it is past its pivot "
                f"{definition.steps[pivot].name!r} ({past[0]} was sent), so it can only go "
                "forward",
                rejected_as="CancelRefused",
            )
    draft = _Draft.from_instance(definition, instance, incoming)
    if draft.aborting:
        return Decision(instance=instance, ignored=f"saga {instance.saga_id} is already undoing")
    reason = f"cancelled: {request.reason}" if request.reason else "cancelled"
    draft.abort(reason)
    draft.note = reason
    draft.actor = incoming.envelope.operator
    return draft.progress("cancelled", None)


# -- people ----------------------------------------------------------------------------------
def _operator(
    definition: Saga[Any],
    instance: SagaInstance,
    incoming: Incoming[Message],
    request: ResumeSaga | ResolveSaga,
) -> Decision:
    if instance.status is not SagaStatus.FAILED_NEEDS_ATTENTION:
        return Decision(
            instance=instance,
            ignored=f"saga {instance.saga_id} is {instance.status}; only "
            "FAILED_NEEDS_ATTENTION sagas can be resumed or resolved",
        )
    draft = _Draft.from_instance(definition, instance, incoming)
    draft.note = request.note or None
    draft.actor = incoming.envelope.operator
    if isinstance(request, ResolveSaga):
        draft.waiting = []
        return draft.finish("resolved", None, SagaStatus.RESOLVED)
    parked = [w for w in draft.waiting if w.due_ms is None]
    assert parked, "a parked saga records what to retry"
    for w in parked:
        draft.waiting.remove(w)
        draft.send(
            definition.step(w.step),
            w.phase,
            w.attempt,
            w.attempt,
            uncertain=w.uncertain,
            key=w.step,
        )
    return draft.progress("resumed", parked[0].step)


def _policy(step: _ResolvedStep[Any], phase: Phase) -> RetryPolicy:
    return step.step.retry if phase is Phase.FORWARD else step.step.compensation_retry


@dataclass
class _Draft:
    """The next transition under construction (mutable, local to one decision)."""

    definition: Saga[Any]
    saga_id: str
    cause: str
    cause_type: str
    at_ms: int
    seq: int
    state: BaseModel
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    failure: str | None
    correlation_id: str
    started_ms: int
    instance: SagaInstance | None = None
    in_flight: list[PendingCommand] = field(default_factory=list)
    waiting: list[NextAttempt] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    deadline_ms: int | None = None
    note: str | None = None
    actor: str | None = None
    start_digest: str | None = None
    shape: str | None = None
    parent: tuple[str, str, str] | None = None
    #: a forward step failed for good: nothing new starts forward, then compensation
    aborted: bool = False
    waits: dict[str, int | None] = field(default_factory=dict)
    signals: list[tuple[str, str, str]] = field(default_factory=list)
    #: commands to send with this decision
    outgoing: list[PendingCommand] = field(default_factory=list)

    @classmethod
    def from_instance(
        cls, definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message]
    ) -> _Draft:
        return cls(
            definition=definition,
            saga_id=instance.saga_id,
            cause=incoming.envelope.message_id,
            cause_type=incoming.envelope.message_type,
            at_ms=incoming.at_ms,
            seq=instance.seq + 1,
            state=instance.state,
            completed=instance.completed,
            compensated=instance.compensated,
            failure=instance.failure,
            correlation_id=instance.correlation_id,
            started_ms=instance.started_ms,
            instance=instance,
            in_flight=list(instance.in_flight),
            waiting=list(instance.waiting),
            choices=dict(instance.choices),
            waits=dict(instance.waits),
            signals=list(instance.signals),
            parent=instance.parent,
            deadline_ms=instance.deadline_ms,
            # records from before the flag: compensating, or a compensation out or parked
            aborted=instance.aborted
            or instance.status is SagaStatus.COMPENSATING
            or any(p.phase is Phase.COMPENSATE for p in instance.in_flight)
            or any(w.phase is Phase.COMPENSATE for w in instance.waiting),
        )

    # -- where the saga is ---------------------------------------------------------------
    @property
    def aborting(self) -> bool:
        """A forward step failed (or the deadline passed): nothing new starts forward."""
        return self.aborted

    def _busy(self) -> set[str]:
        return {p.step for p in self.in_flight} | {w.step for w in self.waiting}

    def abort(self, reason: str) -> None:
        """A forward step failed for good: start nothing new; what is in flight is waited
        for, and attempts waiting for a back-off are dropped (and compensated if an
        earlier one may have taken effect)."""
        if not self.aborted:
            self.failure = reason
        self.aborted = True
        self.waits = {}  # nobody waits for a signal on the way back
        for w in [w for w in self.waiting if w.phase is Phase.FORWARD and w.due_ms is not None]:
            self.waiting.remove(w)
            self.settle_unsent(self.definition.step(w.step), w.uncertain, w.step)

    def settle_unsent(
        self, step: _ResolvedStep[Any], uncertain: bool, key: str | None = None
    ) -> None:
        """A forward step that will not be tried again while the saga fails: compensated
        if an earlier attempt may have taken effect."""
        key = key or step.name
        if uncertain and step.compensation is not None and key not in self.completed:
            self.completed = (*self.completed, key)

    def progress(self, event: str, step: str | None) -> Decision:
        """Send what can run now, and say where the saga is: forward while no step has
        failed, else (once nothing forward is in flight) compensating."""
        if not self.aborting:
            ready, problem, done = self._forward_ready()
            if problem is not None:
                self.abort(problem)
                return self.progress(event, step)
            for r, key in ready:
                if self.definition.pivot_index is not None and r.top > self.definition.pivot_index:
                    self.deadline_ms = None  # past the point of no return: no more aborting
                self.send(r, Phase.FORWARD, 1, 1, key=key)
            if done and not self.in_flight and not self.waiting:
                self.deadline_ms = None
                return self.finish(event, step, SagaStatus.COMPLETED)
            return self.decide(event, step, self._status(SagaStatus.RUNNING))
        self.deadline_ms = None
        if any(p.phase is Phase.FORWARD for p in self.in_flight):
            # a branch failed: the commands still out are waited for (or time out)
            return self.decide(event, step, SagaStatus.COMPENSATING)
        for r, key in self._compensation_ready():
            self.send(r, Phase.COMPENSATE, 1, 1, key=key)
        if not self.in_flight and not self.waiting:
            return self.finish(event, step, SagaStatus.COMPENSATED)
        return self.decide(event, step, self._status(SagaStatus.COMPENSATING))

    def _status(self, moving: SagaStatus) -> SagaStatus:
        """`moving`, unless all that is left waits for a person to resume or resolve it."""
        idle = not self.in_flight and not self.waits
        if idle and self.waiting and all(w.due_ms is None for w in self.waiting):
            return SagaStatus.FAILED_NEEDS_ATTENTION
        return moving

    def _forward_ready(self) -> tuple[list[tuple[_ResolvedStep[Any], str]], str | None, bool]:
        """The steps that can start now (a Switch reached picks and journals its case, a
        wait reached takes a signal kept for it or starts waiting), the reason the saga
        cannot go on (a Switch with no case for its key, a failure signal), and whether
        every step is done."""
        ready: list[tuple[_ResolvedStep[Any], str]] = []
        busy = self._busy()
        problem: list[str] = []

        def seq(node: _Seq) -> bool:
            return all(one(n) for n in node.nodes)  # stops at the first not done

        def one(node: _Leaf | _Par | _Choice | _Wait | _Each) -> bool:
            if isinstance(node, _Wait):
                return self._at_wait(node, problem, seq)
            if isinstance(node, _Each):
                keys = self._item_keys(node)
                left = [k for k in keys if k not in self.completed]
                free = node.max_parallel - sum(1 for k in keys if k in busy)
                for k in [k for k in left if k not in busy][: max(0, free)]:
                    ready.append((node.step, k))
                return not left
            if isinstance(node, _Leaf):
                r = node.step
                if r.name in self.completed:
                    return True
                if r.action is None:  # happened before the saga started
                    self.completed = (*self.completed, r.name)
                    return True
                if r.name not in busy:
                    ready.append((r, r.name))
                return False
            if isinstance(node, _Par):
                return all([seq(b) for b in node.branches])  # every branch, at once
            case = self._case(node)
            if case is None:
                problem.append(
                    f"{node.name}: no case for {self.choices.get(node.name, '?')!r} "
                    f"(cases: {', '.join(map(repr, node.cases))})"
                )
                return False
            return seq(case)

        done = seq(self.definition.tree)
        return ready, (problem[0] if problem else None), done

    def _at_wait(self, node: _Wait, problem: list[str], seq: Callable[[_Seq], bool]) -> bool:
        """The saga has reached `node`: done if its signal came, the timeout steps if it
        timed out, else waiting (a signal kept for it is taken now)."""
        if node.name in self.completed:
            return True
        if self.choices.get(node.name) == TIMED_OUT:
            assert node.on_timeout is not None
            return seq(node.on_timeout)
        for kept in self.signals:
            model = registered(kept[0])
            if model is not None and node.accepts(model):
                self.signals.remove(kept)
                failed = self.take_signal(node, model.model_validate_json(kept[2]))
                if failed is not None:
                    problem.append(failed)
                    return False
                return True
        if node.name not in self.waits:
            due = None if node.timeout_s is None else self.at_ms + round(node.timeout_s * 1000)
            self.waits[node.name] = due
        return False

    def take_signal(self, wait: _Wait, message: Message) -> str | None:
        """`message` answers `wait`: on (None) or a failure (the reason)."""
        self.waits.pop(wait.name, None)
        if type(message) in wait.failures:
            reason = f"{wait.name}: {message.message_type}"
            self.abort(reason)
            return reason
        if wait.on_event is not None:
            self.state = wait.on_event(self.state, message)
        self.completed = (*self.completed, wait.name)
        return None

    def _case(self, node: _Choice) -> _Seq | None:
        key = self.choices.get(node.name)
        if key is None:
            try:
                key = case_key(node.on(self.state))
            except Exception as exc:  # the definition's own function failed
                key = f"<{type(exc).__name__}: {exc}>"
            self.choices[node.name] = key  # journaled: replay and compensation follow it
        if key in node.cases:
            return node.cases[key]
        return node.default

    def _item_keys(self, node: _Each) -> list[str]:
        """``name#0`` ... of a ForEach: its list is counted when the saga reaches it, and
        the count journaled (with the Switch cases), so replay sends the same items."""
        count = self.choices.get(node.name)
        if count is None:
            count = str(len(list(node.items(self.state))))
            self.choices[node.name] = count
        return [f"{node.step.name}#{i}" for i in range(int(count))]

    def _compensation_ready(self) -> list[tuple[_ResolvedStep[Any], str]]:
        """The compensations that can start now: in each sequence from the last step
        back, the branches of a group at the same time, the case a Switch took."""
        ready: list[tuple[_ResolvedStep[Any], str]] = []
        busy = self._busy()
        done = set(self.compensated)

        def seq(node: _Seq) -> bool:
            return all(one(n) for n in reversed(node.nodes))

        def one(node: _Leaf | _Par | _Choice | _Wait | _Each) -> bool:
            if isinstance(node, _Wait):
                timed_out = self.choices.get(node.name) == TIMED_OUT
                return not timed_out or node.on_timeout is None or seq(node.on_timeout)
            if isinstance(node, _Each):
                if node.name not in self.choices or node.step.compensation is None:
                    return True
                undo = [k for k in self._item_keys(node) if k in self.completed and k not in done]
                ready.extend((node.step, k) for k in undo if k not in busy)
                return not undo
            if isinstance(node, _Leaf):
                r = node.step
                if r.name not in self.completed or r.compensation is None or r.name in done:
                    return True
                if r.name not in busy:
                    ready.append((r, r.name))
                return False
            if isinstance(node, _Par):
                return all([seq(b) for b in node.branches])
            key = self.choices.get(node.name)
            case = None if key is None else node.cases.get(key, node.default)
            return case is None or seq(case)

        seq(self.definition.tree)
        return ready

    # -- failures ------------------------------------------------------------------------
    def retry_or_give_up(
        self,
        step: _ResolvedStep[Any],
        pending: PendingCommand,
        reason: str,
        *,
        outcome_unknown: bool = False,
    ) -> Decision:
        """After a retryable failure of `pending` (no longer in flight): the next attempt
        (now or after a back-off), or give up.

        Giving up compensates (forward, before the pivot) or parks the step for a person
        (a compensation, or a step after the pivot). While the saga is failing anyway, a
        forward step is not tried again.
        """
        policy = _policy(step, pending.phase)
        made = pending.attempt - pending.budget_from + 1
        uncertain = pending.uncertain or outcome_unknown
        forward = pending.phase is Phase.FORWARD
        if forward and self.aborting and not self.definition.after_pivot(step):
            self.settle_unsent(step, uncertain, pending.step)
            return self.progress("step-failed", pending.step)
        if made < policy.max_attempts:
            attempt = pending.attempt + 1
            wait = policy.backoff_ms(made, f"{self.saga_id}:{pending.step}:{attempt}")
            if wait <= 0:
                self.send(
                    step,
                    pending.phase,
                    attempt,
                    pending.budget_from,
                    uncertain=uncertain,
                    key=pending.step,
                )
                return self.progress("retry", pending.step)
            self.waiting.append(
                NextAttempt(
                    pending.step,
                    pending.phase,
                    attempt,
                    pending.budget_from,
                    self.at_ms + wait,
                    uncertain=uncertain,
                )
            )
            self.note = reason
            return self.progress("retry-scheduled", pending.step)
        give_up = f"{reason}; gave up after {made} attempt(s)"
        if not forward or self.definition.after_pivot(step):
            return self.park(step, pending, give_up)
        if uncertain and step.compensation is None:
            # It may have taken effect and nothing can undo it: undoing the steps before
            # it would leave its effect alone (a shipment for a rejected order).
            return self.park(
                step,
                pending,
                f"{give_up}; {pending.step} may have taken effect and has no compensation, so "
                "the steps before it are not undone (resume retries it, resolve ends the saga)",
            )
        if uncertain and step.compensation is not None:
            # the command may have taken effect: compensations must tolerate "nothing to undo"
            self.completed = (*self.completed, pending.step)
        self.abort(give_up)
        return self.progress("step-failed", pending.step)

    def park(self, step: _ResolvedStep[Any], pending: PendingCommand, reason: str) -> Decision:
        """Leave `step` for a person: resume sends it again, resolve ends the saga."""
        self.failure = reason
        self.waiting.append(
            NextAttempt(
                pending.step,
                pending.phase,
                pending.attempt + 1,
                pending.attempt + 1,
                None,
                uncertain=pending.uncertain,
            )
        )
        self.deadline_ms = None
        self.note = None
        moving = SagaStatus.RUNNING if pending.phase is Phase.FORWARD else SagaStatus.COMPENSATING
        return self.decide("parked", pending.step, self._status(moving))

    # -- the record ----------------------------------------------------------------------
    def send(
        self,
        target: _ResolvedStep[Any],
        phase: Phase,
        attempt: int,
        budget_from: int,
        *,
        uncertain: bool = False,
        key: str | None = None,
    ) -> None:
        """Put an attempt of `target` in flight, to be sent with this decision (`key`:
        ``name#index`` for an item of a ForEach)."""
        action = target.action if phase is Phase.FORWARD else target.compensation
        assert action is not None
        key = key or target.name
        timeout = _policy(target, phase).timeout_s
        index, item = self._item(key)
        info = SagaInfo(
            saga_id=self.saga_id,
            saga_type=self.definition.name,
            version=self.definition.version,
            step=target.name,
            attempt=attempt,
            failure=self.failure,
            index=index,
            item=item,
        )
        pending = PendingCommand(
            step=key,
            phase=phase,
            attempt=attempt,
            message_id=command_id(self.saga_id, key, phase, attempt),
            topic=action.topic,
            command=action.build(self.state, info),
            causation_id=self.cause,
            deadline_ms=self.at_ms + round(timeout * 1000) if timeout is not None else None,
            budget_from=budget_from,
            uncertain=uncertain,
        )
        self.in_flight.append(pending)
        self.outgoing.append(pending)

    def _item(self, key: str) -> tuple[int | None, Any]:
        """For ``name#index``, the index and the item of its ForEach's list now."""
        name, sep, number = key.partition("#")
        if not sep:
            return None, None
        index = int(number)
        each = self.definition.foreach_of(name)
        items = list(each.items(self.state))
        return index, items[index] if index < len(items) else None

    def finish(self, event: str, step: str | None, status: SagaStatus) -> Decision:
        self.waiting = []
        self.waits = {}
        self.deadline_ms = None
        return self.decide(event, step, status)

    def decide(self, event: str, step: str | None, status: SagaStatus) -> Decision:
        """The transition, and the commands this decision put in flight."""
        record = Transition(
            saga_id=self.saga_id,
            saga_type=self.definition.name,
            version=self.definition.version,
            seq=self.seq,
            cause=self.cause,
            cause_type=self.cause_type,
            at_ms=self.at_ms,
            event=event,
            step=step,
            status=status,
            state=self.state,
            completed=self.completed,
            compensated=self.compensated,
            in_flight=tuple(self.in_flight),
            failure=self.failure,
            correlation_id=self.correlation_id,
            started_ms=self.started_ms,
            waiting=tuple(self.waiting),
            deadline_ms=self.deadline_ms,
            note=self.note,
            actor=self.actor,
            start_digest=self.start_digest,
            shape=self.shape,
            choices=tuple(sorted(self.choices.items())),
            aborted=self.aborted,
            waits=tuple(sorted(self.waits.items())),
            signals=tuple(self.signals),
            # journaled when it is set or changes (a start, a compensation asked for)
            parent=self.parent
            if self.instance is None or self.parent != self.instance.parent
            else None,
        )
        instance = evolve(self.instance, record)
        notice = ended_notice(instance)
        return Decision(
            records=(record,),
            commands=tuple(self.outgoing),
            timers=timers(instance),
            instance=instance,
            notices=() if notice is None else (notice,),
        )
