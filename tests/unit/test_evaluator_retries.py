"""decide() with retries, durable timers, compensation failures, operator requests, the
pivot and the saga deadline, on small sagas of this file; every transition is checked to
survive the journal (encode/decode, then replay)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    Decision,
    DefinitionError,
    Envelope,
    Incoming,
    Message,
    PendingCommand,
    Phase,
    Reply,
    RetryPolicy,
    Saga,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Step,
    Transition,
    decide,
    replay,
)
from sagakit._definition import DEFAULT_COMPENSATION_RETRY
from sagakit._evaluator import NextAttempt, Timer, command_id, timers
from sagakit._journal import decode_transition, encode_transition
from sagakit._messages import ResolveSaga, ResumeSaga, TimerFired

# -- messages and sagas --------------------------------------------------------------------


class RState(BaseModel):
    order_id: str
    note: str = ""


class DoA(Command, type="rtest.DoA"):
    order_id: str


class UndoA(Command, type="rtest.UndoA"):
    order_id: str


class DoB(Command, type="rtest.DoB"):
    order_id: str


class UndoB(Command, type="rtest.UndoB"):
    order_id: str


class DoP(Command, type="rtest.DoP"):
    order_id: str


class DoC(Command, type="rtest.DoC"):
    order_id: str


class ADone(Reply, type="rtest.ADone"):
    pass


class AUndone(Reply, type="rtest.AUndone"):
    pass


class UndoAFailed(Reply, type="rtest.UndoAFailed"):
    pass


class BDone(Reply, type="rtest.BDone"):
    pass


class BBusy(Reply, type="rtest.BBusy"):
    pass


class BRefused(Reply, type="rtest.BRefused"):
    pass


class BUndone(Reply, type="rtest.BUndone"):
    pass


class PDone(Reply, type="rtest.PDone"):
    pass


class PRefused(Reply, type="rtest.PRefused"):
    pass


class CDone(Reply, type="rtest.CDone"):
    pass


class CBusy(Reply, type="rtest.CBusy"):
    pass


def step_a(
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
) -> Step[RState]:
    return Step(
        "a",
        invoke=DoA,
        on_reply={ADone: None},
        compensate=UndoA,
        compensation_retry=compensation_retry,
        compensation_failures=(UndoAFailed,),
    )


def three_steps(
    name: str,
    retry: RetryPolicy,
    *,
    b_compensates: bool = True,
    a_compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
    deadline_s: float | None = None,
) -> Saga[RState]:
    """a (compensable) -> b (retried per `retry`; BBusy retries, BRefused fails) -> c."""
    return Saga(
        name,
        state=RState,
        deadline_s=deadline_s,
        steps=[
            step_a(a_compensation_retry),
            Step(
                "b",
                invoke=DoB,
                on_reply={BDone: None},
                retry=retry,
                retry_on=(BBusy,),
                failures=(BRefused,),
                compensate=UndoB if b_compensates else None,
            ),
            Step("c", invoke=DoC, on_reply={CDone: None}),
        ],
    )


def pivoted(name: str, *, deadline_s: float | None = None) -> Saga[RState]:
    """a (compensable) -> p (the pivot, may fail) -> c (retried forward: timeouts, CBusy)."""
    return Saga(
        name,
        state=RState,
        deadline_s=deadline_s,
        steps=[
            step_a(),
            Step("p", invoke=DoP, on_reply={PDone: None}, failures=(PRefused,), pivot=True),
            Step(
                "c",
                invoke=DoC,
                on_reply={CDone: None},
                retry_on=(CBusy,),
                retry=RetryPolicy(max_attempts=2, initial_backoff_s=0, timeout_s=1),
            ),
        ],
    )


TIMEOUTS_NOW = three_steps(
    "rtest-timeouts-now", RetryPolicy(max_attempts=3, timeout_s=1, initial_backoff_s=0)
)
TIMEOUTS_LATER = three_steps("rtest-timeouts-later", RetryPolicy(max_attempts=3, timeout_s=1))
BUSY = three_steps(
    "rtest-busy", RetryPolicy(max_attempts=3, initial_backoff_s=0.2, multiplier=2, jitter=0)
)

SAGA_ID = "s-1"


# -- building inbox messages ---------------------------------------------------------------


def start(saga: Saga[Any], *, at_ms: int = 1_000, saga_id: str = SAGA_ID) -> Incoming[Message]:
    message_id = f"start-{saga_id}"
    envelope = Envelope(
        message_id=message_id,
        message_type=StartSaga.message_type,
        saga_id=saga_id,
        correlation_id=message_id,
        causation_id=message_id,
        saga_type=saga.name,
        saga_version=str(saga.version),
    )
    return Incoming(envelope, StartSaga(state={"order_id": "o1"}), at_ms)


def reply(
    to: PendingCommand | str,
    message: Message,
    *,
    at_ms: int,
    saga_id: str = SAGA_ID,
    message_id: str | None = None,
) -> Incoming[Message]:
    """A participant's reply to command `to` (or to a command id)."""
    cid = to if isinstance(to, str) else to.message_id
    envelope = Envelope(
        message_id=message_id or f"{cid}:reply",
        message_type=message.message_type,
        saga_id=saga_id,
        correlation_id=f"start-{saga_id}",
        causation_id=cid,
    )
    return Incoming(envelope, message, at_ms)


