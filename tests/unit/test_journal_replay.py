"""Restoring a journal partition: claim epochs fence what a stalled former owner writes
after losing the partition, and repeated records are skipped, not applied twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from sagakit import (
    DecodeError,
    MemoryEventLog,
    PendingCommand,
    Phase,
    SagaInstance,
    SagaStatus,
    Transition,
    replay,
)
from sagakit._journal import (
    CLAIM,
    Replayer,
    claim_entry,
    decode_transition,
    encode_transition,
    transition_entry,
    transitions_entry,
)
from sagakit._snapshots import restore_partition
from sagakit.eventlog._base import JournalEntry, StoredEntry
from services.orders.saga import OrderState, place_order
from services.payments.messages import ReserveCredit

pytestmark = pytest.mark.anyio

STATE = OrderState(
    order_id="o1", customer_id="c1", product_id="p1", quantity=1, amount=10, address="a"
)


def decode(data: bytes) -> Transition:
    return decode_transition(data, place_order)


def transition(saga_id: str, seq: int, *, cause: str | None = None, amount: int = 10) -> Transition:
    """Record `seq` of saga `saga_id`; odd seqs await a command, even ones do not."""
    pending = None
    if seq % 2:
        pending = PendingCommand(
            step="reserve-credit",
            phase=Phase.FORWARD,
            attempt=1,
            message_id=f"{saga_id}:reserve-credit:1",
            topic="payments.commands",
            command=ReserveCredit(order_id="o1", customer_id="c1", amount=amount),
            causation_id=f"{saga_id}-m{seq - 1}",
        )
    return Transition(
        saga_id=saga_id,
        saga_type="place-order",
        version=1,
        seq=seq,
        cause=cause or f"{saga_id}-m{seq}",
        cause_type="sagakit.StartSaga" if seq == 1 else "payments.CreditReserved",
        at_ms=1_000 * seq,
        event="started" if seq == 1 else "step-succeeded",
        step=None if seq == 1 else "reserve-credit",
        status=SagaStatus.RUNNING,
        state=STATE.model_copy(update={"amount": amount}),
        completed=("create-order",),
        compensated=(),
        in_flight=() if pending is None else (pending,),
        failure=None,
        correlation_id=f"{saga_id}-m1",
        started_ms=1_000,
    )


def stored(entries: Sequence[JournalEntry], start: int = 0) -> list[StoredEntry]:
    return [StoredEntry(start + i, e) for i, e in enumerate(entries)]


def fed(*entries: JournalEntry) -> Replayer:
    replayer = Replayer(decode)
    replayer.feed(stored(entries))
    return replayer


def test_journal_record_round_trip() -> None:
    for t in (transition("a", 1), transition("a", 2)):
        assert decode(encode_transition(t)) == t


def test_journal_record_of_another_saga_type_does_not_decode() -> None:
    data = encode_transition(replace(transition("a", 1), saga_type="refund"))
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert "'refund'" in str(info.value) and "'place-order'" in str(info.value)


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"saga_type": "place-order"}'])
def test_corrupt_journal_record_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_records_of_the_current_epoch_are_applied() -> None:
    records = [transition("a", 1), transition("b", 1), transition("a", 2)]
    replayer = fed(claim_entry(1), *(transition_entry(t, 1) for t in records))
    assert replayer.epoch == 1
    assert (replayer.applied, replayer.fenced, replayer.anomalies) == (3, 0, [])
    assert replayer.instances == replay(records)
    assert replayer.instances["a"].seq == 2
    assert replayer.next_offset == 4


def test_records_without_any_claim_are_applied() -> None:
    replayer = fed(transition_entry(transition("a", 1), 0), transition_entry(transition("a", 2), 0))
    assert replayer.applied == 2 and replayer.fenced == 0
    assert replayer.instances["a"].seq == 2


def test_records_after_a_higher_claim_with_a_lower_epoch_are_fenced() -> None:
    replayer = fed(
        claim_entry(1),
        transition_entry(transition("a", 1), 1),
        transition_entry(transition("a", 2), 1),  # before the new claim: counts
        claim_entry(2),
        transition_entry(transition("a", 3, amount=999), 1),  # the zombie, after losing it
        transition_entry(transition("b", 1), 1),  # the zombie starting a saga
        transition_entry(transition("a", 3), 2),  # the new owner
    )
    assert replayer.epoch == 2
    assert replayer.fenced == 2
    assert replayer.applied == 3
    assert replayer.anomalies == []
    assert set(replayer.instances) == {"a"}
    a = replayer.instances["a"]
    assert a.seq == 3
    assert isinstance(a.state, OrderState) and a.state.amount == 10
    assert a.applied == frozenset({"a-m1", "a-m2", "a-m3"})
    assert replayer.next_offset == 7


def test_a_stale_claim_does_not_lower_the_epoch() -> None:
    replayer = fed(
        claim_entry(3),
        claim_entry(2),
        transition_entry(transition("a", 1), 2),
        transition_entry(transition("b", 1), 3),
    )
    assert replayer.epoch == 3
    assert replayer.fenced == 1
    assert set(replayer.instances) == {"b"}


def test_fencing_spans_batches() -> None:
    replayer = Replayer(decode)
    replayer.feed(stored([claim_entry(1), transition_entry(transition("a", 1), 1)]))
    replayer.feed(stored([claim_entry(2)], start=2))
    replayer.feed(stored([transition_entry(transition("a", 2), 1)], start=3))
    assert (replayer.applied, replayer.fenced, replayer.next_offset) == (1, 1, 4)
    assert replayer.instances["a"].seq == 1


def test_a_repeated_seq_is_skipped_as_an_anomaly() -> None:
    first = transition("a", 1)
    again = transition("a", 1, cause="other-message", amount=77)
    replayer = fed(
        claim_entry(1),
        transition_entry(first, 1),
        transition_entry(transition("a", 2), 1),
        transition_entry(again, 1),
    )
    assert replayer.applied == 2
    assert replayer.fenced == 0
    [anomaly] = replayer.anomalies
    assert "offset 3" in anomaly and "saga a" in anomaly and "seq 1" in anomaly
    a = replayer.instances["a"]
    assert a.seq == 2
    assert a.applied == frozenset({"a-m1", "a-m2"})
    assert isinstance(a.state, OrderState) and a.state.amount == 10


def test_a_record_whose_cause_was_applied_is_skipped() -> None:
    replayer = fed(
        transition_entry(transition("a", 1), 1),
        transition_entry(transition("a", 2, cause="a-m1"), 1),
    )
    assert replayer.applied == 1
    assert len(replayer.anomalies) == 1
    assert replayer.instances["a"].seq == 1


def test_a_gap_in_seqs_is_reported_but_applied() -> None:
    replayer = fed(transition_entry(transition("a", 1), 1), transition_entry(transition("a", 3), 1))
    assert replayer.applied == 2
    [anomaly] = replayer.anomalies
    assert "seq 3, expected 2" in anomaly
    assert replayer.instances["a"].seq == 3


def test_a_first_record_that_is_not_seq_one_is_reported() -> None:
    replayer = fed(transition_entry(transition("a", 2), 1))
    assert replayer.anomalies == ["offset 0: saga a seq 2, expected 1"]
    assert replayer.instances["a"].seq == 2


def test_an_unknown_kind_is_an_anomaly() -> None:
    replayer = fed(
        JournalEntry("a", "compacted", 1, b"{}"), transition_entry(transition("a", 1), 1)
    )
    assert replayer.applied == 1
    assert replayer.anomalies == ["offset 0: unknown kind 'compacted'"]


# -- restore_partition -------------------------------------------------------------------------


async def test_restore_of_an_empty_partition_claims_epoch_one() -> None:
    log = MemoryEventLog(partitions=2)
    replayer = await restore_partition(log, 1, decode)
    assert replayer.instances == {}
    assert replayer.epoch == 1
    assert log.entries(1) == [claim_entry(1)]
    assert log.entries(0) == []
    assert replayer.next_offset == 1


async def test_restore_fences_the_zombie_and_claims_the_next_epoch() -> None:
    log = MemoryEventLog(partitions=2)
    history = [
        claim_entry(1),
        transition_entry(transition("a", 1), 1),
        transition_entry(transition("b", 1), 1),
        claim_entry(2),
        transition_entry(transition("a", 2, amount=999), 1),  # zombie
        transition_entry(transition("a", 2), 2),
    ]
    await log.append([(0, e) for e in history])
    await log.append([(1, transition_entry(transition("z", 1), 5))])  # another partition

    replayer = await restore_partition(log, 0, decode)

    assert replayer.epoch == 3
    assert log.entries(0) == [*history, claim_entry(3)]
    assert log.entries(0)[-1].kind == CLAIM
    assert replayer.fenced == 1
    assert replayer.anomalies == []
    assert set(replayer.instances) == {"a", "b"}
    a: SagaInstance = replayer.instances["a"]
    assert a.seq == 2
    assert isinstance(a.state, OrderState) and a.state.amount == 10
    assert replayer.instances["b"] == replay([transition("b", 1)])["b"]
    assert replayer.next_offset == len(history) + 1
    assert len(log.entries(1)) == 1


async def test_each_restore_claims_a_higher_epoch_and_fences_the_previous_owner() -> None:
    log = MemoryEventLog(partitions=1)
    first = await restore_partition(log, 0, decode)
    assert first.epoch == 1
    await log.append([(0, transition_entry(transition("a", 1), first.epoch))])

    second = await restore_partition(log, 0, decode)
    assert second.epoch == 2
    assert second.instances["a"].seq == 1

    # the first owner wakes up and writes on: fenced from now on
    await log.append([(0, transition_entry(transition("a", 2), first.epoch))])
    third = await restore_partition(log, 0, decode)
    assert third.epoch == 3
    assert third.fenced == 1
    assert third.instances["a"].seq == 1
    assert [e.epoch for e in log.entries(0) if e.kind == CLAIM] == [1, 2, 3]


class RacingLog(MemoryEventLog):
    """Lets the previous owner append right before our claim and another writer right after."""

    def __init__(self, before: list[JournalEntry], after: list[JournalEntry]) -> None:
        super().__init__(partitions=1)
        self.before = before
        self.after = after
        self.armed = False

    async def append(self, entries: Sequence[tuple[int, JournalEntry]]) -> list[int]:
        if self.armed and any(e.kind == CLAIM for _, e in entries):
            self.armed = False
            await super().append([(0, e) for e in self.before])
            offsets = await super().append(entries)
            await super().append([(0, e) for e in self.after])
            return offsets
        return await super().append(entries)


async def test_records_landing_before_our_claim_are_caught_up() -> None:
    log = RacingLog(
        before=[transition_entry(transition("a", 2), 1)],
        after=[transition_entry(transition("a", 3), 2)],
    )
    await log.append([(0, claim_entry(1)), (0, transition_entry(transition("a", 1), 1))])
    log.armed = True

    replayer = await restore_partition(log, 0, decode)

    entries = log.entries(0)
    assert entries[3] == claim_entry(2)
    assert replayer.epoch == 2
    assert replayer.instances["a"].seq == 2  # the late record of epoch 1 counts
    assert replayer.next_offset == 4  # stopped at the claim, not past it
    assert len(entries) == 5


def test_a_batch_of_transitions_is_one_record_and_replays_like_separate_ones() -> None:
    ts = [transition("a", 1), transition("b", 1), transition("a", 2)]
    bundle = transitions_entry(ts, epoch=1)
    assert bundle.kind == "transitions" and bundle.data.count(b"\n") == 2
    together = fed(claim_entry(1), bundle)
    apart = fed(claim_entry(1), *(transition_entry(t, 1) for t in ts))
    assert together.instances == apart.instances
    assert together.instances["a"].seq == 2 and together.applied == 3
    assert transitions_entry(ts[:1], epoch=1) == transition_entry(ts[0], 1)


def test_a_late_bundle_of_a_fenced_writer_is_ignored_whole() -> None:
    replayer = fed(
        claim_entry(1),
        transitions_entry([transition("a", 1)], epoch=1),
        claim_entry(2),
        transitions_entry([transition("a", 2), transition("b", 1)], epoch=1),
    )
    assert replayer.fenced == 1
    assert set(replayer.instances) == {"a"} and replayer.instances["a"].seq == 1
