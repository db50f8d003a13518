"""Property tests of the core with groups: for random sagas of steps, Parallel groups,
ForEach, a WaitFor, child sagas (SubSaga, run by their own decide) and Switch branches,
driven by any interleaving of replies, business failures, timeouts, signals (early, late,
declining), cancels and redelivered messages, the saga ends COMPLETED with every step of its
path done, or COMPENSATED with exactly the completed (and in-doubt) steps undone once each —
never one before a step that ran after it in its own branch — and its journal replays to the
same instance at every point."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagakit import (
    Command,
    Envelope,
    Event,
    ForEach,
    Incoming,
    Message,
    Parallel,
    Phase,
    Reply,
    RetryPolicy,
    Saga,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Step,
    SubSaga,
    Switch,
    WaitFor,
    decide,
    replay,
)
from sagakit._evaluator import timers
from sagakit._journal import decode_transition, encode_transition
from sagakit._messages import CancelSaga, CompensateChild, SagaEnded, StartChild, TimerFired

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SAGA_ID = "t-1"


class TState(BaseModel):
    route: str = "x"
    items: list[str] = ["i0", "i1", "i2"]


class TApproved(Event, type="treetest.Approved"):
    pass


class TDeclined(Event, type="treetest.Declined"):
    pass


class TDo(Command, type="treetest.Do"):
    step: str


class TUndo(Command, type="treetest.Undo"):
    step: str


class TDone(Reply, type="treetest.Done"):
    pass


class TFailed(Reply, type="treetest.Failed"):
    pass


class TUndone(Reply, type="treetest.Undone"):
    pass


def _do(name: str) -> Any:
    def build(state: TState) -> TDo:
        return TDo(step=name)

    return build


def _undo(name: str) -> Any:
    def build(state: TState) -> TUndo:
        return TUndo(step=name)

    return build


class CState(BaseModel):
    n: int = 0


def _child_step(name: str) -> Step[CState]:
    return Step(
        name,
        invoke=_do(name),
        on_reply={TDone: None},
        failures=(TFailed,),
        compensate=_undo(name),
        compensation_retry=RetryPolicy(max_attempts=3),
    )


#: what a SubSaga of a generated tree starts: two steps, each may fail
CHILD = Saga("treechild", state=CState, steps=[_child_step("c1"), _child_step("c2")])


@dataclass
class Tree:
    """A generated definition and, per step, its path (sequence positions and branches)."""

    nodes: list[Any] = field(default_factory=list)
    paths: dict[str, tuple[int, ...]] = field(default_factory=dict)
    count: int = 0
    #: the ForEach steps (their items are keyed name#index) and the wait, if any
    each: set[str] = field(default_factory=set)
    wait: str | None = None
    subs: set[str] = field(default_factory=set)


def _step(tree: Tree, path: tuple[int, ...], timeout: bool) -> Step[TState]:
    name = f"s{tree.count}"
    tree.count += 1
    tree.paths[name] = path
    return Step(
        name,
        invoke=_do(name),
        on_reply={TDone: None},
        failures=(TFailed,),
        compensate=_undo(name),
        retry=RetryPolicy(timeout_s=1.0) if timeout else RetryPolicy(),
        compensation_retry=RetryPolicy(max_attempts=3),  # undone only by its reply here
    )


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    tree = Tree()
    groups = [0]

    def sequence(path: tuple[int, ...], depth: int, size: int) -> list[Any]:
        out: list[Any] = []
        for i in range(size):
            here = (*path, i)
            kinds = (
                ["step", "step", "par", "switch", "each", "wait", "sub"] if depth < 2 else ["step"]
            )
            kind = draw(st.sampled_from(kinds))
            if kind == "step":
                out.append(_step(tree, here, draw(st.booleans())))
                continue
            if kind == "sub":
                groups[0] += 1
                name = f"g{groups[0]}"
                tree.paths[name] = here
                tree.subs.add(name)
                out.append(SubSaga(name, saga=CHILD, input=lambda s: CState()))
                continue
            if kind == "each":
                inner = _step(tree, here, draw(st.booleans()))
                tree.each.add(inner.name)
                groups[0] += 1
                out.append(
                    ForEach(
                        f"g{groups[0]}",
                        items=lambda s: s.items,
                        step=inner,
                        max_parallel=draw(st.integers(1, 3)),
                    )
                )
                continue
            if kind == "wait":
                if tree.wait is not None:  # a signal type names one wait
                    out.append(_step(tree, here, False))
                    continue
                groups[0] += 1
                tree.wait = f"g{groups[0]}"
                out.append(
                    WaitFor(
                        tree.wait,
                        event=TApproved,
                        failures=[TDeclined],
                        timeout_s=draw(st.sampled_from([None, 1.0])),
                    )
                )
                continue
            groups[0] += 1
            name = f"g{groups[0]}"
            branches = [
                sequence((*here, b), depth + 1, draw(st.integers(1, 2)))
                for b in range(draw(st.integers(2, 3)))
            ]
            if kind == "par":
                out.append(Parallel(name, *branches))
            else:
                out.append(
                    Switch(
                        name,
                        on=lambda s: s.route,
                        cases={k: b for k, b in zip("xyz", branches, strict=False)},
                    )
                )
        return out

    tree.nodes = sequence((), 0, draw(st.integers(1, 4)))
    return tree


def precedes(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Step at path `a` runs before step at path `b` in a sequence holding both."""
    for d, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return d % 2 == 0 and x < y  # even: a position in a sequence; odd: a branch
    return False