def fired(timer: Timer, *, at_ms: int | None = None) -> Incoming[Message]:
    """The owner writing a due timer to its own inbox (at its due time unless told)."""
    envelope = Envelope(
        message_id=timer.message_id,
        message_type=TimerFired.message_type,
        saga_id=timer.saga_id,
        correlation_id=f"start-{timer.saga_id}",
        causation_id=timer.message_id,
    )
    when = timer.due_ms if at_ms is None else at_ms
    return Incoming(envelope, TimerFired(kind=timer.kind, ref=timer.ref), when)


def operator(
    request: ResumeSaga | ResolveSaga, *, message_id: str, at_ms: int, saga_id: str = SAGA_ID
) -> Incoming[Message]:
    envelope = Envelope(
        message_id=message_id,
        message_type=request.message_type,
        saga_id=saga_id,
        correlation_id=message_id,
        causation_id=message_id,
    )
    return Incoming(envelope, request, at_ms)


@dataclass
class Run:
    """Feeds messages to decide(), keeping what a journal keeps, and checks after every
    decision that its records survive encode/decode and that replaying the decoded
    journal rebuilds the live instance and its timers."""

    saga: Saga[Any]
    instance: SagaInstance | None = None
    records: list[Transition] = field(default_factory=list)
    commands: list[PendingCommand] = field(default_factory=list)
    clock: int = 1_000

    def feed(self, incoming: Incoming[Message]) -> Decision:
        self.clock = max(self.clock, incoming.at_ms)
        decision = decide(self.saga, self.instance, incoming)
        assert decision.rejected is None, decision.rejected
        if decision.ignored is not None:
            assert decision.records == () and decision.commands == ()
            return decision
        assert decision.instance is not None
        self.instance = decision.instance
        self.records.extend(decision.records)
        self.commands.extend(decision.commands)
        decoded = [decode_transition(encode_transition(t), self.saga) for t in self.records]
        assert decoded == self.records
        rebuilt = replay(decoded)[self.instance.saga_id]
        assert rebuilt == self.instance
        assert decision.timers == timers(rebuilt)
        return decision

    def start(self, at_ms: int = 1_000) -> Decision:
        return self.feed(start(self.saga, at_ms=at_ms))

    def answer(self, message: Message, *, after_ms: int = 100) -> Decision:
        """Answer the pending command with `message`, `after_ms` later."""
        return self.feed(reply(self.pending, message, at_ms=self.clock + after_ms))

    def fire(self, kind: str, *, at_ms: int | None = None) -> Decision:
        """Fire the one due timer of `kind` (at its due time unless told)."""
        return self.feed(fired(self.timer(kind), at_ms=at_ms))

    def timer(self, kind: str) -> Timer:
        [timer] = [t for t in timers(self.inst) if t.kind == kind]
        return timer

    def resume(self, note: str = "", message_id: str = "resume-1") -> Decision:
        return self.feed(
            operator(ResumeSaga(note=note), message_id=message_id, at_ms=self.clock + 1_000)
        )

    def resolve(self, note: str, message_id: str = "resolve-1") -> Decision:
        return self.feed(
            operator(ResolveSaga(note=note), message_id=message_id, at_ms=self.clock + 1_000)
        )

    @property
    def inst(self) -> SagaInstance:
        assert self.instance is not None
        return self.instance

    @property
    def pending(self) -> PendingCommand:
        assert self.inst.pending is not None
        return self.inst.pending


def sent(decision: Decision) -> list[str]:
    return [c.message_id for c in decision.commands]


def kinds(instance: SagaInstance) -> set[str]:
    return {t.kind for t in timers(instance)}


def assert_ignored(decision: Decision, before: SagaInstance | None, why: str) -> None:
    assert decision.ignored is not None and why in decision.ignored
    assert decision.records == () and decision.commands == ()
    assert decision.instance is before


def at_b(saga: Saga[Any]) -> Run:
    """A run whose step a succeeded and step b was just sent."""
    run = Run(saga)
    run.start()
    run.answer(ADone())
    assert run.pending.step == "b"
    return run


# -- retry policy ----------------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_and_is_capped() -> None:
    policy = RetryPolicy(
        max_attempts=9, initial_backoff_s=0.1, multiplier=3, max_backoff_s=1, jitter=0
    )
    waits = [policy.backoff_ms(made, "any") for made in range(1, 7)]
    assert waits == [100, 300, 900, 1_000, 1_000, 1_000]


