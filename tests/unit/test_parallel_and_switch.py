"""Parallel groups and Switch branches in the pure core: which commands go out when, how a
failing branch makes the others stop and every completed step compensate (branches at the
same time, each in reverse, then the steps before the group), and that a Switch follows its
journaled case. Time is the messages' own (virtual): every transition is replayed from its
encoded journal record and must rebuild the same instance."""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    DefinitionError,
    Envelope,
    ForEach,
    Incoming,
    Message,
    Parallel,
    PendingCommand,
    Phase,
    Reply,
    RetryPolicy,
    Saga,
    SagaInfo,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Step,
    Switch,
    Transition,
    decide,
    replay,
)
from sagakit._evaluator import Decision, Timer, command_id, timers
from sagakit._journal import decode_transition, encode_transition
from sagakit._messages import TimerFired

SAGA_ID = "p-1"


class Hire(BaseModel):
    person: str
    contract: str = "employee"
    laptop: str = ""


def command(name: str) -> type[Command]:
    def body(ns: dict[str, Any]) -> None:
        ns["__annotations__"] = {"person": str}
        ns["__module__"] = __name__

    return types.new_class(name, (Command,), {"type": f"pstest.{name}"}, body)


def reply_type(name: str) -> type[Reply]:
    def body(ns: dict[str, Any]) -> None:
        ns["__module__"] = __name__

    return types.new_class(name, (Reply,), {"type": f"pstest.{name}"}, body)


DO = {n: command(f"Do{n.title()}") for n in "abcdefg"}
UNDO = {n: command(f"Undo{n.title()}") for n in "abcdefg"}
DONE = {n: reply_type(f"{n.title()}Done") for n in "abcdefg"}
REFUSED = {n: reply_type(f"{n.title()}Refused") for n in "abcdefg"}
UNDONE = reply_type("Undone")


def step(n: str, *, compensate: bool = True, timeout_s: float | None = None) -> Step[Hire]:
    return Step(
        n,
        invoke=DO[n],
        on_reply={DONE[n]: None},
        failures=(REFUSED[n],),
        compensate=UNDO[n] if compensate else None,
        retry=RetryPolicy(timeout_s=timeout_s),
    )


def onboarding(name: str = "ptest-onboard", *, timeout_s: float | None = None) -> Saga[Hire]:
    """a, then b beside the sequence [c, d], then e."""
    return Saga(
        name,
        state=Hire,
        steps=[
            step("a"),
            Parallel("equipment", step("b", timeout_s=timeout_s), [step("c"), step("d")]),
            step("e"),
        ],
    )


def start(saga: Saga[Any], state: dict[str, Any], *, at_ms: int = 1_000) -> Incoming[Message]:
    envelope = Envelope(
        message_id=f"start-{SAGA_ID}",
        message_type=StartSaga.message_type,
        saga_id=SAGA_ID,
        correlation_id=f"start-{SAGA_ID}",
        causation_id=f"start-{SAGA_ID}",
        saga_type=saga.name,
        saga_version=str(saga.version),
    )
    return Incoming(envelope, StartSaga(state=state), at_ms)


