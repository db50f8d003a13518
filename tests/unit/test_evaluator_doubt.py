"""A property of the pure core with timeouts: whatever attempts time out (having taken
effect or not), a saga never ends COMPENSATED with the effect of a step that nothing
undoes, nor with an effect left that its compensation did not undo; when it completes,
every step took effect. The participants keep the contract of docs/wire-contract.md:
idempotent per business key, so once an attempt took effect, later attempts answer
success."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagakit import (
    Command,
    Envelope,
    Incoming,
    Message,
    Phase,
    Reply,
    RetryPolicy,
    Saga,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Step,
    decide,
    replay,
)
from sagakit._evaluator import timers
from sagakit._messages import TimerFired


class DState(BaseModel):
    key: str


class DDo(Command, type="dtest.Do"):
    key: str


class DUndo(Command, type="dtest.Undo"):
    key: str


class DDone(Reply, type="dtest.Done"):
    pass


class DFailed(Reply, type="dtest.Failed"):
    pass


class DUndone(Reply, type="dtest.Undone"):
    pass


@dataclass(frozen=True)
class Spec:
    compensate: bool
    can_fail: bool
    attempts: int


@st.composite
def sagas(draw: st.DrawFn) -> tuple[Saga[DState], list[Spec]]:
    """Valid sagas whose every step has a timeout: before the end (the pivot, or the last
    step) a step must compensate, since every later step may time out."""
    n = draw(st.integers(1, 5))
    pivot = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    end = pivot if pivot is not None else n - 1
    specs = [
        Spec(
            compensate=i < end or (i == end and draw(st.booleans())),
            can_fail=i <= end and draw(st.booleans()),
            attempts=draw(st.integers(1, 3)),
        )
        for i in range(n)
    ]
    steps = [
        Step(
            f"s{i}",
            invoke=DDo,
            on_reply={DDone: None},
            failures=[DFailed] if spec.can_fail else [],
            retry=RetryPolicy(max_attempts=spec.attempts, timeout_s=1, initial_backoff_s=0),
            compensate=DUndo if spec.compensate else None,
            compensation_retry=RetryPolicy(max_attempts=2, timeout_s=1, initial_backoff_s=0),
            pivot=i == pivot,
        )
        for i, spec in enumerate(specs)
    ]
    return Saga(f"dtest-{n}-{pivot}".lower(), state=DState, steps=steps), specs


def envelope(message_id: str, message_type: str, causation: str) -> Envelope:
    return Envelope(
        message_id=message_id,
        message_type=message_type,
        saga_id="d-1",
        correlation_id="start",
        causation_id=causation,
        saga_type=None,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(saga_and_specs=sagas(), data=st.data())
def test_no_effect_is_left_that_nothing_undoes(
    saga_and_specs: tuple[Saga[DState], list[Spec]], data: st.DataObject
) -> None:
    saga, specs = saga_and_specs
    clock = 1_000
    instance: SagaInstance | None = None
    records: list[Any] = []
    applied: set[str] = set()  # steps whose effect happened, in the world
    undone: list[str] = []

    def feed(incoming: Incoming[Message]) -> None:
        nonlocal instance
        decision = decide(saga, instance, incoming)
        assert decision.rejected is None and decision.ignored is None, decision
        instance = decision.instance
        records.extend(decision.records)

    start = Envelope(
        message_id="start",
        message_type=StartSaga.message_type,
        saga_id="d-1",
        correlation_id="start",
        causation_id="start",
        saga_type=saga.name,
    )
    feed(Incoming(start, StartSaga(state={"key": "k"}), clock))
    for _ in range(100):
        assert instance is not None
        if instance.status.settled:
            break
        pending = instance.pending
        assert pending is not None, "no retry waits for a back-off here"
        step = pending.step
        clock += 10
        if pending.phase is Phase.FORWARD:
            spec = specs[int(step[1:])]
            choices = ["done", "timeout-applied", "timeout-lost"]
            if step in applied:
                choices = ["done", "timeout-applied"]  # idempotent per business key
            elif spec.can_fail:
                choices.append("failed")
            outcome = data.draw(st.sampled_from(choices), label=f"{pending.message_id}")
            if outcome in ("done", "timeout-applied"):
                applied.add(step)
        else:
            outcome = data.draw(st.sampled_from(["undone", "timeout-lost"]), label="undo")
            if outcome == "undone":
                undone.append(step)
        if outcome.startswith("timeout"):
            [timer] = [t for t in timers(instance) if t.kind == "timeout"]
            env = envelope(timer.message_id, TimerFired.message_type, timer.message_id)
            feed(
                Incoming(env, TimerFired(kind=timer.kind, ref=timer.ref), max(clock, timer.due_ms))
            )
            clock = max(clock, timer.due_ms)
        else:
            reply = {"done": DDone(), "failed": DFailed(), "undone": DUndone()}[outcome]
            env = envelope(f"r-{pending.message_id}", reply.message_type, pending.message_id)
            feed(Incoming(env, reply, clock))
    assert instance is not None and instance.status.settled, "the saga did not settle"

    if instance.status is SagaStatus.COMPLETED:
        assert applied == {f"s{i}" for i in range(len(specs))}
    if instance.status is SagaStatus.COMPENSATED:
        for name in applied:
            assert specs[int(name[1:])].compensate, f"{name} took effect and nothing undid it"
            assert name in undone, f"{name} took effect and was not undone"
        # undone in reverse order of the steps, each once
        assert list(instance.compensated) == sorted(instance.compensated, reverse=True)
        assert len(set(instance.compensated)) == len(instance.compensated)
    assert replay(records) == {"d-1": instance}