def test_jitter_stays_within_bounds_and_is_deterministic() -> None:
    policy = RetryPolicy(initial_backoff_s=1, multiplier=2, max_backoff_s=3, jitter=0.25)
    for made, base_ms in ((1, 1_000), (2, 2_000), (3, 3_000), (6, 3_000)):
        waits = [policy.backoff_ms(made, f"saga-{i}:b:{made + 1}") for i in range(200)]
        assert all(base_ms * 0.75 <= w <= base_ms * 1.25 for w in waits), (made, waits)
        assert len(set(waits)) > 50  # the factor really varies with the seed
        again = [policy.backoff_ms(made, f"saga-{i}:b:{made + 1}") for i in range(200)]
        assert again == waits


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"initial_backoff_s": -0.1}, "initial_backoff_s"),
        ({"max_backoff_s": -1}, "max_backoff_s"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -1}, "timeout_s"),
    ],
)
def test_retry_policy_rejects_impossible_values(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(DefinitionError, match=words):
        RetryPolicy(**kwargs)


def test_retry_policy_accepts_its_limits() -> None:
    policy = RetryPolicy(max_attempts=1, initial_backoff_s=0, jitter=0.99, timeout_s=0.001)
    assert policy.backoff_ms(1, "x") == 0


def test_backoff_of_a_long_retry_budget_is_capped_not_an_overflow() -> None:
    policy = RetryPolicy(max_attempts=5_000, initial_backoff_s=0.01, max_backoff_s=60, jitter=0)
    assert policy.backoff_ms(1_100, "s-1:c:1101") == 60_000


@pytest.mark.parametrize("value", [math.inf, math.nan], ids=["inf", "nan"])
def test_non_finite_timeouts_are_rejected_at_build_time(value: float) -> None:
    with pytest.raises(DefinitionError):
        RetryPolicy(timeout_s=value)


def test_an_infinite_saga_deadline_is_rejected_at_build_time() -> None:
    with pytest.raises(DefinitionError):
        pivoted("rtest-inf-deadline", deadline_s=math.inf)


# -- validation ------------------------------------------------------------------------------


def test_a_step_with_a_timeout_can_fail() -> None:
    assert Step("x", invoke=DoB, on_reply={BDone: None}, retry=RetryPolicy(timeout_s=1)).can_fail
    assert not Step("x", invoke=DoB, on_reply={BDone: None}, retry=RetryPolicy(3)).can_fail
    assert Step("x", invoke=DoB, on_reply={BDone: None}, retry_on=(BBusy,)).can_fail

    def saga(retry: RetryPolicy) -> Saga[RState]:
        return Saga(
            "rtest-can-fail",
            state=RState,
            steps=[
                Step("first", invoke=DoA, on_reply={ADone: None}),  # no compensation
                Step("second", invoke=DoB, on_reply={BDone: None}, retry=retry),
            ],
        )

    saga(RetryPolicy(max_attempts=3))  # cannot fail: fine
    with pytest.raises(DefinitionError, match=r"'first'.*no compensation.*'second'"):
        saga(RetryPolicy(max_attempts=3, timeout_s=5))


def test_with_a_deadline_every_invoking_step_before_the_pivot_can_fail() -> None:
    def saga(deadline_s: float | None, pivot: bool = False) -> Saga[RState]:
        return Saga(
            "rtest-deadline-check",
            state=RState,
            deadline_s=deadline_s,
            steps=[
                Step("first", invoke=DoA, on_reply={ADone: None}),  # no compensation
                Step("second", invoke=DoB, on_reply={BDone: None}, pivot=pivot),
            ],
        )

    saga(None)
    saga(None, pivot=True)
    with pytest.raises(DefinitionError, match=r"'first'.*'second', which may fail"):
        saga(30)
    with pytest.raises(DefinitionError, match=r"'first'.*'second', which may fail"):
        saga(30, pivot=True)  # the deadline can abort the pivot itself


def test_with_a_deadline_steps_after_the_pivot_need_no_compensation() -> None:
    saga = Saga(
        "rtest-deadline-after-pivot",
        state=RState,
        deadline_s=30,
        steps=[
            Step("p", invoke=DoP, on_reply={PDone: None}, pivot=True),
            Step("c", invoke=DoC, on_reply={CDone: None}),
            Step("d", invoke=DoB, on_reply={BDone: None}),
        ],
    )
    assert saga.pivot_index == 0


def test_compensation_failures_need_a_compensation() -> None:
    with pytest.raises(DefinitionError, match=r"'a'.*compensation_failures.*no compensate"):
        Saga(
            "rtest-no-undo",
            state=RState,
            steps=[Step("a", invoke=DoA, on_reply={ADone: None}, compensation_failures=(AUndone,))],
        )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"failures": (BBusy,)}, "rtest.BBusy listed both as failure and as retry_on"),
        ({"on_reply": {BDone: None, BBusy: None}}, "rtest.BBusy listed both as success"),
    ],
)
def test_a_retryable_reply_cannot_also_be_another_outcome(
    kwargs: dict[str, Any], words: str
) -> None:
    step_kwargs: dict[str, Any] = {"on_reply": {BDone: None}, "retry_on": (BBusy,), **kwargs}
    with pytest.raises(DefinitionError, match=f"step 'b' of saga 'rtest-both'.*{words}"):
        Saga(
            "rtest-both",
            state=RState,
            steps=[step_a(), Step("b", invoke=DoB, compensate=UndoB, **step_kwargs)],
        )


def test_a_retry_policy_needs_a_command() -> None:
    with pytest.raises(DefinitionError, match=r"'a'.*retry policy but sends no command"):
        Saga(
            "rtest-retry-nothing",
            state=RState,
            steps=[Step("a", compensate=UndoA, retry=RetryPolicy(max_attempts=3))],
        )


def test_compensations_are_retried_three_times_by_default() -> None:
    step = Step("a", invoke=DoA, on_reply={ADone: None}, compensate=UndoA)
    assert step.compensation_retry.max_attempts == 3
    assert step.retry.max_attempts == 1 and step.retry.timeout_s is None


# -- timeouts ------------------------------------------------------------------------------


def test_a_command_with_a_timeout_has_a_deadline_and_a_timeout_timer() -> None:
    run = Run(TIMEOUTS_NOW)
    run.start(at_ms=1_000)
    decision = run.answer(ADone())  # at 1_100
    [command] = decision.commands
    assert command.message_id == f"{SAGA_ID}:b:1"
    assert command.deadline_ms == 2_100
    assert command.budget_from == 1
    assert decision.timers == (Timer(SAGA_ID, "timeout", f"{SAGA_ID}:b:1", 2_100),)
    assert decision.timers[0].message_id == f"{SAGA_ID}:timer:timeout:{SAGA_ID}:b:1"


