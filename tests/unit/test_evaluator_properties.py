"""Property tests of the pure core: random valid sagas driven to the end by random
outcomes (with redelivered and stale messages thrown in) end as a simple model says,
send exactly the model's commands, and rebuild exactly from their journal records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagakit import (
    Command,
    DefinitionError,
    Envelope,
    Incoming,
    Message,
    PendingCommand,
    Phase,
    Reply,
    Saga,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Step,
    Transition,
    decide,
    evolve,
    replay,
)
from sagakit._journal import decode_transition, encode_transition

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# The registry is global: every type the generated sagas use is declared once, here.
class PState(BaseModel):
    key: str
    trail: tuple[str, ...] = ()
    failed: str | None = None


class Do(Command, type="ptest.Do"):
    """Built by a function: names the step and carries the state's trail."""

    step: str
    trail: tuple[str, ...]


class DoFromState(Command, type="ptest.DoFromState"):
    """Built from the state's fields by the DSL."""

    key: str
    trail: tuple[str, ...]


class Undo(Command, type="ptest.Undo"):
    step: str


class UndoFromState(Command, type="ptest.UndoFromState"):
    key: str
    failed: str | None


class Done(Reply, type="ptest.Done"):
    step: str


class Failed(Reply, type="ptest.Failed"):
    step: str


class Undone(Reply, type="ptest.Undone"):
    step: str


def do_for(name: str) -> Any:
    def build(state: PState) -> Do:
        return Do(step=name, trail=state.trail)

    return build


def undo_for(name: str) -> Any:
    def build(state: PState) -> Undo:
        return Undo(step=name)

    return build


def note_done(state: PState, reply: Done) -> PState:
    return state.model_copy(update={"trail": (*state.trail, reply.step)})


def note_failed(state: PState, reply: Failed) -> PState:
    return state.model_copy(update={"failed": reply.step})


@dataclass(frozen=True)
class StepSpec:
    remote: bool  # sends a command (invoke)
    compensate: bool
    can_fail: bool  # lists a failure reply
    pivot: bool
    from_state: bool  # invoke/compensate are Command classes built from the state
    to: str | None


def name_of(index: int) -> str:
    return f"s{index}"


def build_saga(specs: list[StepSpec]) -> Saga[PState]:
    steps = []
    for i, spec in enumerate(specs):
        name = name_of(i)
        invoke = (DoFromState if spec.from_state else do_for(name)) if spec.remote else None
        compensate = (
            (UndoFromState if spec.from_state else undo_for(name)) if spec.compensate else None
        )
        steps.append(
            Step(
                name,
                invoke=invoke,
                on_reply={Done: note_done} if spec.remote else {},
                failures=[Failed] if spec.can_fail else [],
                on_failure=note_failed if spec.can_fail else None,
                compensate=compensate,
                to=spec.to,
                pivot=spec.pivot,
            )
        )
    return Saga("ptest-saga", version=3, state=PState, steps=steps)


raw_step = st.builds(
    StepSpec,
    remote=st.booleans(),
    compensate=st.booleans(),
    can_fail=st.booleans(),
    pivot=st.booleans(),
    from_state=st.booleans(),
    to=st.sampled_from([None, "alpha", "beta"]),
)


def valid_by_rules(specs: list[StepSpec]) -> bool:
    """The definition rules, stated independently of the validator."""
    if any(not s.remote and (not s.compensate or s.can_fail) for s in specs):
        return False  # does nothing, or declares replies without sending a command
    pivots = [i for i, s in enumerate(specs) if s.pivot]
    if len(pivots) > 1:
        return False
    end = pivots[0] if pivots else len(specs) - 1
    if pivots and not specs[end].remote:
        return False
    if any(s.can_fail or s.compensate for s in specs[end + 1 :]):
        return False
    for i, s in enumerate(specs[:end]):
        if s.remote and not s.compensate and any(x.can_fail for x in specs[i + 1 : end + 1]):
            return False
    return True


