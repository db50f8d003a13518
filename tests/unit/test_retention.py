"""What is left once the journal's retention deleted the records behind a snapshot: a
restarted orchestrator restores the live sagas from the snapshot and still recognises
ended ones inside the dedupe window, and `sagas list`/`show` (the inspect layer) show
the live sagas as the snapshot has them, an ended saga by its id and final status, and
say plainly when a saga's history is gone."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from sagakit import Event, History, Projector, Saga, SagaQuery, SagaStatus, SqliteReadStore, WaitFor
from sagakit._inspect import AS_OF_SNAPSHOT, HistoryGone, read_journal, saga_history
from sagakit._snapshots import read_checkpoints
from sagakit.eventlog.kafka import KafkaEventLog
from sagakit.testing import SagaTestEnvironment, VirtualClock
from sagakit.transport.memory import MemoryBroker

pytestmark = pytest.mark.anyio


class RetApproved(Event, type="rtest.Approved"):
    by: str


class RetTicket(BaseModel):
    n: int = 0
    approved_by: str = ""


SAGA = Saga(
    "rtest-ticket",
    state=RetTicket,
    steps=[
        WaitFor(
            "approval",
            event=RetApproved,
            timeout_s=None,
            on_event=lambda s, e: s.model_copy(update={"approved_by": e.by}),
        )
    ],
)
JOURNAL = "rtest-ticket.journal"
HISTORY = History(snapshot_every=4, snapshot_interval_s=10, dedupe_window_s=600)


def environment(broker: MemoryBroker, clock: VirtualClock) -> SagaTestEnvironment:
    """One orchestrator of SAGA on one partition of `broker` (a new one restores it)."""
    return SagaTestEnvironment([SAGA], partitions=1, broker=broker, clock=clock, history=HISTORY)


async def approved(env: SagaTestEnvironment, count: int) -> None:
    """Start `count` tickets, done-0 onwards, and approve each: they complete."""
    for n in range(count):
        await env.start(SAGA, f"done-{n}", RetTicket(n=n))
        await env.client.signal(SAGA.name, f"done-{n}", RetApproved(by="ann"))


async def test_after_retention_deletes_what_a_snapshot_covers_nothing_live_is_lost() -> None:
    clock = VirtualClock()
    broker = MemoryBroker(clock=clock.time)
    async with environment(broker, clock) as env:
        await approved(env, 4)
        await env.start(SAGA, "waiting", RetTicket(n=9))
        await env.settle()
        assert env.instance("done-0").status is SagaStatus.COMPLETED  # type: ignore[union-attr]
        await env.advance(30)  # the timed snapshot, with every change in it

    # retention deletes the journal up to the latest snapshot
    transport = env.transport
    found = await read_checkpoints(KafkaEventLog(transport, SAGA.checkpoints_topic), 0)
    assert found.latest is not None and found.latest.sagas == 1 and found.latest.ended == 4
    broker.delete_records(JOURNAL, 0, found.latest.offset)
    assert all(r.offset >= found.latest.offset for r in broker.records(JOURNAL))

    view = await read_journal(transport, JOURNAL, 1)
    assert view.trimmed == {0: found.latest.offset}
    assert set(view.instances) == {"waiting"}
    assert view.instances["waiting"].status is SagaStatus.RUNNING
    assert {i: e.status for i, e in view.ended.items()} == {
        f"done-{n}": SagaStatus.COMPLETED for n in range(4)
    }
    (live,) = await saga_history(transport, JOURNAL, 1, "waiting")
    assert live.event == AS_OF_SNAPSHOT and live.status is SagaStatus.RUNNING
    assert dict(live.waits) == {"approval": None}
    (ended,) = await saga_history(transport, JOURNAL, 1, "done-2")
    assert ended.status is SagaStatus.COMPLETED
    assert ended.note is not None and "only its id and final status" in ended.note
    with pytest.raises(HistoryGone, match="deleted by the journal's retention"):
        await saga_history(transport, JOURNAL, 1, "never-ran")

    # a new orchestrator restores from the snapshot: the live saga goes on, a start
    # re-sent inside the dedupe window is still recognised
    async with environment(broker, clock) as env2:
        await env2.start(SAGA, "done-1", RetTicket(n=1))
        await env2.client.signal(SAGA.name, "waiting", RetApproved(by="bob"))
        done = await env2.wait_until_ended("waiting")
        assert done.status is SagaStatus.COMPLETED and done.state.approved_by == "bob"  # type: ignore[attr-defined]
        await env2.settle()
        assert [t.saga_id for t in env2.transitions] == ["waiting"]  # done-1 did not start again


async def test_ended_sagas_past_the_window_are_not_brought_back_by_a_restore() -> None:
    clock = VirtualClock()
    broker = MemoryBroker(clock=clock.time)
    async with environment(broker, clock) as env:
        await approved(env, 3)
        await env.settle()
        await env.advance(30)  # the timed snapshot: it holds the three ended ids
        (orchestrator,) = env.orchestrators.values()
        assert orchestrator.status("done-0") is SagaStatus.COMPLETED
    found = await read_checkpoints(KafkaEventLog(env.transport, SAGA.checkpoints_topic), 0)
    assert found.latest is not None and found.latest.ended == 3

    clock.set(clock.time() + HISTORY.dedupe_window_s + 1)  # no owner while the window passes
    async with environment(broker, clock) as env2:
        (orchestrator,) = env2.orchestrators.values()
        # the snapshot still lists them, the new owner does not hold them
        assert [orchestrator.status(f"done-{n}") for n in range(3)] == [None] * 3
        # and, as documented, a start with one of those ids begins a new saga
        await env2.start(SAGA, "done-1", RetTicket(n=7))
        await env2.settle()
        assert [t.saga_id for t in env2.transitions] == ["done-1"]
        assert env2.instance("done-1").state.n == 7  # type: ignore[union-attr]


async def test_a_read_model_started_after_retention_takes_the_rest_from_the_snapshot(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    broker = MemoryBroker(clock=clock.time)
    async with environment(broker, clock) as env:
        await approved(env, 4)
        await env.start(SAGA, "waiting", RetTicket(n=9))
        await env.settle()
        await env.advance(30)  # the timed snapshot
        found = await read_checkpoints(KafkaEventLog(env.transport, SAGA.checkpoints_topic), 0)
        assert found.latest is not None
        broker.delete_records(JOURNAL, 0, found.latest.offset)
        await env.start(SAGA, "later", RetTicket(n=10))  # after the snapshot: in the tail
        await env.settle()
        store = SqliteReadStore(tmp_path / "rm.db")
        projector = Projector(env.transport, store, discover_s=0.1)
        async with anyio.create_task_group() as tg:
            await tg.start(projector.run)
            with anyio.fail_after(10):
                while (await store.sagas(SagaQuery()))[1] < 6:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    rows = {r.saga_id: r for r in (await store.sagas(SagaQuery()))[0]}
    assert {i: r.status for i, r in rows.items()} == {
        **{f"done-{n}": SagaStatus.COMPLETED for n in range(4)},
        "waiting": SagaStatus.RUNNING,
        "later": SagaStatus.RUNNING,
    }
    assert rows["waiting"].waits == ("approval",) and rows["done-0"].ended_ms is not None
    (entry,) = await store.timeline(rows["waiting"])
    assert entry.event == AS_OF_SNAPSHOT and "retention" in (entry.note or "")
    assert [t.seq for t in await store.timeline(rows["later"])] == [1]
    await store.close()