def test_a_command_without_a_timeout_has_no_timer() -> None:
    run = Run(TIMEOUTS_NOW)
    decision = run.start()
    assert decision.commands[0].deadline_ms is None
    assert decision.timers == ()


def test_timeouts_retry_at_once_without_backoff_then_compensate_the_unknown_step() -> None:
    run = at_b(TIMEOUTS_NOW)

    second = run.fire("timeout", at_ms=2_500)  # a late owner: the deadline counts from here
    [command] = second.commands
    assert command.message_id == command_id(SAGA_ID, "b", Phase.FORWARD, 2) == f"{SAGA_ID}:b:2"
    assert (command.attempt, command.budget_from, command.deadline_ms) == (2, 1, 3_500)
    assert command.command == DoB(order_id="o1")
    assert second.records[0].event == "retry"
    assert second.instance is not None and second.instance.status is SagaStatus.RUNNING
    assert second.timers == (Timer(SAGA_ID, "timeout", f"{SAGA_ID}:b:2", 3_500),)

    third = run.fire("timeout")
    assert sent(third) == [f"{SAGA_ID}:b:3"]

    gave_up = run.fire("timeout")
    [record] = gave_up.records
    assert record.event == "step-failed" and record.step == "b"
    assert record.status is SagaStatus.COMPENSATING
    assert record.failure is not None
    assert "b attempt 3 got no reply" in record.failure
    assert "gave up after 3 attempt(s)" in record.failure
    # b's outcome is unknown, so it is undone first, then a
    assert record.completed == ("a", "b")
    assert [(c.message_id, c.command) for c in gave_up.commands] == [
        (f"{SAGA_ID}:b:c1", UndoB(order_id="o1"))
    ]
    # the compensation has the default 30 s to be answered
    assert gave_up.timers == (Timer(SAGA_ID, "timeout", f"{SAGA_ID}:b:c1", run.clock + 30_000),)

    assert sent(run.answer(BUndone())) == [f"{SAGA_ID}:a:c1"]
    run.answer(AUndone())
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("b", "a")
    assert [c.step for c in run.commands if c.phase is Phase.FORWARD] == ["a", "b", "b", "b"]


def test_a_timed_out_step_without_compensation_parks_instead_of_undoing_the_steps_before() -> None:
    saga = three_steps(
        "rtest-timeouts-no-undo",
        RetryPolicy(max_attempts=2, timeout_s=1, initial_backoff_s=0),
        b_compensates=False,
    )
    run = at_b(saga)
    run.fire("timeout")  # attempt 2 at once
    gave_up = run.fire("timeout")
    [record] = gave_up.records
    # b may have taken effect and nothing undoes it: undoing a would leave b's effect alone
    assert record.event == "parked" and record.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert record.failure is not None and "gave up after 2 attempt(s)" in record.failure
    assert "b may have taken effect and has no compensation" in record.failure
    assert sent(gave_up) == [] and gave_up.timers == ()
    assert run.inst.completed == ("a",) and run.inst.compensated == ()
    # a person resumes it: b is retried forward, and the saga goes on
    resumed = run.resume("shipping is back")
    assert sent(resumed) == [f"{SAGA_ID}:b:3"]
    run.answer(BDone())
    run.answer(CDone())
    assert run.inst.status is SagaStatus.COMPLETED


def test_a_business_failure_of_a_step_without_compensation_still_compensates() -> None:
    # a failure reply is an answer: by the participant contract (idempotent per business
    # key) an earlier attempt that timed out did not take effect either
    saga = three_steps(
        "rtest-no-undo-refused",
        RetryPolicy(max_attempts=3, timeout_s=1, initial_backoff_s=0),
        b_compensates=False,
    )
    run = at_b(saga)
    run.fire("timeout")
    refused = run.answer(BRefused())
    assert refused.records[0].status is SagaStatus.COMPENSATING
    assert sent(refused) == [f"{SAGA_ID}:a:c1"]


def test_a_timeout_waits_the_backoff_in_a_retry_timer() -> None:
    run = at_b(TIMEOUTS_LATER)
    policy = TIMEOUTS_LATER.step("b").step.retry

    timeout = run.timer("timeout")
    scheduled = run.fire("timeout")
    assert scheduled.commands == ()
    [record] = scheduled.records
    assert record.event == "retry-scheduled" and record.status is SagaStatus.RUNNING
    assert record.pending is None
    assert record.note is not None and "b attempt 1 got no reply within 1s" in record.note
    due = timeout.due_ms + policy.backoff_ms(1, f"{SAGA_ID}:b:2")
    assert due > timeout.due_ms
    assert record.next == NextAttempt("b", Phase.FORWARD, 2, 1, due, uncertain=True)
    assert scheduled.timers == (Timer(SAGA_ID, "retry", "b:forward:2", due),)

    second = run.fire("retry")
    [command] = second.commands
    assert command.message_id == f"{SAGA_ID}:b:2"
    assert command.deadline_ms == due + 1_000
    assert run.inst.next is None
    assert kinds(run.inst) == {"timeout"}

    run.fire("timeout")
    due3 = due + 1_000 + policy.backoff_ms(2, f"{SAGA_ID}:b:3")
    assert run.timer("retry") == Timer(SAGA_ID, "retry", "b:forward:3", due3)
    assert sent(run.fire("retry")) == [f"{SAGA_ID}:b:3"]
    assert sent(run.fire("timeout")) == [f"{SAGA_ID}:b:c1"]
    assert run.inst.status is SagaStatus.COMPENSATING