@dataclass
class Run:
    """decide() on one saga, checking every record survives the journal and replays."""

    saga: Saga[Any]
    instance: SagaInstance | None = None
    records: list[Transition] = field(default_factory=list)
    clock: int = 1_000

    def feed(self, incoming: Incoming[Message]) -> Decision:
        d = decide(self.saga, self.instance, incoming)
        assert d.rejected is None, d.rejected
        if d.records:
            self.records += [decode_transition(encode_transition(r), self.saga) for r in d.records]
            self.instance = d.instance
            assert replay(self.records)[SAGA_ID] == self.instance
        return d

    def start(self, **state: Any) -> Decision:
        return self.feed(start(self.saga, {"person": "ada", **state}, at_ms=self.clock))

    @property
    def inst(self) -> SagaInstance:
        assert self.instance is not None
        return self.instance

    def out(self, step: str, phase: Phase = Phase.FORWARD) -> PendingCommand:
        (p,) = [p for p in self.inst.in_flight if p.step == step and p.phase is phase]
        return p

    def answer(self, step: str, message: Message, phase: Phase = Phase.FORWARD) -> Decision:
        self.clock += 10
        cid = self.out(step, phase).message_id
        envelope = Envelope(
            message_id=f"{cid}:reply",
            message_type=message.message_type,
            saga_id=SAGA_ID,
            correlation_id=f"start-{SAGA_ID}",
            causation_id=cid,
        )
        return self.feed(Incoming(envelope, message, self.clock))

    def fire(self, timer: Timer) -> Decision:
        self.clock = max(self.clock, timer.due_ms)
        envelope = Envelope(
            message_id=timer.message_id,
            message_type=TimerFired.message_type,
            saga_id=SAGA_ID,
            correlation_id=f"start-{SAGA_ID}",
            causation_id=timer.message_id,
        )
        return self.feed(Incoming(envelope, TimerFired(kind=timer.kind, ref=timer.ref), self.clock))

    def undo_all(self) -> list[str]:
        """Answer compensations as they go out, in the order they go out; their steps."""
        undone: list[str] = []
        while self.inst.status is SagaStatus.COMPENSATING and self.inst.in_flight:
            p = self.inst.in_flight[0]
            assert p.phase is Phase.COMPENSATE
            undone.append(p.step)
            self.answer(p.step, UNDONE(), Phase.COMPENSATE)
        return undone


def sent(d: Decision) -> list[str]:
    return [c.message_id for c in d.commands]


def test_every_branch_starts_at_once_and_the_group_ends_when_every_branch_has() -> None:
    run = Run(onboarding())
    assert sent(run.start()) == [f"{SAGA_ID}:a:1"]
    # both branches start together: b, and the first step of the sequence [c, d]
    assert sent(run.answer("a", DONE["a"]())) == [f"{SAGA_ID}:b:1", f"{SAGA_ID}:c:1"]
    assert len(run.inst.in_flight) == 2 and run.inst.status is SagaStatus.RUNNING
    assert sent(run.answer("c", DONE["c"]())) == [f"{SAGA_ID}:d:1"]  # c's branch goes on
    assert sent(run.answer("d", DONE["d"]())) == []  # b is still out: the group waits
    assert sent(run.answer("b", DONE["b"]())) == [f"{SAGA_ID}:e:1"]
    run.answer("e", DONE["e"]())
    assert run.inst.status is SagaStatus.COMPLETED
    assert set(run.inst.completed) == set("abcde") and run.inst.in_flight == ()


def test_a_failing_branch_stops_the_others_waits_for_what_is_out_then_undoes_everything() -> None:
    run = Run(onboarding())
    run.start()
    run.answer("a", DONE["a"]())
    run.answer("c", DONE["c"]())  # d goes out
    failed = run.answer("b", REFUSED["b"]())
    # nothing new starts; d is still out, so nothing is undone yet
    assert sent(failed) == [] and run.inst.status is SagaStatus.COMPENSATING
    assert run.inst.failure == "b: pstest.BRefused"
    assert [p.step for p in run.inst.in_flight] == ["d"]
    # d answers (it took effect): now its branch is undone, d before c, then a
    undone = run.answer("d", DONE["d"]())
    assert sent(undone) == [f"{SAGA_ID}:d:c1"]
    assert run.undo_all() == ["d", "c", "a"]
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("d", "c", "a")  # b refused: nothing of it to undo
    assert "e" not in run.inst.completed


