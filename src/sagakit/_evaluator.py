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

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from ._codec import Incoming
from ._definition import RetryPolicy, Saga, SagaInfo, _ResolvedStep
from ._failure_reply import HandlerFailed
from ._messages import Command, Message, Reply, ResolveSaga, ResumeSaga, StartSaga, TimerFired


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


@dataclass(frozen=True, slots=True)
class Transition:
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
    pending: PendingCommand | None
    failure: str | None
    correlation_id: str
    started_ms: int
    next: NextAttempt | None = None
    deadline_ms: int | None = None
    note: str | None = None
    trace: str | None = None
    #: A digest of the start request's state (on the start transition only): a second
    #: start with another state conflicts.
    start_digest: str | None = None


@dataclass(frozen=True, slots=True)
class SagaInstance:
    """The orchestrator's view of one saga."""

    saga_id: str
    saga_type: str
    version: int
    status: SagaStatus
    state: BaseModel
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    pending: PendingCommand | None
    failure: str | None
    correlation_id: str
    started_ms: int
    updated_ms: int
    seq: int
    applied: frozenset[str]
    next: NextAttempt | None = None
    deadline_ms: int | None = None
    trace: str | None = None
    start_digest: str | None = None


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
        pending=t.pending,
        failure=t.failure,
        correlation_id=t.correlation_id,
        started_ms=t.started_ms,
        updated_ms=t.at_ms,
        seq=t.seq,
        applied=applied | {t.cause},
        next=t.next,
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
    found = []
    pending = instance.pending
    if pending is not None and pending.deadline_ms is not None:
        found.append(Timer(instance.saga_id, "timeout", pending.message_id, pending.deadline_ms))
    nxt = instance.next
    if nxt is not None and nxt.due_ms is not None:
        found.append(Timer(instance.saga_id, "retry", nxt.ref, nxt.due_ms))
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
    definition: Saga[Any], instance: SagaInstance | None, incoming: Incoming[Message]
) -> Decision:
    """The decision for one inbox message, given the saga's current instance (or None)."""
    env = incoming.envelope
    message = incoming.message
    if isinstance(message, StartSaga):  # checked even when the saga exists
        return _start(definition, instance, incoming)
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
    return Decision(
        instance=instance,
        rejected=f"{env.message_type} is not a start request, reply, timer or operator "
        f"request; saga {definition.name!r} cannot handle it",
    )


# -- start ---------------------------------------------------------------------------------
def _start(
    definition: Saga[Any], instance: SagaInstance | None, incoming: Incoming[Message]
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
    assert isinstance(incoming.message, StartSaga)
    try:
        state = definition.state.model_validate(incoming.message.state)
    except ValidationError as exc:
        return Decision(
            rejected=f"initial state does not validate as {definition.state.__qualname__}: "
            f"{exc.error_count()} error(s): {exc.errors(include_url=False)[0]['msg']}"
        )
    digest = state_digest(state)
    if instance is not None:
        if instance.start_digest is not None and instance.start_digest != digest:
            return Decision(
                instance=instance,
                rejected=f"saga {env.saga_id} was started with another state (it is "
                f"{instance.status.value}); a start request for an existing saga id must "
                "repeat its state, or use a new id",
                rejected_as="StartConflict",
            )
        if env.message_id in instance.applied:
            return Decision(instance=instance, ignored=f"duplicate message {env.message_id}")
        return Decision(instance=instance, ignored=f"saga {env.saga_id} already started")
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
    )
    return draft.forward_from(0, "started", None)


def state_digest(state: BaseModel) -> str:
    """A short digest of a state's JSON: equal states, equal digests."""
    import hashlib

    return hashlib.sha256(state.__pydantic_serializer__.to_json(state)).hexdigest()[:32]