def test_a_success_after_a_timeout_completes_the_saga() -> None:
    run = at_b(TIMEOUTS_NOW)
    run.fire("timeout")
    assert run.pending.message_id == f"{SAGA_ID}:b:2"
    assert sent(run.answer(BDone())) == [f"{SAGA_ID}:c:1"]
    run.answer(CDone())
    assert run.inst.status is SagaStatus.COMPLETED
    assert run.inst.completed == ("a", "b", "c")
    assert run.inst.failure is None
    assert timers(run.inst) == ()


# -- retryable replies -----------------------------------------------------------------------


def test_a_retryable_reply_retries_with_a_new_attempt_and_a_later_success_completes() -> None:
    run = at_b(BUSY)
    busy = run.answer(BBusy())  # at 1_200
    assert busy.commands == ()
    [record] = busy.records
    assert record.event == "retry-scheduled" and record.note == "b: rtest.BBusy"
    assert record.failure is None
    assert busy.timers == (Timer(SAGA_ID, "retry", "b:forward:2", 1_400),)

    retry = run.fire("retry")
    [command] = retry.commands
    assert (command.message_id, command.attempt, command.causation_id) == (
        f"{SAGA_ID}:b:2",
        2,
        f"{SAGA_ID}:timer:retry:b:forward:2",
    )
    assert sent(run.answer(BDone())) == [f"{SAGA_ID}:c:1"]
    run.answer(CDone())
    assert run.inst.status is SagaStatus.COMPLETED
    assert run.inst.completed == ("a", "b", "c")


def test_exhausted_retryable_replies_compensate_but_not_the_step_itself() -> None:
    run = at_b(BUSY)
    run.answer(BBusy())
    run.fire("retry")
    run.answer(BBusy())
    assert run.timer("retry").due_ms == run.clock + 400  # 0.2 s, then doubled
    run.fire("retry")
    assert run.pending.message_id == f"{SAGA_ID}:b:3"

    gave_up = run.answer(BBusy())
    [record] = gave_up.records
    assert record.failure == "b: rtest.BBusy; gave up after 3 attempt(s)"
    assert record.completed == ("a",)  # b answered: it did nothing to undo
    assert sent(gave_up) == [f"{SAGA_ID}:a:c1"]
    run.answer(AUndone())
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("a",)
    assert not any(c.step == "b" and c.phase is Phase.COMPENSATE for c in run.commands)


def test_a_business_failure_is_not_retried() -> None:
    run = at_b(BUSY)
    failed = run.answer(BRefused())
    assert failed.records[0].failure == "b: rtest.BRefused"
    assert sent(failed) == [f"{SAGA_ID}:a:c1"]


def test_retry_waits_grow_by_the_multiplier_up_to_the_cap() -> None:
    policy = RetryPolicy(
        max_attempts=6, initial_backoff_s=0.1, multiplier=3, max_backoff_s=1, jitter=0
    )
    run = at_b(three_steps("rtest-growth", policy))
    waits = []
    for _ in range(5):
        run.answer(BBusy())
        waits.append(run.timer("retry").due_ms - run.clock)
        run.fire("retry")
    assert waits == [100, 300, 900, 1_000, 1_000]
    assert run.pending.message_id == f"{SAGA_ID}:b:6"


def test_jittered_due_times_are_deterministic_and_replay_to_the_same_timers() -> None:
    def go() -> Run:
        run = at_b(TIMEOUTS_LATER)
        run.fire("timeout")
        return run

    first, second = go(), go()
    timer = first.timer("retry")
    assert second.timer("retry") == timer
    policy = TIMEOUTS_LATER.step("b").step.retry
    fired_at = first.records[-1].at_ms
    assert timer.due_ms == fired_at + policy.backoff_ms(1, f"{SAGA_ID}:b:2")
    assert timer.due_ms != fired_at + 500  # the jitter did move it
    assert abs(timer.due_ms - fired_at - 500) <= 100
    # another saga draws another factor
    other = Run(TIMEOUTS_LATER)
    other.feed(start(TIMEOUTS_LATER, saga_id="s-2"))
    other.feed(reply(other.pending, ADone(), at_ms=1_100, saga_id="s-2"))
    other.fire("timeout")
    assert other.timer("retry").due_ms - fired_at == policy.backoff_ms(1, "s-2:b:2")
    assert timers(replay(first.records)[SAGA_ID]) == (timer,)


# -- stale and duplicate messages -------------------------------------------------------------


def test_a_late_reply_to_an_earlier_attempt_is_ignored() -> None:
    run = at_b(TIMEOUTS_NOW)
    run.fire("timeout")
    before = run.inst
    late = run.feed(reply(f"{SAGA_ID}:b:1", BDone(), at_ms=run.clock + 10))
    assert_ignored(late, before, f"reply to {SAGA_ID}:b:1 is not awaited")
    assert run.pending.message_id == f"{SAGA_ID}:b:2"
    assert sent(run.answer(BDone())) == [f"{SAGA_ID}:c:1"]


def test_a_late_reply_while_waiting_to_retry_is_ignored() -> None:
    run = at_b(TIMEOUTS_LATER)
    run.fire("timeout")
    before = run.inst
    late = run.feed(reply(f"{SAGA_ID}:b:1", BDone(), at_ms=run.clock + 10))
    assert_ignored(late, before, "awaiting nothing")
    assert sent(run.fire("retry")) == [f"{SAGA_ID}:b:2"]