def test_branches_are_undone_at_the_same_time_each_in_reverse_before_the_steps_ahead() -> None:
    saga = Saga(
        "ptest-wide",
        state=Hire,
        steps=[
            step("a"),
            Parallel("group", [step("b"), step("c")], [step("d"), step("e")]),
            step("f"),
        ],
    )
    run = Run(saga)
    run.start()
    run.answer("a", DONE["a"]())
    run.answer("b", DONE["b"]())
    run.answer("d", DONE["d"]())
    run.answer("e", DONE["e"]())  # the second branch is done
    back = run.answer("c", REFUSED["c"]())
    # b and the whole second branch's last step go back at once; a waits for both branches
    assert sorted(sent(back)) == [f"{SAGA_ID}:b:c1", f"{SAGA_ID}:e:c1"]
    assert sent(run.answer("e", UNDONE(), Phase.COMPENSATE)) == [f"{SAGA_ID}:d:c1"]
    assert sent(run.answer("b", UNDONE(), Phase.COMPENSATE)) == []  # d is still being undone
    assert sent(run.answer("d", UNDONE(), Phase.COMPENSATE)) == [f"{SAGA_ID}:a:c1"]
    run.answer("a", UNDONE(), Phase.COMPENSATE)
    assert run.inst.status is SagaStatus.COMPENSATED
    assert run.inst.compensated == ("e", "b", "d", "a")


def test_a_branch_whose_command_times_out_while_another_fails_is_undone_too() -> None:
    run = Run(onboarding("ptest-onboard-timeout", timeout_s=5))
    run.start()
    run.answer("a", DONE["a"]())
    run.answer("c", REFUSED["c"]())  # b is out, with a 5 s timeout
    assert run.inst.status is SagaStatus.COMPENSATING
    (timeout,) = [t for t in timers(run.inst) if t.kind == "timeout"]
    later = run.fire(timeout)
    # b's outcome is unknown: it is not tried again (the saga is failing), it is undone
    assert sent(later) == [f"{SAGA_ID}:b:c1"]
    assert run.undo_all() == ["b", "a"]
    assert run.inst.status is SagaStatus.COMPENSATED


def test_command_ids_are_deterministic_per_branch_step_and_attempt() -> None:
    first, second = Run(onboarding()), Run(onboarding())
    for run in (first, second):
        run.start()
        run.answer("a", DONE["a"]())
    assert [p.message_id for p in first.inst.in_flight] == [
        p.message_id for p in second.inst.in_flight
    ]
    assert {p.message_id for p in first.inst.in_flight} == {
        command_id(SAGA_ID, "b", Phase.FORWARD, 1),
        command_id(SAGA_ID, "c", Phase.FORWARD, 1),
    }


# -- Switch --------------------------------------------------------------------------------


def contracts(on: Any = lambda s: s.contract, *, default: Any = None) -> Saga[Hire]:
    return Saga(
        "ptest-contract",
        state=Hire,
        steps=[
            step("a"),
            Switch(
                "contract",
                on=on,
                cases={"employee": [step("b"), step("c")], "contractor": step("d")},
                default=default,
            ),
            step("e"),
        ],
    )


def test_a_switch_takes_the_case_of_the_state_and_journals_it() -> None:
    run = Run(contracts())
    run.start(contract="contractor")
    assert sent(run.answer("a", DONE["a"]())) == [f"{SAGA_ID}:d:1"]
    assert dict(run.inst.choices) == {"contract": "contractor"}
    run.answer("d", DONE["d"]())
    run.answer("e", DONE["e"]())
    assert run.inst.status is SagaStatus.COMPLETED and set(run.inst.completed) == set("ade")


def test_replay_and_compensation_follow_the_journaled_case_not_the_function() -> None:
    run = Run(contracts())
    run.start(contract="employee")
    run.answer("a", DONE["a"]())
    run.answer("b", DONE["b"]())
    # the orchestrator restarts with a definition whose function would now choose otherwise
    changed = contracts(on=lambda s: "contractor")
    records = [decode_transition(encode_transition(r), changed) for r in run.records]
    restored = Run(changed, replay(records)[SAGA_ID], records, run.clock)
    assert sent(restored.answer("c", DONE["c"]())) == [f"{SAGA_ID}:e:1"]
    restored.answer("e", REFUSED["e"]())
    # undone in reverse along the case taken: c, b (never d), then a
    assert restored.undo_all() == ["c", "b", "a"]
    assert restored.inst.status is SagaStatus.COMPENSATED