# -- replies -------------------------------------------------------------------------------
def _reply(definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message]) -> Decision:
    env = incoming.envelope
    reply = incoming.message
    assert isinstance(reply, Reply)
    pending = instance.pending
    if pending is None or env.causation_id != pending.message_id:
        return Decision(
            instance=instance,
            ignored=f"reply to {env.causation_id} is not awaited "
            f"(saga {instance.saga_id} is {instance.status}, awaiting "
            f"{pending.message_id if pending else 'nothing'})",
        )
    step = definition.step(pending.step)
    draft = _Draft.from_instance(definition, instance, incoming)
    kind = type(reply)
    if isinstance(reply, HandlerFailed):
        # the participant could not handle it, and nothing of it took effect
        what = "compensation of " if pending.phase is Phase.COMPENSATE else ""
        return draft.retry_or_give_up(step, pending, f"{what}{step.name}: {reply.describe()}")
    if pending.phase is Phase.COMPENSATE:
        if kind in step.compensation_failures:
            return draft.retry_or_give_up(
                step, pending, f"compensation of {step.name} failed: {reply.message_type}"
            )
        draft.compensated = (*draft.compensated, step.name)
        return draft.compensate_next("step-compensated", step.name)
    if kind in step.success:
        update = step.success[kind]
        if update is not None:
            draft.state = update(draft.state, reply)
        draft.completed = (*draft.completed, step.name)
        return draft.forward_from(step.index + 1, "step-succeeded", step.name)
    if kind in step.retryable:
        return draft.retry_or_give_up(step, pending, f"{step.name}: {reply.message_type}")
    if kind in step.failures:
        if step.step.on_failure is not None:
            draft.state = step.step.on_failure(draft.state, reply)
        draft.failure = f"{step.name}: {reply.message_type}"
        if pending.uncertain and step.compensation is not None:
            draft.completed = (*draft.completed, step.name)  # an earlier attempt timed out
        return draft.compensate_next("step-failed", step.name)
    expected = sorted(r.message_type for r in (*step.success, *step.failures, *step.retryable))
    return Decision(
        instance=instance,
        rejected=f"step {step.name!r} of saga {definition.name!r} does not expect "
        f"{reply.message_type} (expects {', '.join(expected)})",
    )