def test_a_timeout_that_fires_after_the_reply_is_ignored() -> None:
    run = at_b(TIMEOUTS_NOW)
    timeout = run.timer("timeout")
    run.answer(BDone())
    before = run.inst
    late = run.feed(fired(timeout))
    assert_ignored(late, before, f"timer timeout:{SAGA_ID}:b:1 is stale")
    assert run.pending.step == "c"


def test_a_retry_timer_fired_twice_is_ignored_the_second_time() -> None:
    run = at_b(BUSY)
    run.answer(BBusy())
    retry = run.timer("retry")
    first = run.fire("retry")
    assert sent(first) == [f"{SAGA_ID}:b:2"]
    before = run.inst
    again = run.feed(fired(retry))
    assert_ignored(again, before, f"duplicate message {retry.message_id}")


def test_a_timer_for_another_attempt_is_ignored() -> None:
    run = at_b(BUSY)
    run.answer(BBusy())
    before = run.inst
    wrong = Timer(SAGA_ID, "retry", "b:forward:3", run.timer("retry").due_ms)
    assert_ignored(run.feed(fired(wrong)), before, "stale")
    wrong_kind = Timer(SAGA_ID, "timeout", f"{SAGA_ID}:b:1", 5_000)
    assert_ignored(run.feed(fired(wrong_kind)), before, "stale")


# -- compensation failures and people ---------------------------------------------------------


def parked_in_compensation(name: str) -> Run:
    """b is refused, a's compensation fails three times: the saga is parked."""
    run = at_b(three_steps(name, RetryPolicy()))
    failed = run.answer(BRefused())
    assert sent(failed) == [f"{SAGA_ID}:a:c1"]
    default = DEFAULT_COMPENSATION_RETRY
    for attempt in (2, 3):
        scheduled = run.answer(UndoAFailed())
        [record] = scheduled.records
        assert record.event == "retry-scheduled"
        assert record.status is SagaStatus.COMPENSATING
        assert record.note == "compensation of a failed: rtest.UndoAFailed"
        wait = default.backoff_ms(attempt - 1, f"{SAGA_ID}:a:{attempt}")
        assert scheduled.timers == (
            Timer(SAGA_ID, "retry", f"a:compensate:{attempt}", run.clock + wait),
        )
        assert sent(run.fire("retry")) == [f"{SAGA_ID}:a:c{attempt}"]
    parked = run.answer(UndoAFailed())
    assert parked.commands == () and parked.timers == ()
    return run


def test_a_compensation_that_keeps_failing_parks_the_saga() -> None:
    run = parked_in_compensation("rtest-park")
    inst = run.inst
    assert inst.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert inst.status.settled and not inst.status.terminal
    assert inst.failure == (
        "compensation of a failed: rtest.UndoAFailed; gave up after 3 attempt(s)"
    )
    assert inst.pending is None
    assert inst.next == NextAttempt("a", Phase.COMPENSATE, 4, 4, None)
    assert inst.deadline_ms is None
    assert timers(inst) == ()
    assert inst.compensated == ()
    assert run.records[-1].event == "parked"
    # a late reply to the last attempt changes nothing: a person decides now
    late = run.feed(
        reply(f"{SAGA_ID}:a:c3", AUndone(), at_ms=run.clock + 5, message_id="late-undo")
    )
    assert_ignored(late, inst, "not awaited")


def test_timers_are_derived_only_while_the_saga_can_still_move_on_its_own() -> None:
    parked = parked_in_compensation("rtest-no-timers").inst
    due = NextAttempt("a", Phase.COMPENSATE, 4, 4, 9_000)
    assert timers(replace(parked, waiting=(due,), deadline_ms=9_000)) == ()
    compensating = replace(
        parked, status=SagaStatus.COMPENSATING, waiting=(due,), deadline_ms=9_000
    )
    assert timers(compensating) == (Timer(SAGA_ID, "retry", "a:compensate:4", 9_000),)
    for status in (SagaStatus.COMPENSATED, SagaStatus.RESOLVED, SagaStatus.COMPLETED):
        assert timers(replace(compensating, status=status)) == ()


def test_resume_resends_the_compensation_with_a_fresh_budget() -> None:
    run = parked_in_compensation("rtest-resume")
    resumed = run.resume(note="db is back")
    [record] = resumed.records
    assert record.event == "resumed" and record.note == "db is back"
    assert record.status is SagaStatus.COMPENSATING
    [command] = resumed.commands
    assert command.message_id == f"{SAGA_ID}:a:c4"
    assert (command.phase, command.attempt, command.budget_from) == (Phase.COMPENSATE, 4, 4)
    assert command.command == UndoA(order_id="o1")
    assert command.causation_id == "resume-1"
    assert run.inst.next is None

    # the fresh budget: a failure of attempt 4 is retried, not parked at once
    again = run.answer(UndoAFailed())
    assert again.records[0].event == "retry-scheduled"
    assert run.timer("retry").ref == "a:compensate:5"
    assert sent(run.fire("retry")) == [f"{SAGA_ID}:a:c5"]
    done = run.answer(AUndone())
    assert done.records[0].event == "step-compensated"
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("a",)
    assert timers(run.inst) == ()


def test_resolve_ends_a_parked_saga_with_the_note() -> None:
    run = parked_in_compensation("rtest-resolve")
    resolved = run.resolve("refunded by hand, ticket 42")
    [record] = resolved.records
    assert record.event == "resolved"
    assert record.status is SagaStatus.RESOLVED
    assert record.note == "refunded by hand, ticket 42"
    assert record.pending is None and record.next is None
    assert resolved.commands == () and resolved.timers == ()
    assert run.inst.status.terminal
    before = run.inst
    assert_ignored(run.resume(message_id="resume-late"), before, "is RESOLVED")
    assert_ignored(run.resolve("again", message_id="resolve-2"), before, "is RESOLVED")


