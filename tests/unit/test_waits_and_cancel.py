"""WaitFor (a saga waiting for a person or another system) and cancel, in the pure core on
virtual time: a signal that comes early is kept for the wait, one that comes late is
dead-lettered with why, a wait's timeout fails the saga or runs the steps the definition
gives, and a cancel undoes what was done before the pivot and is refused after it."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import Envelope, Event, Incoming, Message, Saga, SagaStatus, Step, WaitFor
from sagakit._evaluator import Decision, timers
from sagakit._messages import CancelSaga

from .test_parallel_and_switch import DO, DONE, REFUSED, SAGA_ID, UNDONE, Hire, Phase, Run, step


class Approved(Event, type="wtest.Approved"):
    manager: str


class Declined(Event, type="wtest.Declined"):
    why: str = ""


def approval(*, timeout_s: float | None = 3600, on_timeout: Any = "fail") -> Saga[Hire]:
    """a, then wait for a manager (Approved goes on, Declined compensates), then b."""
    return Saga(
        "wtest-approval",
        state=Hire,
        steps=[
            step("a"),
            WaitFor(
                "manager-approval",
                event=Approved,
                failures=[Declined],
                timeout_s=timeout_s,
                on_event=lambda s, e: s.model_copy(update={"laptop": f"approved by {e.manager}"}),
                on_timeout=on_timeout,
            ),
            step("b"),
        ],
    )


def signal(run: Run, message: Message, message_id: str = "sig-1") -> Decision:
    run.clock += 10
    envelope = Envelope(
        message_id=message_id,
        message_type=message.message_type,
        saga_id=SAGA_ID,
        correlation_id=message_id,
        causation_id=message_id,
    )
    return run.feed(Incoming(envelope, message, run.clock))


def signal_rejected(run: Run, message: Message) -> str:
    from sagakit import decide

    envelope = Envelope(
        message_id="late",
        message_type=message.message_type,
        saga_id=SAGA_ID,
        correlation_id="late",
        causation_id="late",
    )
    d = decide(run.saga, run.inst, Incoming(envelope, message, run.clock))
    assert d.rejected is not None and d.records == ()
    return d.rejected


def test_a_saga_at_its_wait_goes_on_when_the_signal_comes() -> None:
    run = Run(approval())
    run.start()
    waiting = run.answer("a", DONE["a"]())
    assert waiting.commands == () and run.inst.status is SagaStatus.RUNNING
    assert dict(run.inst.waits) == {"manager-approval": run.clock + 3_600_000}
    assert [t.kind for t in timers(run.inst)] == ["wait"]
    went_on = signal(run, Approved(manager="grace"))
    assert [c.step for c in went_on.commands] == ["b"]
    assert run.inst.state.laptop == "approved by grace"  # on_event folded it in
    assert run.inst.waits == () and "manager-approval" in run.inst.completed
    run.answer("b", DONE["b"]())
    assert run.inst.status is SagaStatus.COMPLETED


def test_a_signal_before_the_wait_is_kept_and_taken_when_the_saga_gets_there() -> None:
    run = Run(approval())
    run.start()
    kept = signal(run, Approved(manager="early"))
    assert kept.commands == () and len(run.inst.signals) == 1
    assert run.inst.status is SagaStatus.RUNNING
    went_on = run.answer("a", DONE["a"]())  # reaches the wait: the kept signal answers it
    assert [c.step for c in went_on.commands] == ["b"]
    assert run.inst.signals == () and run.inst.state.laptop == "approved by early"


def test_a_failure_signal_compensates_what_was_done() -> None:
    run = Run(approval())
    run.start()
    run.answer("a", DONE["a"]())
    undo = signal(run, Declined(why="budget"))
    assert [c.message_id for c in undo.commands] == [f"{SAGA_ID}:a:c1"]
    assert run.inst.failure == "manager-approval: wtest.Declined"
    run.answer("a", UNDONE(), Phase.COMPENSATE)
    assert run.inst.status is SagaStatus.COMPENSATED


def test_no_signal_in_time_fails_the_saga_by_default() -> None:
    run = Run(approval(timeout_s=60))
    run.start()
    run.answer("a", DONE["a"]())
    (timer,) = timers(run.inst)
    undo = run.fire(timer)
    assert [c.step for c in undo.commands] == ["a"]
    assert run.inst.failure is not None and "no wtest.Approved within 60s" in run.inst.failure


def test_a_timeout_can_continue_on_the_steps_the_definition_gives() -> None:
    run = Run(approval(timeout_s=60, on_timeout=[step("c")]))
    run.start()
    run.answer("a", DONE["a"]())
    (timer,) = timers(run.inst)
    instead = run.fire(timer)
    assert [c.step for c in instead.commands] == ["c"]
    assert run.inst.status is SagaStatus.RUNNING
    assert [c.step for c in run.answer("c", DONE["c"]()).commands] == ["b"]  # then on
    # and a compensation later undoes the timeout's steps too, in reverse
    run.answer("b", REFUSED["b"]())
    assert run.undo_all() == ["c", "a"]


def test_a_signal_for_an_ended_saga_or_a_passed_wait_is_dead_lettered_with_why() -> None:
    run = Run(approval())
    run.start()
    run.answer("a", DONE["a"]())
    signal(run, Approved(manager="grace"))
    assert "past 'manager-approval'" in signal_rejected(run, Approved(manager="again"))
    run.answer("b", DONE["b"]())
    why = signal_rejected(run, Declined())
    assert "COMPLETED" in why and "nothing waits for it" in why


def test_a_wait_takes_event_types_and_one_wait_per_type() -> None:
    from sagakit import DefinitionError

    with pytest.raises(DefinitionError, match="Event types"):
        Saga("wtest-bad", state=Hire, steps=[step("a"), WaitFor("w", event=DONE["a"])])
    with pytest.raises(DefinitionError, match="a signal must name one wait"):
        Saga(
            "wtest-bad",
            state=Hire,
            steps=[step("a"), WaitFor("w1", event=Approved), WaitFor("w2", event=Approved)],
        )


# -- cancel ----------------------------------------------------------------------------------


def cancel(run: Run, reason: str = "customer changed their mind") -> Decision:
    run.clock += 10
    envelope = Envelope(
        message_id="cancel-1",
        message_type=CancelSaga.message_type,
        saga_id=SAGA_ID,
        correlation_id="cancel-1",
        causation_id="cancel-1",
    )
    from sagakit import decide

    d = decide(run.saga, run.inst, Incoming(envelope, CancelSaga(reason=reason), run.clock))
    if d.records:
        run.feed(Incoming(envelope, CancelSaga(reason=reason), run.clock))
    return d


def pivoted() -> Saga[Hire]:
    return Saga(
        "wtest-pivoted",
        state=Hire,
        steps=[
            step("a"),
            step("b"),
            Step("c", invoke=DO["c"], on_reply={DONE["c"]: None}, pivot=True),
            Step("d", invoke=DO["d"], on_reply={DONE["d"]: None}),
        ],
    )


def test_cancel_before_the_pivot_waits_for_what_is_out_then_undoes_it_with_the_reason() -> None:
    run = Run(pivoted())
    run.start()
    run.answer("a", DONE["a"]())  # b is out
    d = cancel(run)
    assert d.commands == () and run.inst.status is SagaStatus.COMPENSATING
    run.answer("b", DONE["b"]())  # it took effect: undone too
    assert run.undo_all() == ["b", "a"]
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.failure == "cancelled: customer changed their mind"


def test_cancel_after_the_pivot_is_refused_with_why() -> None:
    run = Run(pivoted())
    run.start()
    run.answer("a", DONE["a"]())
    run.answer("b", DONE["b"]())  # the pivot c is out
    d = cancel(run)
    assert d.records == () and d.rejected_as == "CancelRefused"
    assert d.rejected is not None and "past its pivot 'c'" in d.rejected
    run.answer("c", DONE["c"]())
    run.answer("d", DONE["d"]())
    assert run.inst.status is SagaStatus.COMPLETED
    assert cancel(run).rejected_as == "CancelRefused"  # and once it has ended


def test_a_saga_waiting_for_a_person_can_be_cancelled() -> None:
    run = Run(approval())
    run.start()
    run.answer("a", DONE["a"]())
    d = cancel(run, "the hire fell through")
    assert [c.step for c in d.commands] == ["a"] and run.inst.waits == ()
    assert [t.kind for t in timers(run.inst)] == ["timeout"]  # the undo's, no wait


def test_a_wait_that_may_fail_needs_compensable_steps_before_it_and_none_after_the_pivot() -> None:
    from sagakit import DefinitionError

    no_undo = Step("a", invoke=DO["a"], on_reply={DONE["a"]: None})
    with pytest.raises(DefinitionError, match="followed by wait 'w', which may fail"):
        Saga("wtest-bad", state=Hire, steps=[no_undo, WaitFor("w", event=Approved, timeout_s=5)])
    pivot = Step("p", invoke=DO["b"], on_reply={DONE["b"]: None}, pivot=True)
    with pytest.raises(DefinitionError, match="comes after the pivot"):
        Saga(
            "wtest-bad",
            state=Hire,
            steps=[pivot, WaitFor("w", event=Approved, failures=[Declined])],
        )
    # a wait that can only go on is fine anywhere
    Saga("wtest-ok", state=Hire, steps=[no_undo, WaitFor("w", event=Approved)])
