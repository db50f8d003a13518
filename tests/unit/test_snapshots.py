"""Snapshots: restoring from the latest valid snapshot and the journal after it gives what
a replay of the whole journal gives (live sagas, and the answer to every message that
comes again); interrupted and zombie snapshots are never used; ended sagas leave memory
and are remembered for the dedupe window, then forgotten."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagakit import (
    Command,
    Envelope,
    History,
    Incoming,
    MemoryEventLog,
    Message,
    Reply,
    Saga,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Step,
    decide,
)
from sagakit._evaluator import EndedSaga
from sagakit._journal import (
    Replayer,
    decode_instance,
    decode_transition,
    encode_transition,
    journal_entries,
)
from sagakit._messages import CancelSaga
from sagakit._snapshots import (
    SNAPSHOT_AT,
    evict,
    read_checkpoints,
    restore_partition,
    snapshot_entries,
    write_snapshot,
)

pytestmark = pytest.mark.anyio


class SnapState(BaseModel):
    key: str
    held: int = 0


class Hold(Command, type="snaptest.Hold"):
    key: str


class Held(Reply, type="snaptest.Held"):
    pass


class HoldRefused(Reply, type="snaptest.HoldRefused"):
    pass


class Release(Command, type="snaptest.Release"):
    key: str


class Released(Reply, type="snaptest.Released"):
    pass


class Ship(Command, type="snaptest.Ship"):
    key: str


class Shipped(Reply, type="snaptest.Shipped"):
    pass


class ShipRefused(Reply, type="snaptest.ShipRefused"):
    pass


def _held(state: SnapState, _reply: Held) -> SnapState:
    return state.model_copy(update={"held": state.held + 1})


SAGA = Saga(
    "snap-test",
    state=SnapState,
    steps=[
        Step(
            "hold",
            invoke=Hold,
            on_reply={Held: _held},
            failures=[HoldRefused],
            compensate=Release,
            to="snaptest",
        ),
        Step("ship", invoke=Ship, on_reply={Shipped: None}, failures=[ShipRefused], to="snaptest"),
    ],
)
WINDOW_MS = 10_000


def start(
    saga_id: str, at_ms: int, *, key: str = "k", message_id: str | None = None
) -> Incoming[Message]:
    mid = message_id or f"{saga_id}:start"
    envelope = Envelope(
        message_id=mid,
        message_type=StartSaga.message_type,
        saga_id=saga_id,
        correlation_id=mid,
        causation_id=mid,
        saga_type=SAGA.name,
    )
    return Incoming(envelope, StartSaga(state={"key": key}), at_ms)


def answer(instance: SagaInstance, ok: bool, at_ms: int) -> Incoming[Message]:
    pending = instance.in_flight[0]
    kinds: dict[str, tuple[type[Reply], type[Reply]]] = {
        Hold.message_type: (Held, HoldRefused),
        Ship.message_type: (Shipped, ShipRefused),
        Release.message_type: (Released, Released),
    }
    message = kinds[pending.command_type][0 if ok else 1]()
    envelope = Envelope(
        message_id=f"{pending.message_id}:reply",
        message_type=message.message_type,
        saga_id=instance.saga_id,
        correlation_id=instance.correlation_id,
        causation_id=pending.message_id,
    )
    return Incoming(envelope, message, at_ms)


def cancel(saga_id: str, at_ms: int, n: int) -> Incoming[Message]:
    envelope = Envelope(
        message_id=f"{saga_id}:cancel:{n}",
        message_type=CancelSaga.message_type,
        saga_id=saga_id,
        correlation_id=saga_id,
        causation_id=saga_id,
    )
    return Incoming(envelope, CancelSaga(reason="test"), at_ms)


def decode(data: bytes) -> Any:
    return decode_transition(data, SAGA)


def decode_i(data: bytes) -> SagaInstance:
    return decode_instance(data, SAGA)


@dataclass
class Owner:
    """An owner of partition 0 as the orchestrator is, without a broker: decides, journals
    each batch as one record, and snapshots (letting ended sagas leave memory) when told."""

    journal: MemoryEventLog = field(default_factory=lambda: MemoryEventLog(1))
    checkpoints: MemoryEventLog = field(default_factory=lambda: MemoryEventLog(1))
    instances: dict[str, SagaInstance] = field(default_factory=dict)
    ended: dict[str, EndedSaga] = field(default_factory=dict)
    delivered: list[Incoming[Message]] = field(default_factory=list)
    epoch: int = 1
    snapshots: int = 0

    async def deliver(self, batch: Sequence[Incoming[Message]]) -> None:
        encoded = []
        for incoming in batch:
            saga_id = incoming.envelope.saga_id
            known = self.instances.get(saga_id) or self.ended.get(saga_id)
            decision = decide(SAGA, known, incoming)
            self.delivered.append(incoming)
            if decision.records:
                assert decision.instance is not None
                self.instances[saga_id] = decision.instance
                encoded += [(t.saga_id, encode_transition(t)) for t in decision.records]
        if encoded:
            await self.journal.append([(0, e) for e in journal_entries(encoded, self.epoch, 2_000)])

    async def snapshot(self, now_ms: int, max_bytes: int = 3_000) -> None:
        evict(self.instances, self.ended, now_ms, WINDOW_MS)
        await write_snapshot(
            self.journal,
            self.checkpoints,
            0,
            self.epoch,
            self.instances.values(),
            self.ended.values(),
            max_bytes=max_bytes,
            at_ms=now_ms,
        )
        self.snapshots += 1


async def full_replay(journal: MemoryEventLog) -> Replayer:
    replayer = Replayer(decode)
    async with aclosing(journal.read(0)) as batches:
        async for batch in batches:
            replayer.feed(batch)
    return replayer


def answer_kind(known: SagaInstance | EndedSaga | None, incoming: Incoming[Message]) -> str:
    decision = decide(SAGA, known, incoming)
    if decision.records:
        return "applied"
    if decision.rejected is not None:
        return decision.rejected_as
    return "ignored"


# -- the property -----------------------------------------------------------------------------

action = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 5)),
    st.tuples(st.just("answer"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("again"), st.integers(0, 200)),
    st.tuples(st.just("snapshot"), st.integers(1, 3)),
    st.tuples(st.just("wait"), st.integers(1, 8_000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(action, min_size=1, max_size=4), min_size=1, max_size=25))
def test_snapshot_and_tail_restore_what_a_full_replay_does(
    plan: list[list[tuple[Any, ...]]],
) -> None:
    anyio.run(_snapshot_and_tail_equal_full_replay, plan)


async def _snapshot_and_tail_equal_full_replay(plan: list[list[tuple[Any, ...]]]) -> None:
    owner = Owner()
    now = 1_000
    cancels = 0
    last_snapshot_ms: int | None = None
    for steps in plan:
        batch: list[Incoming[Message]] = []
        for act in steps:
            kind = act[0]
            if kind == "wait":
                now += act[1]
            elif kind == "start":
                batch.append(start(f"s{act[1]}", now))
            elif kind == "answer":
                inst = owner.instances.get(f"s{act[1]}")
                if inst is not None and inst.in_flight:
                    batch.append(answer(inst, act[2], now))
            elif kind == "cancel":
                cancels += 1
                batch.append(cancel(f"s{act[1]}", now, cancels))
            elif kind == "again" and owner.delivered:  # a message delivered again
                old = owner.delivered[act[1] % len(owner.delivered)]
                batch.append(Incoming(old.envelope, old.message, now))
            elif kind == "snapshot":
                await owner.deliver(batch)
                batch = []
                # small records, so that a snapshot often takes several
                await owner.snapshot(now, max_bytes=1_000 * act[1] + 600)
                last_snapshot_ms = now
        await owner.deliver(batch)

    full = await full_replay(owner.journal)
    restored = await restore_partition(
        owner.journal, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    # the same live sagas, exactly
    live = {k: v for k, v in full.instances.items() if not v.status.terminal}
    assert {k: v for k, v in restored.instances.items() if not v.status.terminal} == live
    # what the owner holds is what the restore holds
    assert restored.instances == owner.instances
    assert restored.ended == owner.ended
    # every ended saga: whole, reduced to its id and status, or forgotten after the window
    for saga_id, instance in full.instances.items():
        if not instance.status.terminal:
            continue
        if saga_id in restored.instances:
            assert restored.instances[saga_id] == instance
        elif saga_id in restored.ended:
            kept = restored.ended[saga_id]
            assert (kept.status, kept.start_digest) == (instance.status, instance.start_digest)
        else:  # forgotten: it ended more than the window before a snapshot
            assert last_snapshot_ms is not None
            assert last_snapshot_ms - instance.updated_ms > WINDOW_MS
    # every message a saga took, delivered again, gets the same answer (a cancel repeated
    # after its saga left memory is refused instead of ignored: applied by neither)
    for incoming in owner.delivered:
        saga_id = incoming.envelope.saga_id
        whole = full.instances.get(saga_id)
        if whole is None or incoming.envelope.message_id not in whole.applied:
            continue  # refused when it came: not a repeat of anything
        kept = restored.instances.get(saga_id) or restored.ended.get(saga_id)
        if kept is None:
            continue  # forgotten after the window (checked above)
        assert answer_kind(kept, incoming) != "applied"
        expected = answer_kind(whole, incoming)
        got = answer_kind(kept, incoming)
        if isinstance(incoming.message, CancelSaga) and isinstance(kept, EndedSaga):
            assert got == "CancelRefused" and expected in ("ignored", "CancelRefused")
        else:
            assert got == expected, incoming.envelope
    # a start re-sent with another state is a conflict either way
    for saga_id in full.instances:
        kept = restored.instances.get(saga_id) or restored.ended.get(saga_id)
        if kept is not None:
            other = start(saga_id, now, key="other", message_id=f"{saga_id}:again")
            assert answer_kind(kept, other) == answer_kind(full.instances[saga_id], other)


# -- examples ---------------------------------------------------------------------------------


async def run_to_end(owner: Owner, saga_id: str, now: int, ok: bool = True) -> None:
    await owner.deliver([start(saga_id, now)])
    while (inst := owner.instances[saga_id]).in_flight:
        await owner.deliver([answer(inst, ok, now)])


async def test_a_restore_reads_the_snapshot_and_only_the_journal_after_it() -> None:
    owner = Owner()
    for i in range(30):
        await run_to_end(owner, f"done-{i}", 1_000)
    await owner.deliver([start("live", 1_000)])
    await owner.snapshot(2_000)
    await run_to_end(owner, "after", 2_500)
    restored = await restore_partition(
        owner.journal, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    assert restored.snapshot is not None
    assert restored.applied == 3  # the records of "after" only
    assert set(restored.instances) == {"live", "after"}
    assert len(restored.ended) == 30
    assert restored.touched == {"after"}
    # a start re-sent inside the window is recognised; one with another state conflicts
    assert answer_kind(restored.ended["done-3"], start("done-3", 3_000)) == "ignored"
    other = start("done-3", 3_000, key="x", message_id="m2")
    assert answer_kind(restored.ended["done-3"], other) == "StartConflict"


async def test_after_the_window_an_ended_saga_is_forgotten_and_its_id_starts_anew() -> None:
    owner = Owner()
    await run_to_end(owner, "old", 1_000)
    await owner.snapshot(1_000 + WINDOW_MS + 1)
    assert "old" not in owner.instances and "old" not in owner.ended
    restored = await restore_partition(
        owner.journal, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    assert "old" not in restored.ended
    # inside the window a cancel is refused as for an ended saga; after it, the id is
    # unknown (dead-lettered as such), and a start with it begins a new saga
    owner.epoch = restored.epoch  # the restore claimed the partition: its owner goes on
    await run_to_end(owner, "young", 11_000)
    await owner.snapshot(12_000)
    restored = await restore_partition(
        owner.journal, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    assert set(restored.ended) == {"young"}
    assert answer_kind(restored.ended["young"], cancel("young", 12_000, 1)) == "CancelRefused"
    after = decide(SAGA, restored.ended.get("old"), cancel("old", 20_000, 1))
    assert after.rejected is not None and "unknown saga old" in after.rejected
    assert answer_kind(None, start("old", 20_000)) == "applied"


async def test_a_snapshot_larger_than_a_record_is_written_in_parts() -> None:
    owner = Owner()
    for i in range(40):
        await owner.deliver([start(f"live-{i}", 1_000)])
    await owner.snapshot(1_500, max_bytes=2_000)
    assert len([e for e in owner.checkpoints.entries(0) if e.kind == SNAPSHOT_AT]) == 1
    found = await read_checkpoints(owner.checkpoints, 0)
    assert found.latest is not None and found.latest.parts > 3
    restored = await restore_partition(
        owner.journal, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    assert restored.snapshot is not None and restored.applied == 0
    assert restored.instances == owner.instances


async def test_a_snapshot_interrupted_before_its_checkpoint_is_not_used() -> None:
    owner = Owner()
    await owner.deliver([start("a", 1_000)])
    await owner.snapshot(1_100)
    await owner.deliver([start("b", 1_200)])
    # a crash after the snapshot's records, before its checkpoint: a part is missing too
    parts = snapshot_entries("crashed", 1, [owner.instances["a"]], [], 10_000)
    await owner.journal.append([(0, parts[0])])
    restored = await restore_partition(
        owner.journal, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    assert restored.snapshot is not None and restored.snapshot.snapshot_id != "crashed"
    assert set(restored.instances) == {"a", "b"}


async def test_a_zombie_snapshot_after_the_next_claim_is_never_used() -> None:
    zombie = Owner()
    await zombie.deliver([start("a", 1_000)])
    await zombie.snapshot(1_100)
    # the partition moves: the new owner restores (claiming epoch 2) and goes on
    first = await restore_partition(
        zombie.journal, 0, decode, checkpoints=zombie.checkpoints, decode_instance=decode_i
    )
    assert first.epoch == 2
    new = Owner(zombie.journal, zombie.checkpoints, dict(first.instances), epoch=2)
    await new.deliver([answer(new.instances["a"], True, 1_200)])
    # the stalled former owner wakes, decides a stale record and snapshots its view
    await zombie.deliver([answer(zombie.instances["a"], False, 1_300)])
    await zombie.snapshot(1_400)
    found = await read_checkpoints(zombie.checkpoints, 0)
    assert found.fenced == 1
    restored = await restore_partition(
        zombie.journal, 0, decode, checkpoints=zombie.checkpoints, decode_instance=decode_i
    )
    assert restored.epoch == 3
    assert restored.instances["a"] == new.instances["a"]  # the new owner's "held", not refused
    assert restored.instances["a"].state.held == 1  # type: ignore[attr-defined]


async def test_a_snapshot_deleted_by_retention_falls_back_to_what_the_journal_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = Owner()
    await owner.deliver([start("a", 1_000)])
    await owner.snapshot(1_100)
    # retention deleted everything up to and including the snapshot
    kept = MemoryEventLog(1)
    await kept.append([(0, e) for e in owner.journal.entries(0)])
    kept._parts[0][:] = []  # type: ignore[index]  # nothing is left
    restored = await restore_partition(
        kept, 0, decode, checkpoints=owner.checkpoints, decode_instance=decode_i
    )
    assert restored.snapshot is None
    assert "not whole in the journal" in caplog.text


def test_history_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="quarter of journal_retention_s"):
        History(snapshot_interval_s=3_600, journal_retention_s=7_200)
    with pytest.raises(ValueError, match="SAGAKIT_SNAPSHOT_EVERY"):
        History.from_env({"SAGAKIT_SNAPSHOT_EVERY": "many"})
    history = History.from_env(
        {"SAGAKIT_DEDUPE_WINDOW_S": "60", "SAGAKIT_JOURNAL_RETENTION_S": "none"}
    )
    assert history.dedupe_window_s == 60 and history.journal_retention_s is None
    assert history.topic_configs()["retention.ms"] == "-1"
    assert History().topic_configs()["retention.ms"] == str(7 * 86_400_000)


def test_ended_sagas_of_a_snapshot_are_listed_once() -> None:
    instances: dict[str, SagaInstance] = {}
    ended = {"x": EndedSaga("x", SagaStatus.COMPLETED, 1, 0, None)}
    evict(instances, ended, 5_000, WINDOW_MS)
    assert list(ended) == ["x"]
    evict(instances, ended, WINDOW_MS + 1, WINDOW_MS)
    assert ended == {}