def envelope(message_id: str, message_type: str, causation: str) -> Envelope:
    return Envelope(
        message_id=message_id,
        message_type=message_type,
        saga_id=SAGA_ID,
        correlation_id="start",
        causation_id=causation,
        saga_type="treetest",
        saga_version="1",
    )


@given(tree=trees(), data=st.data())
@SETTINGS
def test_any_tree_under_any_interleaving_ends_right_and_replays(tree: Tree, data: Any) -> None:
    saga = Saga("treetest", state=TState, steps=tree.nodes)
    route = data.draw(st.sampled_from("xyz"))
    log: list[tuple[str, str, str]] = []  # (what, step, phase): sent / answered
    records = []
    applied: list[Incoming[Message]] = []
    clock = [1_000]
    instance: SagaInstance | None = None
    children: dict[str, SagaInstance] = {}
    child_records: dict[str, list[Any]] = {}

    def to_child(c: Any) -> None:
        """The parent's StartChild or CompensateChild, delivered to the child at once."""
        cid = c.command.child_id
        env = Envelope(
            message_id=c.message_id,
            message_type=c.command.message_type,
            saga_id=cid,
            correlation_id="start",
            causation_id=c.causation_id,
            saga_type="treechild",
            reply_to="treetest.inbox",
        )
        feed_child(cid, Incoming(env, c.command, clock[0]))

    def feed_child(cid: str, incoming: Incoming[Message]) -> None:
        d = decide(CHILD, children.get(cid), incoming)
        assert d.rejected is None, d.rejected
        if not d.records:
            return
        history = child_records.setdefault(cid, [])
        history.extend(decode_transition(encode_transition(r), CHILD) for r in d.records)
        assert d.instance is not None and replay(history)[cid] == d.instance
        children[cid] = d.instance
        for n in d.notices:  # the child ended: its parent hears of it
            assert instance is not None
            (p,) = [p for p in instance.in_flight if p.message_id == n.causation_id]
            log.append(("answered", p.step, p.phase.value))
            feed(
                Incoming(
                    envelope(n.message_id, SagaEnded.message_type, n.causation_id),
                    n.message,
                    clock[0],
                )
            )

    def feed(incoming: Incoming[Message]) -> None:
        nonlocal instance
        d = decide(saga, instance, incoming)
        if isinstance(incoming.message, (TApproved, TDeclined)) and d.rejected is not None:
            assert d.rejected_as == "SignalTooLate"  # ended or past its wait: dead-lettered
            return
        assert d.rejected is None, d.rejected
        if not d.records:
            return
        records.extend(decode_transition(encode_transition(r), saga) for r in d.records)
        instance = d.instance
        assert replay(records)[SAGA_ID] == instance
        applied.append(incoming)
        for c in d.commands:
            log.append(("sent", c.step, c.phase.value))
        for c in d.commands:
            if isinstance(c.command, (StartChild, CompensateChild)):
                to_child(c)

    feed(
        Incoming(
            envelope("start", StartSaga.message_type, "start"),
            StartSaga(state={"route": route}),
            1_000,
        )
    )
    cancelled = False
    signals = 0
    kinds_sent: dict[str, type] = {}
    for _ in range(300):
        assert instance is not None
        if instance.status.settled:
            break
        clock[0] += 10
        choice = data.draw(
            st.sampled_from(["answer", "answer", "answer", "timer", "dup", "cancel", "signal"])
        )
        stuck = not instance.in_flight and not timers(instance) and bool(instance.waits)
        if (choice == "signal" or stuck) and tree.wait is not None:
            signals += 1
            kind = TDeclined() if data.draw(st.integers(0, 3)) == 0 else TApproved()
            sid = f"signal-{signals}"
            kinds_sent[sid] = type(kind)
            feed(Incoming(envelope(sid, kind.message_type, sid), kind, clock[0]))
            continue
        if choice == "dup" and applied:  # a redelivery changes nothing
            again = data.draw(st.sampled_from(applied))
            assert decide(saga, instance, again).records == ()
            continue
        if choice == "cancel" and not cancelled and data.draw(st.booleans()):
            cancelled = True
            feed(
                Incoming(
                    envelope("cancel", CancelSaga.message_type, "cancel"),
                    CancelSaga(reason="r"),
                    clock[0],
                )
            )
            continue
        due = timers(instance)
        if (choice == "timer" or not instance.in_flight) and due:
            t = data.draw(st.sampled_from(due))
            clock[0] = max(clock[0], t.due_ms)
            fired = TimerFired(kind=t.kind, ref=t.ref)
            feed(
                Incoming(
                    envelope(t.message_id, TimerFired.message_type, t.message_id), fired, clock[0]
                )
            )
            continue
        out = [
            (None, p)
            for p in instance.in_flight
            if not isinstance(p.command, (StartChild, CompensateChild))
        ]
        out += [(cid, p) for cid, child in sorted(children.items()) for p in child.in_flight]
        if not out:
            continue
        cid, p = data.draw(st.sampled_from(out))
        if p.phase is Phase.COMPENSATE:
            reply: Message = TUndone()
        else:
            reply = TFailed() if data.draw(st.integers(0, 5)) == 0 else TDone()
        answer = envelope(f"{p.message_id}:r", reply.message_type, p.message_id)
        if cid is not None:
            feed_child(cid, Incoming(dataclasses.replace(answer, saga_id=cid), reply, clock[0]))
            continue
        log.append(("answered", p.step, p.phase.value))
        feed(Incoming(answer, reply, clock[0]))
    assert instance is not None
    assert instance.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED), instance
    assert instance.in_flight == () and instance.waiting == () and timers(instance) == ()

    on_path = {
        key
        for n in tree.paths
        if _taken(tree.paths[n], saga, instance)
        for key in ([f"{n}#{i}" for i in range(3)] if n in tree.each else [n])
    }
    steps_done = {c for c in instance.completed if c != tree.wait}
    # a signal kept before the saga reached its wait is what the wait takes there
    kept = [r for r in records if r.event == "signal-kept"]
    passed = next((r for r in records if tree.wait in r.completed), None)
    if (
        kept
        and passed is not None
        and kept[0].seq < passed.seq
        and kinds_sent[kept[0].cause] is TApproved
    ):
        assert passed.event != "signalled", "a kept approval was not taken at the wait"
    for sub in tree.subs:  # a child the parent counts done completed, and only then
        child = children.get(f"{SAGA_ID}/{sub}")
        if sub in instance.completed:
            assert child is not None
            want = (
                SagaStatus.COMPLETED if sub not in instance.compensated else SagaStatus.COMPENSATED
            )
            assert child.status is want, (sub, child.status)
        elif child is not None:
            assert child.status.terminal and child.status is not SagaStatus.COMPLETED
    if instance.status is SagaStatus.COMPLETED:
        assert steps_done == on_path and instance.compensated == ()
        return
    # each completed (or in-doubt) step undone exactly once, nothing else
    assert sorted(instance.compensated) == sorted(steps_done)
    undos = [s for what, s, phase in log if what == "sent" and phase == "compensate"]
    assert sorted(undos) == sorted(instance.compensated)
    # once the saga fails, nothing new starts forward
    first_undo = next((i for i, e in enumerate(log) if e[2] == "compensate"), len(log))
    assert not any(e[0] == "sent" and e[2] == "forward" for e in log[first_undo:])
    # never undo a step while a later step of its own branch is not yet undone
    undone_at = {
        s: i
        for i, (what, s, phase) in enumerate(log)
        if what == "answered" and phase == "compensate"
    }
    sent_at = {
        s: i for i, (what, s, phase) in enumerate(log) if what == "sent" and phase == "compensate"
    }
    for a in sent_at:
        for b in sent_at:
            if precedes(tree.paths[a.partition("#")[0]], tree.paths[b.partition("#")[0]]):
                assert undone_at[b] < sent_at[a], (a, b, log)


def _taken(path: tuple[int, ...], saga: Saga[Any], instance: SagaInstance) -> bool:
    """Whether the step at `path` is on the path the saga took (the cases it chose)."""
    nodes = saga.tree.nodes
    choices = dict(instance.choices)
    for d in range(0, len(path) - 1, 2):
        node = nodes[path[d]]
        branch = path[d + 1]
        if hasattr(node, "cases"):  # a Switch: only the case it took
            keys = list(node.cases)
            if choices.get(node.name) != keys[branch]:
                return False
            nodes = node.cases[keys[branch]].nodes
        else:
            nodes = node.branches[branch].nodes
    return True
