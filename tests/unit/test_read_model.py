"""The read model against the journal: whatever owners, zombies and repeats wrote, and
however the records arrive (in batches of any size, read again after a crash), the
projection's rows are the instances a full replay gives, each with its whole timeline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagakit import SagaStatus, Transition
from sagakit._dlq import dead_letter
from sagakit._journal import (
    Replayer,
    claim_entry,
    decode_transition,
    encode_transition,
    transition_entry,
    transitions_entry,
)
from sagakit._readmodel import where
from sagakit._readstore import PostgresReadStore, ReadStore, SagaQuery, SqliteReadStore
from sagakit.eventlog._base import JournalEntry, StoredEntry
from sagakit.eventlog.kafka import EPOCH_HEADER, KIND_HEADER
from sagakit.transport._base import Record

from ..integration.hostile import RawName

TOPIC = "ns.trip.journal"
SAGAS = ("s0", "s1", "s2")
STATUSES = (
    SagaStatus.RUNNING,
    SagaStatus.RUNNING,
    SagaStatus.COMPENSATING,
    SagaStatus.FAILED_NEEDS_ATTENTION,
    SagaStatus.COMPLETED,
    SagaStatus.COMPENSATED,
)


class TripState(BaseModel):
    trip: str
    n: int = 0


def transition(saga_id: str, seq: int, status: SagaStatus, at: int, started: int) -> Transition:
    return Transition(
        saga_id=saga_id,
        saga_type="trip",
        version=1 + seq % 2,
        seq=seq,
        cause=f"{saga_id}:{started}:{seq}",
        cause_type="sagakit.StartSaga" if seq == 1 else "trips.Booked",
        at_ms=at,
        event="started" if seq == 1 else "step-succeeded",
        step=None if seq == 1 else "book",
        status=status,
        state=TripState(trip=saga_id, n=seq),
        completed=(),
        compensated=(),
        in_flight=(),
        failure="no seats" if status is SagaStatus.FAILED_NEEDS_ATTENTION else None,
        correlation_id=saga_id,
        started_ms=started,
        waits=(("approval", None),) if seq % 3 == 0 else (),
        actor="ops" if seq % 4 == 0 else None,
    )


def record(offset: int, entry: JournalEntry) -> Record:
    return Record(
        topic=TOPIC,
        partition=0,
        offset=offset,
        key=entry.key.encode() or None,
        value=entry.data,
        headers=((KIND_HEADER, entry.kind.encode()), (EPOCH_HEADER, str(entry.epoch).encode())),
        timestamp_ms=offset,
    )


# What owners write: (op, saga index, status index, batched with the next op)
ops = st.lists(
    st.tuples(
        st.sampled_from(["next", "next", "next", "claim", "zombie", "repeat"]),
        st.integers(0, len(SAGAS) - 1),
        st.integers(0, len(STATUSES) - 1),
        st.booleans(),
    ),
    max_size=40,
)


def journal(script: list[tuple[str, int, int, bool]]) -> list[JournalEntry]:
    """Journal entries of one partition as owners (and a zombie) would write them."""
    entries: list[JournalEntry] = []
    epoch, clock = 1, 1000
    seqs = dict.fromkeys(SAGAS, 0)
    runs = dict.fromkeys(SAGAS, 1000)
    ended = dict.fromkeys(SAGAS, False)
    batch: list[Transition] = []

    def flush() -> None:
        if batch:
            entries.append(
                transitions_entry(batch, epoch)
                if len(batch) > 1
                else transition_entry(batch[0], epoch)
            )
            batch.clear()

    entries.append(claim_entry(epoch))
    for op, i, status, batched in script:
        saga, clock = SAGAS[i], clock + 10
        if op == "claim":
            flush()
            epoch += 1
            entries.append(claim_entry(epoch))
        elif op == "zombie":  # a former owner writes after losing the partition: fenced
            flush()
            if epoch > 1:
                t = transition(saga, seqs[saga] + 1, STATUSES[status], clock, runs[saga])
                entries.append(transition_entry(t, epoch - 1))
        elif op == "repeat" and seqs[saga]:  # a record written again: skipped
            flush()
            t = transition(saga, seqs[saga], STATUSES[status], clock, runs[saga])
            entries.append(transition_entry(t, epoch))
        elif op == "next":
            if ended[saga]:  # started again after its dedupe window: a new run
                seqs[saga], runs[saga], ended[saga] = 0, clock, False
            seqs[saga] += 1
            s = STATUSES[status] if seqs[saga] > 1 else SagaStatus.RUNNING
            ended[saga] = s.terminal
            batch.append(transition(saga, seqs[saga], s, clock, runs[saga]))
            if not batched:
                flush()
    flush()
    return entries


async def project(
    store: SqliteReadStore, records: list[Record], cuts: list[int], back: list[int]
) -> None:
    """Feed `records` in batches ending at `cuts`; after each, read again from `back`
    records earlier (what a crash before the group commit does)."""
    start = 0
    for cut, rewind in zip([*cuts, len(records)], [*back, 0], strict=False):
        end = max(start, min(cut, len(records)))
        await store.project(records[start:end])
        start = max(0, end - rewind)
    await store.project(records[start:])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    script=ops,
    cuts=st.lists(st.integers(0, 60), max_size=6),
    back=st.lists(st.integers(0, 5), max_size=6),
)
def test_the_projection_equals_a_full_replay(
    tmp_path: Path, script: list[tuple[str, int, int, bool]], cuts: list[int], back: list[int]
) -> None:
    entries = journal(script)
    records = [record(i, e) for i, e in enumerate(entries)]
    replayer = Replayer(lambda data: decode_transition(data, None))
    replayer.feed([StoredEntry(i, e) for i, e in enumerate(entries)])

    async def check() -> None:
        store = SqliteReadStore(":memory:")
        await project(store, records, sorted(cuts), back)
        rows, total = await store.sagas(SagaQuery(limit=100))
        assert total == len(replayer.instances)
        by_id = {r.saga_id: r for r in rows}
        for saga_id, inst in replayer.instances.items():
            row = by_id[saga_id]
            assert (row.status, row.seq, row.version) == (inst.status, inst.seq, inst.version)
            assert (row.started_ms, row.updated_ms) == (inst.started_ms, inst.updated_ms)
            assert row.step == where(inst) and row.failure == inst.failure
            assert row.ended_ms == (inst.updated_ms if inst.status.terminal else None)
            assert row.waits == tuple(name for name, _ in inst.waits)
            timeline = await store.timeline(row)
            assert [t.seq for t in timeline] == list(range(1, inst.seq + 1))
            assert timeline[-1].transition().status is inst.status
        positions = await store.positions()
        assert positions[(TOPIC, 0)].next_offset == len(records)
        assert positions[(TOPIC, 0)].epoch == replayer.epoch
        await store.close()

    anyio.run(check)


pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ReadStore]:
    """A read store on SQLite (a file) or on a new PostgreSQL database: each call opens
    another store on the same database (a restarted projector)."""
    if request.param == "sqlite":
        return lambda: SqliteReadStore(tmp_path / "rm.db")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresReadStore(dsn)


async def test_a_restarted_projector_goes_on_from_what_it_committed(
    make_store: Callable[[], ReadStore],
) -> None:
    entries = journal([("next", 0, 0, False), ("next", 1, 0, False), ("next", 0, 4, False)])
    records = [record(i, e) for i, e in enumerate(entries)]
    store = make_store()
    await store.project(records[:2])
    identity = await store.identity()
    await store.close()
    again = make_store()
    await again.project(records)  # everything delivered again after the restart
    rows, _ = await again.sagas(SagaQuery())
    assert {r.saga_id: (r.status, r.seq) for r in rows} == {
        "s0": (SagaStatus.COMPLETED, 2),
        "s1": (SagaStatus.RUNNING, 1),
    }
    assert len(await again.timeline(next(r for r in rows if r.saga_id == "s0"))) == 2
    assert await again.identity() == identity
    await again.close()


async def test_queries_by_type_status_time_prefix_and_searchable_fields(
    make_store: Callable[[], ReadStore],
) -> None:
    store = make_store()
    entries = [claim_entry(1)]
    for n in range(6):
        t = transition(f"trip-{n}", 1, SagaStatus.RUNNING, 1000 + n, 1000 + n)
        entries.append(transition_entry(t, 1))
    done = transition("trip-0", 2, SagaStatus.FAILED_NEEDS_ATTENTION, 2000, 1000)
    entries.append(transition_entry(done, 1))
    await store.project([record(i, e) for i, e in enumerate(entries)], {"trip": ("trip",)})

    async def ids(**query: object) -> list[str]:
        rows, _ = await store.sagas(SagaQuery(**query))  # type: ignore[arg-type]
        return [r.saga_id for r in rows]

    assert await ids(status=SagaStatus.FAILED_NEEDS_ATTENTION) == ["trip-0"]
    assert (await store.find("trip-0"))[0].parked_reason == "no seats"
    assert await ids(started_from_ms=1004) == ["trip-5", "trip-4"]
    assert await ids(id_prefix="trip-3") == ["trip-3"]
    assert await ids(fields=(("trip", "trip-2"),)) == ["trip-2"]
    assert await ids(saga_type="other") == []
    assert await ids(limit=2, offset=1) == ["trip-5", "trip-4"]  # trip-0 changed last
    rows, total = await store.sagas(SagaQuery(limit=2))
    assert (len(rows), total) == (2, 6)
    assert (await store.counts())["trip"] == {
        SagaStatus.RUNNING: 5,
        SagaStatus.FAILED_NEEDS_ATTENTION: 1,
    }
    await store.close()


async def test_dead_letters_are_projected_and_sagas_pruned_after_the_retention(
    make_store: Callable[[], ReadStore],
) -> None:
    store = make_store()
    t = transition("old", 1, SagaStatus.RUNNING, 1000, 1000)
    end = transition("old", 2, SagaStatus.COMPLETED, 1500, 1000)
    live = transition("new", 1, SagaStatus.RUNNING, 5000, 5000)
    entries = [claim_entry(1), *(transition_entry(x, 1) for x in (t, end, live))]
    await store.project([record(i, e) for i, e in enumerate(entries)])
    original = Record(
        "ns.trip.inbox", 3, 17, b"old", b"{", (("message-id", b"m-1"), ("saga-id", b"old")), 1200
    )
    letter = dead_letter(original, "DecodeError", "not JSON", consumer="orchestrator")
    dlq = Record("ns.trip.inbox.dlq", 0, 0, letter.key, letter.value, letter.headers, 1300)
    await store.project([dlq])
    (row,), total = await store.letters()
    assert total == 1 and (row.message_id, row.saga_id, row.error_type) == (
        "m-1",
        "old",
        "DecodeError",
    )
    assert (row.original_topic, row.original_partition, row.original_offset) == (
        "ns.trip.inbox",
        3,
        17,
    )
    assert await store.prune(2000) == 1  # "old" ended at 1500
    rows, _ = await store.sagas(SagaQuery())
    assert [r.saga_id for r in rows] == ["new"]
    assert (await store.letters())[1] == 0
    await store.close()


def test_a_searchable_field_must_be_a_field_of_the_state() -> None:
    from sagakit import DefinitionError, Saga, Step

    from .test_orchestrator import Book, Booked, Trip

    steps = [Step("book", invoke=Book, on_reply={Booked: None})]
    assert Saga("rm-trip", state=Trip, steps=steps, searchable=["trip_id"]).searchable == (
        "trip_id",
    )
    with pytest.raises(DefinitionError, match=r"searchable names 'customer'.*trip_id"):
        Saga("rm-trip", state=Trip, steps=steps, searchable=["customer"])


def test_sagas_list_and_show_read_the_read_model(tmp_path: Path) -> None:
    """`sagakit sagas list/show --read-model URL`: no broker needed."""
    import json

    from typer.testing import CliRunner

    from sagakit.cli import app as cli

    path = tmp_path / "rm.db"
    parked = transition("trip-1", 2, SagaStatus.FAILED_NEEDS_ATTENTION, 3000, 1000)
    entries = [
        claim_entry(1),
        transition_entry(transition("trip-1", 1, SagaStatus.RUNNING, 1000, 1000), 1),
        transition_entry(transition("trip-2", 1, SagaStatus.RUNNING, 2000, 2000), 1),
        transition_entry(dataclasses.replace(parked, actor="ada", note="why not"), 1),
    ]

    async def fill() -> None:
        store = SqliteReadStore(path)
        await store.project([record(i, e) for i, e in enumerate(entries)], {"trip": ("trip",)})
        await store.close()

    anyio.run(fill)
    url = f"sqlite:///{path}"
    runner = CliRunner()
    listed = runner.invoke(cli, ["sagas", "list", "--read-model", url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(s["saga_id"], s["status"]) for s in json.loads(listed.stdout)] == [
        ("trip-1", "FAILED_NEEDS_ATTENTION"),
        ("trip-2", "RUNNING"),
    ]
    picked = runner.invoke(
        cli, ["sagas", "list", "--read-model", url, "--json", "--field", "trip=trip-2"]
    )
    assert [s["saga_id"] for s in json.loads(picked.stdout)] == ["trip-2"]
    shown = runner.invoke(cli, ["sagas", "show", "trip-1", "--read-model", url, "--json"])
    assert shown.exit_code == 0, shown.output
    timeline = json.loads(shown.stdout)["timeline"]
    assert [(t["seq"], t["by"], t["note"]) for t in timeline] == [
        (1, None, None),
        (2, "ada", "why not"),
    ]
    missing = runner.invoke(cli, ["sagas", "list", "--field", "trip=x"])
    assert missing.exit_code != 0 and "--read-model" in missing.output


def hostile_journal_records(topic: str) -> list[Record]:
    """Records an adversary with produce access could put on a journal topic."""
    good = transition("ok", 1, SagaStatus.RUNNING, 1000, 1000)
    line = encode_transition(good)
    kind, epoch = KIND_HEADER, EPOCH_HEADER
    shapes: list[tuple[bytes | None, bytes | None, tuple[tuple[str, Any], ...]]] = [
        (None, None, ()),
        (b"x", b"{}", ()),
        (b"x", line, ((kind, None), (epoch, None))),
        (b"x", line, ((kind, b"transition"), (epoch, b"not a number"))),
        (b"x", line, ((kind, b"\xff\xfe"), (epoch, b"1"))),
        (b"x", line, ((kind, b"gossip"), (epoch, b"1"))),
        (b"x", b"not json", ((kind, b"transition"), (epoch, b"1"))),
        (b"x", b'{"saga_type": 5, "saga_id": []}', ((kind, b"transition"), (epoch, b"1"))),
        (b"x", b"[1, 2]", ((kind, b"transitions"), (epoch, b"1"))),
        (b"x", line + b"\n\xff garbage", ((kind, b"transitions"), (epoch, b"1"))),
        (b"x", None, ((kind, b"transition"), (epoch, b"1"))),
        (b"x", line.replace(b'"ok"', b'"o\\u0000k"'), ((kind, b"transition"), (epoch, b"1"))),
        (b"x", b"\x00" * 100_000, ((kind, b"transition"), (epoch, b"1"))),
    ]
    return [
        Record(topic, 0, i, key, value, headers, i)
        for i, (key, value, headers) in enumerate(shapes)
    ]


async def test_hostile_records_are_skipped_and_the_projection_goes_on(
    make_store: Callable[[], ReadStore],
) -> None:
    store = make_store()
    hostile = hostile_journal_records(TOPIC)
    after = transition("after", 1, SagaStatus.RUNNING, 5000, 5000)
    tail = record(len(hostile), transition_entry(after, 1))
    letters = [
        Record("ns.x.inbox.dlq", 0, 0, None, None, (), 1),
        Record("ns.x.inbox.dlq", 0, 1, b"k", b"v", (("original-partition", b"zz"), ("x", None)), 2),
        Record("ns.x.inbox.dlq", 0, 2, None, None, ((RawName("n"), b"\xff"),), 3),
        Record("ns.x.inbox.dlq", 0, 3, None, None, (("error-message", b"a\x00b"),), 4),
    ]
    done = await store.project([*hostile, tail, *letters])
    rows, _ = await store.sagas(SagaQuery())
    # the transition line of a mixed record is projected ("ok"), the rest are skipped
    assert sorted(r.saga_id for r in rows) == ["after", "ok", "o\ufffdk"]
    assert len(done.anomalies) >= 8 and (await store.letters())[1] == 4
    positions = await store.positions()
    assert positions[(TOPIC, 0)].next_offset == len(hostile) + 1
    assert positions[("ns.x.inbox.dlq", 0)].next_offset == 4
    await store.close()


async def test_durations_and_long_runners_for_the_running_too_long_count() -> None:
    store = SqliteReadStore(":memory:")
    entries = [claim_entry(1)]
    for n in range(5):  # ended sagas that took 100, 200, ... 500 ms
        start = 1000 * n
        entries.append(
            transition_entry(transition(f"e{n}", 1, SagaStatus.RUNNING, start, start), 1)
        )
        end = transition(f"e{n}", 2, SagaStatus.COMPLETED, start + 100 * (n + 1), start)
        entries.append(transition_entry(end, 1))
    parked = transition("p", 2, SagaStatus.FAILED_NEEDS_ATTENTION, 50, 10)
    entries += [
        transition_entry(transition("old", 1, SagaStatus.RUNNING, 10, 10), 1),
        transition_entry(transition("new", 1, SagaStatus.RUNNING, 9000, 9000), 1),
        transition_entry(transition("p", 1, SagaStatus.RUNNING, 10, 10), 1),
        transition_entry(parked, 1),
    ]
    await store.project([record(i, e) for i, e in enumerate(entries)])
    assert await store.durations("trip") == [100, 200, 300, 400, 500]
    # started before 5000 and neither ended nor parked: "old" only
    assert await store.running_since("trip", 5000) == 1
    await store.close()