def test_a_key_with_no_case_and_no_default_fails_the_saga_with_the_key() -> None:
    run = Run(contracts())
    run.start(contract="intern")
    failed = run.answer("a", DONE["a"]())
    assert run.inst.failure is not None and "'intern'" in run.inst.failure
    assert "contract" in run.inst.failure
    assert sent(failed) == [f"{SAGA_ID}:a:c1"]
    assert run.undo_all() == ["a"] and run.inst.status is SagaStatus.COMPENSATED


def test_a_default_case_takes_the_keys_no_case_names() -> None:
    run = Run(contracts(default=[step("f")]))
    run.start(contract="intern")
    assert sent(run.answer("a", DONE["a"]())) == [f"{SAGA_ID}:f:1"]
    assert dict(run.inst.choices) == {"contract": "intern"}


# -- checked when the saga is built ----------------------------------------------------------


def build_error(*steps: Any) -> str:
    with pytest.raises(DefinitionError) as info:
        Saga("ptest-bad", state=Hire, steps=list(steps))
    return str(info.value)


def test_names_are_unique_across_nesting() -> None:
    message = build_error(step("a"), Parallel("g", step("b"), [step("c"), step("a")]))
    assert "'a'" in message and "duplicate" in message
    message = build_error(step("a"), Parallel("a", step("b"), step("c")))
    assert "duplicate" in message


def test_a_group_needs_two_branches_and_a_switch_cases() -> None:
    assert "at least two branches" in build_error(Parallel("g", step("b")))
    assert "cases" in build_error(Switch("s", on=lambda s: "x", cases={}))


def test_a_pivot_inside_a_group_is_refused() -> None:
    pivot = Step("b", invoke=DO["b"], on_reply={DONE["b"]: None}, pivot=True)
    message = build_error(step("a"), Parallel("g", pivot, step("c")))
    assert "step 'b'" in message and "pivot must be a step of the saga itself" in message


def test_a_step_without_compensation_beside_a_branch_that_may_fail_is_refused() -> None:
    message = build_error(Parallel("g", step("b", compensate=False), step("c")))
    assert "step 'b'" in message and "runs beside step 'c' (group 'g')" in message
    # the same step in a sequence of its own branch, before one that may fail
    message = build_error(Parallel("g", [step("b", compensate=False), step("d")], step("c")))
    assert "step 'b'" in message and "may fail" in message


def test_cases_of_a_switch_never_run_together() -> None:
    # b has no compensation and d may fail, but d only ever runs instead of b: the saga is
    # accepted, and when d fails there is nothing of b to undo, only a
    saga = Saga(
        "ptest-exclusive",
        state=Hire,
        steps=[
            step("a"),
            Switch(
                "s",
                on=lambda s: s.contract,
                cases={"employee": step("b", compensate=False)},
                default=step("d"),
            ),
        ],
    )
    run = Run(saga)
    run.start(contract="contractor")
    assert sent(run.answer("a", DONE["a"]())) == [f"{SAGA_ID}:d:1"]
    assert sent(run.answer("d", REFUSED["d"]())) == [f"{SAGA_ID}:a:c1"]
    assert run.undo_all() == ["a"] and run.inst.status is SagaStatus.COMPENSATED
    assert "b" not in run.inst.completed


def test_a_journal_record_from_before_lists_still_reads() -> None:
    import orjson

    run = Run(Saga("ptest-old", state=Hire, steps=[step("a"), step("b")]))
    run.start()
    record = orjson.loads(encode_transition(run.records[-1]))
    (p,) = record["pending"]
    record["pending"], record["next"] = p, None  # how a single command was written before
    old = decode_transition(orjson.dumps(record), run.saga)
    assert old.in_flight == run.records[-1].in_flight and old.waiting == ()