@st.composite
def valid_specs(draw: st.DrawFn) -> list[StepSpec]:
    """A valid saga of 1-6 steps, repaired into shape so that few draws are wasted."""
    raw = draw(st.lists(raw_step, min_size=1, max_size=6))
    n = len(raw)
    pivot = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    end = pivot if pivot is not None else n - 1
    specs = []
    for i, s in enumerate(raw):
        remote = s.remote or i == pivot or i > end
        specs.append(
            StepSpec(
                remote=remote,
                compensate=(s.compensate or not remote) and i <= end,
                can_fail=s.can_fail and remote and i <= end,
                pivot=i == pivot,
                from_state=s.from_state,
                to=s.to,
            )
        )
    for i, s in enumerate(specs[:end]):
        if s.remote and not s.compensate and any(x.can_fail for x in specs[i + 1 : end + 1]):
            specs[i] = StepSpec(True, True, s.can_fail, s.pivot, s.from_state, s.to)
    assert valid_by_rules(specs)
    return specs


# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    status: SagaStatus
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    sent: tuple[tuple[str, Phase], ...]
    trail: tuple[str, ...]
    failed: str | None


def expected_run(specs: list[StepSpec], fails: list[bool]) -> Expected:
    completed: list[str] = []
    sent: list[tuple[str, Phase]] = []
    trail: list[str] = []
    for i, spec in enumerate(specs):
        name = name_of(i)
        if not spec.remote:
            completed.append(name)
            continue
        sent.append((name, Phase.FORWARD))
        if spec.can_fail and fails[i]:
            undo = tuple(n for n in reversed(completed) if specs[int(n[1:])].compensate)
            sent.extend((n, Phase.COMPENSATE) for n in undo)
            return Expected(
                SagaStatus.COMPENSATED, tuple(completed), undo, tuple(sent), tuple(trail), name
            )
        completed.append(name)
        trail.append(name)
    return Expected(SagaStatus.COMPLETED, tuple(completed), (), tuple(sent), tuple(trail), None)


# -- driving decide() ---------------------------------------------------------------------------

SAGA_ID = "ps-1"


def start_message(at_ms: int) -> Incoming[Message]:
    envelope = Envelope(
        message_id="start",
        message_type=StartSaga.message_type,
        saga_id=SAGA_ID,
        correlation_id="start",
        causation_id="start",
        saga_type="ptest-saga",
        saga_version="3",
    )
    return Incoming(envelope, StartSaga(state={"key": "k-1"}), at_ms)


def reply_message(
    command: PendingCommand, message: Reply, message_id: str, at_ms: int
) -> Incoming[Message]:
    envelope = Envelope(
        message_id=message_id,
        message_type=message.message_type,
        saga_id=SAGA_ID,
        correlation_id="start",
        causation_id=command.message_id,
    )
    return Incoming(envelope, message, at_ms)


@dataclass
class Outcome:
    instance: SagaInstance
    records: list[Transition]
    commands: list[PendingCommand]