def test_a_repeated_resume_is_a_duplicate() -> None:
    run = parked_in_compensation("rtest-resume-twice")
    run.resume()
    before = run.inst
    assert_ignored(run.resume(), before, "duplicate message resume-1")
    assert run.records[-1].note is None  # an empty note is recorded as none


@pytest.mark.parametrize("request_type", [ResumeSaga, ResolveSaga])
def test_people_cannot_resume_or_resolve_a_running_or_completed_saga(
    request_type: type[ResumeSaga] | type[ResolveSaga],
) -> None:
    run = at_b(BUSY)
    for step_reply in (None, BDone(), CDone()):
        if step_reply is not None:
            run.answer(step_reply)
        before = run.inst
        request = request_type(note="n")
        decision = run.feed(operator(request, message_id=f"op-{run.clock}", at_ms=run.clock + 1))
        assert_ignored(decision, before, f"is {before.status}")
    assert run.inst.status is SagaStatus.COMPLETED


def test_a_compensation_timeout_is_retried_then_parks() -> None:
    saga = three_steps(
        "rtest-undo-timeout",
        RetryPolicy(),
        a_compensation_retry=RetryPolicy(max_attempts=2, initial_backoff_s=0, timeout_s=2),
    )
    run = at_b(saga)
    run.answer(BRefused())
    assert run.pending.deadline_ms == run.clock + 2_000
    assert sent(run.fire("timeout")) == [f"{SAGA_ID}:a:c2"]
    parked = run.fire("timeout")
    assert parked.commands == ()
    assert run.inst.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert run.inst.failure is not None
    assert "compensation of a (" in run.inst.failure  # the undo was not answered
    assert "attempt 2 got no reply within 2s; gave up after 2 attempt(s)" in run.inst.failure
    assert run.inst.next == NextAttempt("a", Phase.COMPENSATE, 3, 3, None, uncertain=True)


# -- the pivot -----------------------------------------------------------------------------------


def past_pivot(name: str) -> Run:
    run = Run(pivoted(name))
    run.start()
    run.answer(ADone())
    run.answer(PDone())
    assert run.pending.message_id == f"{SAGA_ID}:c:1"
    return run


def test_a_step_after_the_pivot_that_keeps_timing_out_parks_without_compensating() -> None:
    run = past_pivot("rtest-pivot-timeouts")
    assert sent(run.fire("timeout")) == [f"{SAGA_ID}:c:2"]
    parked = run.fire("timeout")
    assert parked.commands == ()
    [record] = parked.records
    assert record.event == "parked" and record.step == "c"
    assert record.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert record.failure is not None and "gave up after 2 attempt(s)" in record.failure
    assert record.completed == ("a", "p") and record.compensated == ()
    assert record.next == NextAttempt("c", Phase.FORWARD, 3, 3, None, uncertain=True)
    assert timers(run.inst) == ()
    assert not any(c.phase is Phase.COMPENSATE for c in run.commands)

    resumed = run.resume(note="carrier back")
    [command] = resumed.commands
    assert (command.message_id, command.budget_from) == (f"{SAGA_ID}:c:3", 3)
    assert run.inst.status is SagaStatus.RUNNING
    assert kinds(run.inst) == {"timeout"}
    assert sent(run.fire("timeout")) == [f"{SAGA_ID}:c:4"]  # a fresh budget of 2
    run.answer(CDone())
    assert run.inst.status is SagaStatus.COMPLETED
    assert run.inst.completed == ("a", "p", "c")


def test_a_step_after_the_pivot_that_stays_busy_parks() -> None:
    run = past_pivot("rtest-pivot-busy")
    assert sent(run.answer(CBusy())) == [f"{SAGA_ID}:c:2"]
    parked = run.answer(CBusy())
    assert parked.commands == ()
    assert run.inst.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert run.inst.failure == "c: rtest.CBusy; gave up after 2 attempt(s)"


def test_a_business_failure_of_the_pivot_compensates_the_earlier_steps() -> None:
    run = Run(pivoted("rtest-pivot-fails"))
    run.start()
    run.answer(ADone())
    failed = run.answer(PRefused())
    assert failed.records[0].failure == "p: rtest.PRefused"
    assert failed.records[0].status is SagaStatus.COMPENSATING
    assert sent(failed) == [f"{SAGA_ID}:a:c1"]
    run.answer(AUndone())
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("a",)


# -- the saga deadline ---------------------------------------------------------------------------


def test_the_deadline_timer_runs_until_a_step_after_the_pivot_is_sent() -> None:
    run = Run(pivoted("rtest-deadline-timer", deadline_s=10))
    first = run.start(at_ms=1_000)
    deadline = Timer(SAGA_ID, "deadline", "saga", 11_000)
    assert first.timers == (deadline,)
    assert deadline.message_id == f"{SAGA_ID}:timer:deadline:saga"
    assert run.inst.deadline_ms == 11_000
    run.answer(ADone())
    assert timers(run.inst) == (deadline,)  # the pivot is in flight: still abortable
    past = run.answer(PDone())
    assert run.pending.step == "c"
    assert run.inst.deadline_ms is None
    assert [t.kind for t in past.timers] == ["timeout"]
    before = run.inst
    assert_ignored(run.feed(fired(deadline)), before, "timer deadline:saga is stale")