# -- ForEach ---------------------------------------------------------------------------------


class Team(BaseModel):
    person: str
    trainings: list[str] = []
    booked: list[str] = []


class Book(Command, type="pstest.Book"):
    person: str
    course: str


class Booked(Reply, type="pstest.Booked"):
    course: str


class Full(Reply, type="pstest.Full"):
    pass


class Unbook(Command, type="pstest.Unbook"):
    person: str
    course: str


def book(state: Team, saga: SagaInfo) -> Book:
    return Book(person=state.person, course=saga.item)


def unbook(state: Team, saga: SagaInfo) -> Unbook:
    return Unbook(person=state.person, course=saga.item)


def note(state: Team, reply: Booked) -> Team:
    return state.model_copy(update={"booked": [*state.booked, reply.course]})


def trainings(max_parallel: int = 2) -> Saga[Team]:
    return Saga(
        "pstest-trainings",
        state=Team,
        steps=[
            Step("a", invoke=DO["a"], on_reply={DONE["a"]: None}, compensate=UNDO["a"]),
            ForEach(
                "trainings",
                items=lambda s: s.trainings,
                step=Step(
                    "book",
                    invoke=book,
                    on_reply={Booked: note},
                    failures=(Full,),
                    compensate=unbook,
                ),
                max_parallel=max_parallel,
            ),
        ],
    )


def courses(d: Decision) -> list[str]:
    return [c.command.course for c in d.commands]  # type: ignore[attr-defined]


def test_foreach_sends_each_item_with_a_bound_and_folds_the_results() -> None:
    run = Run(trainings(max_parallel=2))
    run.feed(start(run.saga, {"person": "ada", "trainings": ["fire", "first-aid", "gdpr"]}))
    first = run.answer("a", DONE["a"]())
    assert courses(first) == ["fire", "first-aid"]  # two at once
    assert [c.message_id for c in first.commands] == [f"{SAGA_ID}:book#0:1", f"{SAGA_ID}:book#1:1"]
    assert courses(run.answer("book#1", Booked(course="first-aid"))) == ["gdpr"]
    run.answer("book#0", Booked(course="fire"))
    done = run.answer("book#2", Booked(course="gdpr"))
    assert done.commands == () and run.inst.status is SagaStatus.COMPLETED
    assert run.inst.state.booked == ["first-aid", "fire", "gdpr"]


def test_a_failing_item_undoes_the_completed_items_and_the_steps_before() -> None:
    run = Run(trainings(max_parallel=3))
    run.feed(start(run.saga, {"person": "ada", "trainings": ["fire", "first-aid", "gdpr"]}))
    run.answer("a", DONE["a"]())
    run.answer("book#0", Booked(course="fire"))
    assert run.answer("book#1", Full()).commands == ()  # gdpr is still out
    undo = run.answer("book#2", Booked(course="gdpr"))
    assert sorted(c.message_id for c in undo.commands) == [
        f"{SAGA_ID}:book#0:c1",
        f"{SAGA_ID}:book#2:c1",
    ]
    assert sorted(courses(undo)) == ["fire", "gdpr"]  # each undo built from its own item
    assert run.undo_all()[-1] == "a" and run.inst.status is SagaStatus.COMPENSATED
    assert set(run.inst.compensated) == {"book#0", "book#2", "a"}


def test_an_empty_list_goes_straight_on() -> None:
    run = Run(trainings())
    run.feed(start(run.saga, {"person": "ada"}))
    assert run.answer("a", DONE["a"]()).commands == ()
    assert run.inst.status is SagaStatus.COMPLETED


def test_a_foreach_step_that_may_fail_without_compensation_is_refused() -> None:
    message = build_error(
        ForEach("each", items=lambda s: [], step=step("b", compensate=False), max_parallel=2)
    )
    assert "step 'b'" in message and "runs beside step 'b' (group 'each')" in message
