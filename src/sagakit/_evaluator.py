"""The pure core: decide(definition, instance, message) -> Decision, and evolve/replay.

No I/O and no clock: time comes in with the message. The orchestrator journals each
Decision's records before it sends the commands; replaying those records through
`evolve` (the same function `decide` uses) rebuilds every instance exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from ._codec import Incoming
from ._definition import Saga, _ResolvedStep
from ._messages import Command, Message, Reply, StartSaga


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED_NEEDS_ATTENTION = "FAILED_NEEDS_ATTENTION"

    @property
    def terminal(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)


class Phase(StrEnum):
    FORWARD = "forward"
    COMPENSATE = "compensate"


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A command sent and not yet answered; re-sent as it is after a restore."""

    step: str
    phase: Phase
    attempt: int
    message_id: str
    topic: str
    command: Command
    causation_id: str


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


@dataclass(frozen=True, slots=True)
class Decision:
    """What to journal and send for one message.

    ``ignored`` says why a message changes nothing (a duplicate, a stale reply);
    ``rejected`` says why it cannot be processed at all (it belongs in a DLQ).
    """

    records: tuple[Transition, ...] = ()
    commands: tuple[PendingCommand, ...] = ()
    timers: tuple[Any, ...] = ()
    instance: SagaInstance | None = None
    ignored: str | None = None
    rejected: str | None = None


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
    )


def replay(records: Iterable[Transition]) -> dict[str, SagaInstance]:
    """Fold journal records into instances by saga id."""
    instances: dict[str, SagaInstance] = {}
    for t in records:
        instances[t.saga_id] = evolve(instances.get(t.saga_id), t)
    return instances


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
    if instance is not None and env.message_id in instance.applied:
        return Decision(instance=instance, ignored=f"duplicate message {env.message_id}")
    if isinstance(message, StartSaga):
        return _start(definition, instance, incoming)
    if isinstance(message, Reply):
        return _reply(definition, instance, incoming)
    return Decision(
        instance=instance,
        rejected=f"{env.message_type} is neither a start request nor a reply; "
        f"saga {definition.name!r} cannot handle it",
    )


# -- start ---------------------------------------------------------------------------------
def _start(
    definition: Saga[Any], instance: SagaInstance | None, incoming: Incoming[Message]
) -> Decision:
    env = incoming.envelope
    if instance is not None:
        return Decision(instance=instance, ignored=f"saga {env.saga_id} already started")
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
    base = _Draft(
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
    )
    return base.forward_from(0, "started", None, None)


# -- replies -------------------------------------------------------------------------------
def _reply(
    definition: Saga[Any], instance: SagaInstance | None, incoming: Incoming[Message]
) -> Decision:
    env = incoming.envelope
    reply = incoming.message
    assert isinstance(reply, Reply)
    if instance is None:
        return Decision(rejected=f"reply {env.message_type} for unknown saga {env.saga_id}")
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
    if pending.phase is Phase.COMPENSATE:
        draft.compensated = (*draft.compensated, step.name)
        return draft.compensate_next("step-compensated", step.name, env.message_id)
    kind = type(reply)
    if kind in step.success:
        update = step.success[kind]
        if update is not None:
            draft.state = update(draft.state, reply)
        draft.completed = (*draft.completed, step.name)
        return draft.forward_from(step.index + 1, "step-succeeded", step.name, env.message_id)
    if kind in step.failures:
        if step.step.on_failure is not None:
            draft.state = step.step.on_failure(draft.state, reply)
        draft.failure = f"{step.name}: {reply.message_type}"
        return draft.compensate_next("step-failed", step.name, env.message_id)
    expected = sorted(r.message_type for r in (*step.success, *step.failures))
    return Decision(
        instance=instance,
        rejected=f"step {step.name!r} of saga {definition.name!r} does not expect "
        f"{reply.message_type} (expects {', '.join(expected)})",
    )


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
        )

    def forward_from(
        self, index: int, event: str, step: str | None, causation: str | None
    ) -> Decision:
        for r in self.definition.resolved()[index:]:
            if r.action is None:
                self.completed = (*self.completed, r.name)
                continue
            return self._issue(event, step, r, Phase.FORWARD, SagaStatus.RUNNING, causation)
        return self._finish(event, step, SagaStatus.COMPLETED)

    def compensate_next(self, event: str, step: str | None, causation: str | None) -> Decision:
        done = set(self.compensated)
        for name in reversed(self.completed):
            r = self.definition.step(name)
            if name in done or r.compensation is None:
                continue
            return self._issue(event, step, r, Phase.COMPENSATE, SagaStatus.COMPENSATING, causation)
        return self._finish(event, step, SagaStatus.COMPENSATED)

    def _issue(
        self,
        event: str,
        step: str | None,
        target: _ResolvedStep[Any],
        phase: Phase,
        status: SagaStatus,
        causation: str | None,
    ) -> Decision:
        action = target.action if phase is Phase.FORWARD else target.compensation
        assert action is not None
        attempt = 1
        pending = PendingCommand(
            step=target.name,
            phase=phase,
            attempt=attempt,
            message_id=command_id(self.saga_id, target.name, phase, attempt),
            topic=action.topic,
            command=action.build(self.state),
            causation_id=causation or self.cause,
        )
        record = self._record(event, step, status, pending)
        return Decision(
            records=(record,), commands=(pending,), instance=evolve(self.instance, record)
        )

    def _finish(self, event: str, step: str | None, status: SagaStatus) -> Decision:
        record = self._record(event, step, status, None)
        return Decision(records=(record,), instance=evolve(self.instance, record))

    def _record(
        self, event: str, step: str | None, status: SagaStatus, pending: PendingCommand | None
    ) -> Transition:
        return Transition(
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
        )


def with_applied(instance: SagaInstance, message_ids: Iterable[str]) -> SagaInstance:
    return replace(instance, applied=instance.applied | frozenset(message_ids))