def test_the_deadline_compensates_the_step_in_flight_and_the_completed_ones() -> None:
    saga = three_steps("rtest-deadline-b", RetryPolicy(), deadline_s=5)
    run = at_b(saga)
    passed = run.fire("deadline")
    [record] = passed.records
    assert record.event == "deadline-passed" and record.step == "b"
    assert record.failure == "saga deadline passed"
    assert record.status is SagaStatus.COMPENSATING
    assert record.completed == ("a", "b")
    assert record.deadline_ms is None
    assert sent(passed) == [f"{SAGA_ID}:b:c1"]
    assert kinds(run.inst) == {"timeout"}  # the compensation's own 30 s, no deadline
    before = run.inst
    late = run.feed(reply(f"{SAGA_ID}:b:1", BDone(), at_ms=run.clock + 1))
    assert_ignored(late, before, "not awaited")
    run.answer(BUndone())
    run.answer(AUndone())
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("b", "a")
    assert run.inst.failure == "saga deadline passed"


def test_the_deadline_waits_for_an_in_flight_step_without_compensation() -> None:
    run = Run(pivoted("rtest-deadline-pivot", deadline_s=10))
    run.start()
    run.answer(ADone())
    assert run.pending.step == "p"
    deferred = run.fire("deadline")
    # the pivot may take effect and cannot be undone: undoing a now could leave it alone
    [record] = deferred.records
    assert record.event == "deadline-deferred" and record.status is SagaStatus.RUNNING
    assert record.note is not None and "no compensation" in record.note
    assert sent(deferred) == [] and record.pending == run.pending
    assert kinds(run.inst) == set()  # the pivot has no timeout here; the deadline is spent
    run.answer(PDone())  # past the point of no return
    run.answer(CDone())
    assert run.inst.status is SagaStatus.COMPLETED and run.inst.failure is None


def test_after_a_deferred_deadline_a_failed_pivot_compensates() -> None:
    run = Run(pivoted("rtest-deadline-pivot-fails", deadline_s=10))
    run.start()
    run.answer(ADone())
    run.fire("deadline")
    failed = run.answer(PRefused())
    assert sent(failed) == [f"{SAGA_ID}:a:c1"]
    run.answer(AUndone())
    assert run.inst.status is SagaStatus.COMPENSATED


def test_the_deadline_while_waiting_to_retry_cancels_the_retry() -> None:
    saga = three_steps(
        "rtest-deadline-retry", RetryPolicy(max_attempts=3, timeout_s=1), deadline_s=3
    )
    run = at_b(saga)
    run.fire("timeout")  # at 2_100; the retry waits ~0.5 s
    retry = run.timer("retry")
    assert kinds(run.inst) == {"retry", "deadline"}
    passed = run.fire("deadline", at_ms=retry.due_ms - 1)
    assert passed.records[0].completed == ("a", "b")  # b's attempt 1 may have worked
    assert passed.records[0].next is None
    assert sent(passed) == [f"{SAGA_ID}:b:c1"]
    before = run.inst
    assert_ignored(run.feed(fired(retry)), before, "stale")


# -- the journal ----------------------------------------------------------------------------------


def test_the_new_fields_survive_the_journal() -> None:
    saga = three_steps("rtest-journal", RetryPolicy(max_attempts=3, timeout_s=1), deadline_s=60)
    run = at_b(saga)
    run.answer(BRefused())
    for _ in range(3):
        run.answer(UndoAFailed())
        if run.inst.status is SagaStatus.COMPENSATING:
            run.fire("retry")
    run.resume(note="again")
    records = run.records
    # the run produced every new field, so Run.feed's round trip covered them
    assert any(t.next is not None and t.next.due_ms is not None for t in records)
    assert any(t.next is not None and t.next.due_ms is None for t in records)
    assert any(t.deadline_ms == 61_000 for t in records)
    assert any(t.note == "again" for t in records)
    assert any(t.pending is not None and t.pending.deadline_ms is not None for t in records)
    assert any(t.pending is not None and t.pending.budget_from == 4 for t in records)
    for t in records:
        assert decode_transition(encode_transition(t), saga) == t
    live = run.inst
    assert replay(decode_transition(encode_transition(t), saga) for t in records) == {SAGA_ID: live}


# -- known gaps ---------------------------------------------------------------------------------


def test_a_step_with_an_unknown_earlier_attempt_is_compensated_after_a_later_failure() -> None:
    run = at_b(TIMEOUTS_NOW)
    run.fire("timeout")  # attempt 1 may have taken effect
    assert run.pending.message_id == f"{SAGA_ID}:b:2"
    failed = run.answer(BRefused())
    assert sent(failed) == [f"{SAGA_ID}:b:c1"]


def test_a_compensation_nobody_answers_is_retried_then_parked_by_default() -> None:
    # compensations have a default timeout: "3 attempts, then parked" holds even when
    # the participant never answers
    run = at_b(three_steps("rtest-undo-unanswered", RetryPolicy()))
    run.answer(BRefused())
    assert run.pending.message_id == f"{SAGA_ID}:a:c1"
    assert DEFAULT_COMPENSATION_RETRY.timeout_s is not None
    for attempt in (2, 3):
        run.fire("timeout")  # no reply within the default timeout
        if run.inst.pending is None:
            run.fire("retry")  # after the back-off
        assert run.pending.message_id == f"{SAGA_ID}:a:c{attempt}"
    parked = run.fire("timeout")
    assert parked.records[0].event == "parked"
    assert run.inst.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert run.inst.failure is not None and "gave up after 3 attempt(s)" in run.inst.failure
    assert timers(run.inst) == ()