def drive(
    saga: Saga[PState], specs: list[StepSpec], fails: list[bool], data: st.DataObject
) -> Outcome:
    clock = 1_000
    delivered: list[Incoming[Message]] = []
    answered: list[PendingCommand] = []
    records: list[Transition] = []
    commands: list[PendingCommand] = []

    def feed(incoming: Incoming[Message], instance: SagaInstance | None) -> SagaInstance:
        decision = decide(saga, instance, incoming)
        assert decision.ignored is None and decision.rejected is None, decision
        assert len(decision.records) == 1
        assert decision.instance is not None
        assert decision.instance.pending == decision.records[0].pending
        assert decision.commands == (
            () if decision.instance.pending is None else (decision.instance.pending,)
        )
        records.extend(decision.records)
        commands.extend(decision.commands)
        delivered.append(incoming)
        return decision.instance

    def noise(instance: SagaInstance) -> None:
        """Redeliver earlier messages and send stale replies: nothing may change."""
        for _ in range(data.draw(st.integers(0, 2), label="noise")):
            if answered and data.draw(st.booleans(), label="stale"):
                old = data.draw(st.sampled_from(answered), label="stale command")
                incoming = reply_message(old, Done(step=old.step), f"stale-{clock}", clock)
            else:
                incoming = data.draw(st.sampled_from(delivered), label="redelivered")
            decision = decide(saga, instance, incoming)
            assert decision.ignored is not None, decision
            assert decision.rejected is None
            assert decision.records == () and decision.commands == ()
            assert decision.instance is instance

    instance = feed(start_message(clock), None)
    for _ in range(2 * len(specs) + 1):
        noise(instance)
        command = instance.pending
        if command is None:
            break
        assert instance.status is (
            SagaStatus.RUNNING if command.phase is Phase.FORWARD else SagaStatus.COMPENSATING
        )
        spec = specs[int(command.step[1:])]
        answer: Reply
        if command.phase is Phase.COMPENSATE:
            answer = Undone(step=command.step)
        elif spec.can_fail and fails[int(command.step[1:])]:
            answer = Failed(step=command.step)
        else:
            answer = Done(step=command.step)
        clock += 7
        instance = feed(reply_message(command, answer, f"r-{command.message_id}", clock), instance)
        answered.append(command)
    assert instance.pending is None, "the saga did not end"
    noise(instance)
    return Outcome(instance, records, commands)


@PROPERTY_SETTINGS
@given(specs=valid_specs(), fails=st.lists(st.booleans(), min_size=6, max_size=6), data=st.data())
def test_random_sagas_end_as_the_model_says_and_replay_exactly(
    specs: list[StepSpec], fails: list[bool], data: st.DataObject
) -> None:
    saga = build_saga(specs)
    run = drive(saga, specs, fails, data)
    expected = expected_run(specs, fails)
    live = run.instance

    # the end state
    assert live.status is expected.status
    assert live.completed == expected.completed
    assert live.compensated == expected.compensated
    if expected.status is SagaStatus.COMPLETED:
        assert live.completed == tuple(name_of(i) for i in range(len(specs)))
        assert live.failure is None
    else:
        assert live.failure == f"{expected.failed}: ptest.Failed"
        assert live.compensated == tuple(
            n for n in reversed(live.completed) if saga.step(n).compensation is not None
        )
    assert live.state == PState(key="k-1", trail=expected.trail, failed=expected.failed)

    # the commands sent: exactly the model's, with deterministic ids and the right payloads
    assert [(c.step, c.phase) for c in run.commands] == list(expected.sent)
    for c in run.commands:
        suffix = "1" if c.phase is Phase.FORWARD else "c1"
        assert c.message_id == f"{SAGA_ID}:{c.step}:{suffix}"
        assert c.attempt == 1
        r = saga.step(c.step)
        action = r.action if c.phase is Phase.FORWARD else r.compensation
        assert action is not None
        assert c.topic == action.topic
        assert type(c.command) is action.command
    assert len({c.message_id for c in run.commands}) == len(run.commands)

    # the journal: consecutive seqs, and folding it rebuilds the live instance
    assert [t.seq for t in run.records] == list(range(1, len(run.records) + 1))
    assert live.seq == len(run.records)
    assert replay(run.records) == {SAGA_ID: live}
    folded: SagaInstance | None = None
    for t in run.records:
        folded = evolve(folded, t)
    assert folded == live

    # ...also after a round trip through the journal's wire encoding
    decoded = [decode_transition(encode_transition(t), saga) for t in run.records]
    assert decoded == run.records
    assert replay(decoded) == {SAGA_ID: live}


@PROPERTY_SETTINGS
@given(specs=st.lists(raw_step, min_size=1, max_size=6))
def test_the_validator_accepts_exactly_the_valid_definitions(specs: list[StepSpec]) -> None:
    try:
        build_saga(specs)
    except DefinitionError as exc:
        assert not valid_by_rules(specs), f"valid definition refused: {exc}"
        assert "'ptest-saga'" in str(exc)
    else:
        assert valid_by_rules(specs), "invalid definition accepted"