# -- timers --------------------------------------------------------------------------------
def _timer(
    definition: Saga[Any], instance: SagaInstance, incoming: Incoming[Message], fired: TimerFired
) -> Decision:
    due = {(t.kind, t.ref) for t in timers(instance)}
    if (fired.kind, fired.ref) not in due:
        return Decision(instance=instance, ignored=f"timer {fired.kind}:{fired.ref} is stale")
    draft = _Draft.from_instance(definition, instance, incoming)
    if fired.kind == "retry":
        nxt = instance.next
        assert nxt is not None
        draft.next = None
        return draft.issue(
            "retry",
            nxt.step,
            definition.step(nxt.step),
            nxt.phase,
            nxt.attempt,
            nxt.budget_from,
            uncertain=nxt.uncertain,
        )
    if fired.kind == "timeout":
        pending = instance.pending
        assert pending is not None
        step = definition.step(pending.step)
        policy = _policy(step, pending.phase)
        return draft.retry_or_give_up(
            step,
            pending,
            f"{step.name} attempt {pending.attempt} got no reply within {policy.timeout_s}s",
            outcome_unknown=True,
        )
    # the saga deadline
    draft.deadline_ms = None
    current = instance.pending or instance.next
    if current is not None and current.phase is Phase.FORWARD:
        step = definition.step(current.step)
        in_doubt = instance.pending is not None or (
            instance.next is not None and instance.next.uncertain
        )
        if step.compensation is None and in_doubt:
            # The step in flight may take (or have taken) effect and cannot be undone, so
            # the steps before it must not be undone either: its outcome decides.
            draft.note = (
                f"saga deadline passed while {step.name} was in doubt; it has no "
                "compensation, so the saga goes on until its outcome is known"
            )
            return draft._decide(
                "deadline-deferred", step.name, SagaStatus.RUNNING, instance.pending, send=False
            )
    draft.failure = "saga deadline passed"
    # The step in flight (or waiting to retry after a timeout) may have taken effect:
    # it is compensated too, so compensations must tolerate "nothing to undo".
    if current is not None and current.phase is Phase.FORWARD:
        step = definition.step(current.step)
        if step.compensation is not None and step.name not in draft.completed:
            draft.completed = (*draft.completed, step.name)
    draft.next = None
    return draft.compensate_next("deadline-passed", current.step if current else None)


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
    if isinstance(request, ResolveSaga):
        draft.next = None
        return draft.finish("resolved", None, SagaStatus.RESOLVED)
    nxt = instance.next
    assert nxt is not None, "a parked saga records what to retry"
    draft.next = None
    return draft.issue(
        "resumed",
        nxt.step,
        definition.step(nxt.step),
        nxt.phase,
        nxt.attempt,
        nxt.attempt,
        uncertain=nxt.uncertain,
    )


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
    next: NextAttempt | None = None
    deadline_ms: int | None = None
    note: str | None = None
    start_digest: str | None = None

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
            next=instance.next,
            deadline_ms=instance.deadline_ms,
        )

    def forward_from(self, index: int, event: str, step: str | None) -> Decision:
        for r in self.definition.resolved()[index:]:
            if r.action is None:
                self.completed = (*self.completed, r.name)
                continue
            if self.definition.pivot_index is not None and r.index > self.definition.pivot_index:
                self.deadline_ms = None  # past the point of no return: no more aborting
            return self.issue(event, step, r, Phase.FORWARD, 1, 1)
        self.deadline_ms = None
        return self.finish(event, step, SagaStatus.COMPLETED)

    def compensate_next(self, event: str, step: str | None) -> Decision:
        self.deadline_ms = None
        done = set(self.compensated)
        for name in reversed(self.completed):
            r = self.definition.step(name)
            if name in done or r.compensation is None:
                continue
            return self.issue(event, step, r, Phase.COMPENSATE, 1, 1)
        return self.finish(event, step, SagaStatus.COMPENSATED)

    def retry_or_give_up(
        self,
        step: _ResolvedStep[Any],
        pending: PendingCommand,
        reason: str,
        *,
        outcome_unknown: bool = False,
    ) -> Decision:
        """After a retryable failure: the next attempt (now or after a back-off), or give up.

        Giving up compensates (forward, before the pivot) or parks the saga for a
        person (a compensation, or a step after the pivot).
        """
        policy = _policy(step, pending.phase)
        made = pending.attempt - pending.budget_from + 1
        uncertain = pending.uncertain or outcome_unknown
        if made < policy.max_attempts:
            attempt = pending.attempt + 1
            wait = policy.backoff_ms(made, f"{self.saga_id}:{step.name}:{attempt}")
            if wait <= 0:
                return self.issue(
                    "retry",
                    step.name,
                    step,
                    pending.phase,
                    attempt,
                    pending.budget_from,
                    uncertain=uncertain,
                )
            self.next = NextAttempt(
                step.name,
                pending.phase,
                attempt,
                pending.budget_from,
                self.at_ms + wait,
                uncertain=uncertain,
            )
            status = (
                SagaStatus.RUNNING if pending.phase is Phase.FORWARD else SagaStatus.COMPENSATING
            )
            self.note = reason
            return self._decide("retry-scheduled", step.name, status, None)
        give_up = f"{reason}; gave up after {made} attempt(s)"
        if pending.phase is Phase.COMPENSATE or self.definition.after_pivot(step):
            return self.park(step, pending, give_up)
        if uncertain and step.compensation is None:
            # It may have taken effect and nothing can undo it: undoing the steps before
            # it would leave its effect alone (a shipment for a rejected order).
            return self.park(
                step,
                pending,
                f"{give_up}; {step.name} may have taken effect and has no compensation, so "
                "the steps before it are not undone (resume retries it, resolve ends the saga)",
            )
        self.failure = give_up
        if uncertain and step.compensation is not None:
            # the command may have taken effect: compensations must tolerate "nothing to undo"
            self.completed = (*self.completed, step.name)
        return self.compensate_next("step-failed", step.name)

    def park(self, step: _ResolvedStep[Any], pending: PendingCommand, reason: str) -> Decision:
        self.failure = reason
        self.next = NextAttempt(
            step.name,
            pending.phase,
            pending.attempt + 1,
            pending.attempt + 1,
            None,
            uncertain=pending.uncertain,
        )
        self.deadline_ms = None
        return self._decide("parked", step.name, SagaStatus.FAILED_NEEDS_ATTENTION, None)

    def issue(
        self,
        event: str,
        step: str | None,
        target: _ResolvedStep[Any],
        phase: Phase,
        attempt: int,
        budget_from: int,
        *,
        uncertain: bool = False,
    ) -> Decision:
        action = target.action if phase is Phase.FORWARD else target.compensation
        assert action is not None
        timeout = _policy(target, phase).timeout_s
        info = SagaInfo(
            saga_id=self.saga_id,
            saga_type=self.definition.name,
            version=self.definition.version,
            step=target.name,
            attempt=attempt,
            failure=self.failure,
        )
        pending = PendingCommand(
            step=target.name,
            phase=phase,
            attempt=attempt,
            message_id=command_id(self.saga_id, target.name, phase, attempt),
            topic=action.topic,
            command=action.build(self.state, info),
            causation_id=self.cause,
            deadline_ms=self.at_ms + round(timeout * 1000) if timeout is not None else None,
            budget_from=budget_from,
            uncertain=uncertain,
        )
        self.next = None
        status = SagaStatus.RUNNING if phase is Phase.FORWARD else SagaStatus.COMPENSATING
        return self._decide(event, step, status, pending)

    def finish(self, event: str, step: str | None, status: SagaStatus) -> Decision:
        self.next = None
        self.deadline_ms = None
        return self._decide(event, step, status, None)

    def _decide(
        self,
        event: str,
        step: str | None,
        status: SagaStatus,
        pending: PendingCommand | None,
        *,
        send: bool = True,
    ) -> Decision:
        """The transition, and `pending` to send unless it is already out (`send` False)."""
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
            pending=pending,
            failure=self.failure,
            correlation_id=self.correlation_id,
            started_ms=self.started_ms,
            next=self.next,
            deadline_ms=self.deadline_ms,
            note=self.note,
            start_digest=self.start_digest,
        )
        instance = evolve(self.instance, record)
        return Decision(
            records=(record,),
            commands=(pending,) if pending is not None and send else (),
            timers=timers(instance),
            instance=instance,
        )
