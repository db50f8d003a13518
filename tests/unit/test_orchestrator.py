"""The orchestrator on the in-memory transport: dedupe, restore, re-send, dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    BusinessFailure,
    Command,
    HandlerContext,
    MemoryBroker,
    MemoryStore,
    MemoryTransport,
    Orchestrator,
    OutgoingRecord,
    Reply,
    RetryPolicy,
    Saga,
    SagaClient,
    SagaStatus,
    Service,
    Step,
    Transition,
    TransportError,
)
from sagakit._journal import decode_transition
from sagakit.testing import SagaTestEnvironment
from sagakit.transport import Delivered

pytestmark = pytest.mark.anyio


class Book(Command, type="otest.Book"):
    trip_id: str
    seats: int


class Booked(Reply, type="otest.Booked"):
    booking: str


class SoldOut(Reply, type="otest.SoldOut"):
    reason: str


class Cancel(Command, type="otest.Cancel"):
    trip_id: str


class Cancelled(Reply, type="otest.Cancelled"):
    pass


class Charge(Command, type="otest.Charge"):
    trip_id: str


class Charged(Reply, type="otest.Charged"):
    pass


class Declined(Reply, type="otest.Declined"):
    pass


class Trip(BaseModel):
    trip_id: str
    seats: int
    booking: str | None = None


def remember(state: Trip, reply: Booked) -> Trip:
    return state.model_copy(update={"booking": reply.booking})


trip = Saga(
    "trip",
    state=Trip,
    steps=[
        Step(
            "book", invoke=Book, on_reply={Booked: remember}, failures=[SoldOut], compensate=Cancel
        ),
        Step("charge", invoke=Charge, on_reply={Charged: None}, failures=[Declined]),
    ],
)


def trip_services() -> tuple[Service[None], Service[None], dict[str, int]]:
    calls: dict[str, int] = {"book": 0, "cancel": 0, "charge": 0}
    hotel: Service[None] = Service("otest", MemoryStore(), partitions=4)
    # One participant handles all three commands (topic otest.commands).

    @hotel.handles(Book)
    def book(cmd: Book, ctx: HandlerContext[None]) -> Booked:
        calls["book"] += 1
        if cmd.seats > 10:
            raise BusinessFailure(SoldOut(reason="no seats"))
        return Booked(booking=f"B-{cmd.trip_id}")

    @hotel.handles(Cancel)
    def cancel(cmd: Cancel, ctx: HandlerContext[None]) -> Cancelled:
        calls["cancel"] += 1
        return Cancelled()

    @hotel.handles(Charge)
    def charge(cmd: Charge, ctx: HandlerContext[None]) -> Reply:
        calls["charge"] += 1
        if cmd.trip_id.startswith("broke"):
            raise BusinessFailure(Declined())
        return Charged()

    return hotel, hotel, calls


async def test_saga_completes_and_state_carries_reply_data() -> None:
    service, _, calls = trip_services()
    async with SagaTestEnvironment([trip], [service]) as env:
        await env.start(trip, "t1", Trip(trip_id="t1", seats=2))
        instance = await env.wait_until_ended("t1")
    assert instance.status is SagaStatus.COMPLETED
    assert instance.completed == ("book", "charge")
    assert isinstance(instance.state, Trip) and instance.state.booking == "B-t1"
    assert calls == {"book": 1, "cancel": 0, "charge": 1}


async def test_failure_compensates_completed_steps() -> None:
    service, _, calls = trip_services()
    async with SagaTestEnvironment([trip], [service]) as env:
        await env.start(trip, "broke-1", Trip(trip_id="broke-1", seats=2))
        await env.start(trip, "full-1", Trip(trip_id="full-1", seats=50))
        broke = await env.wait_until_ended("broke-1")
        full = await env.wait_until_ended("full-1")
    assert broke.status is SagaStatus.COMPENSATED
    assert broke.compensated == ("book",)
    assert broke.failure == "charge: otest.Declined"
    assert full.status is SagaStatus.COMPENSATED
    assert full.compensated == ()  # nothing was completed, nothing to undo
    assert calls == {"book": 2, "cancel": 1, "charge": 1}


async def test_redelivered_start_and_reply_change_nothing() -> None:
    service, _, calls = trip_services()
    async with SagaTestEnvironment([trip], [service]) as env:
        await env.start(trip, "t2", Trip(trip_id="t2", seats=1))
        await env.wait_until_ended("t2")
        journal = list(env.broker.records("trip.journal"))
        commands = list(env.broker.records("otest.commands"))
        replies = [r for r in env.broker.records("trip.inbox")]
        orchestrator = env.orchestrators["trip"]
        before = orchestrator.stats.duplicates

        # deliver every inbox record again: the start and both replies
        await env.transport.send(
            [OutgoingRecord(r.topic, r.key, r.value, r.headers) for r in replies]
        )
        await env.broker.wait_until(lambda: orchestrator.stats.duplicates >= before + len(replies))
        assert env.broker.records("trip.journal") == journal
        assert env.broker.records("otest.commands") == commands
        assert env.dead_letters("trip.inbox") == []
    assert calls["book"] == 1 and calls["charge"] == 1


def decoded_journal(broker: MemoryBroker) -> list[Transition]:
    """Every transition in the trip journal, in order."""
    found: list[Transition] = []
    for r in broker.records("trip.journal"):
        kind = dict(r.headers)["journal-kind"]
        if kind not in (b"transition", b"transitions") or r.value is None:
            continue  # a claim, or a snapshot
        lines = r.value.split(b"\n") if kind == b"transitions" else [r.value]
        found.extend(decode_transition(line, trip) for line in lines)
    return found


class FailingSends(MemoryTransport):
    """Fails the first send that carries a record for `topic` (a crash after the journal append)."""

    def __init__(self, broker: MemoryBroker, topic: str) -> None:
        super().__init__(broker)
        self.topic = topic
        self.failed = False

    async def send(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        if not self.failed and any(r.topic == self.topic for r in records):
            self.failed = True
            raise TransportError("simulated crash before the commands were sent")
        return await super().send(records)


async def test_a_failed_send_is_not_lost_the_partition_is_restored_and_the_command_resent() -> None:
    broker = MemoryBroker()
    flaky = FailingSends(broker, "otest.commands")
    service, _, calls = trip_services()
    ended = anyio.Event()
    orchestrator = Orchestrator(
        trip,
        flaky,
        partitions=4,
        on_transition=lambda t: ended.set() if t.status.terminal else None,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await tg.start(service.run, MemoryTransport(broker))
        await orchestrator.wait_ready()
        await SagaClient(flaky).start(trip, "t3", Trip(trip_id="t3", seats=1))
        with anyio.fail_after(5):
            await ended.wait()
        instance = orchestrator.instance("t3")
        tg.cancel_scope.cancel()
    assert flaky.failed  # the first send of the command did fail
    assert orchestrator.stats.failed_batches == 1
    # the decision was journaled before the send failed; the restore re-sent its command,
    # the start was read again and recognised as a duplicate
    assert instance is not None and instance.status is SagaStatus.COMPLETED
    assert calls["book"] == 1
    starts = [t for t in decoded_journal(broker) if t.event == "started"]
    assert len(starts) == 1


async def test_bad_records_go_to_the_dlq_and_consumption_goes_on() -> None:
    service, _, _ = trip_services()
    async with SagaTestEnvironment([trip], [service]) as env:
        good_headers = (
            SagaClient(env.transport).start_record(trip, "t4", Trip(trip_id="t4", seats=1)).headers
        )
        await env.transport.send(
            [
                OutgoingRecord("trip.inbox", b"junk", b"\xff not json", good_headers),
                OutgoingRecord("trip.inbox", b"nohdr", b"{}", ()),
            ]
        )
        await env.start(trip, "t4", Trip(trip_id="t4", seats=1))
        instance = await env.wait_until_ended("t4")
        dead = env.dead_letters("trip.inbox")
    assert instance.status is SagaStatus.COMPLETED
    assert len(dead) == 2
    for record in dead:
        headers = dict(record.headers)
        assert headers["original-topic"] == b"trip.inbox"
        assert headers["error-type"] == b"DecodeError"
        assert int(headers["original-offset"]) >= 0
        assert headers["error-message"]
    assert {r.value for r in dead} == {b"\xff not json", b"{}"}


async def test_unexpected_reply_type_is_dead_lettered_with_reason() -> None:
    class Stray(Reply, type="otest.Stray"):
        pass

    strays: Service[None] = Service("otest", MemoryStore(), partitions=4)

    @strays.handles(Book)
    def book(cmd: Book, ctx: HandlerContext[None]) -> Reply:
        return Stray()

    async with SagaTestEnvironment([trip], [strays]) as env:
        await env.start(trip, "t5", Trip(trip_id="t5", seats=1))
        await env.broker.wait_until(lambda: bool(env.dead_letters("trip.inbox")))
        [dead] = env.dead_letters("trip.inbox")
        instance = env.instance("t5")
    headers: dict[str, Any] = dict(dead.headers)
    assert headers["error-type"] == b"Rejected"
    assert b"does not expect otest.Stray" in headers["error-message"]
    assert instance is not None and instance.status is SagaStatus.RUNNING


class Ping(Command, type="otest.Ping"):
    trip_id: str


class Pong(Reply, type="otest.Pong"):
    pass


impatient = Saga(
    "impatient",
    state=Trip,
    steps=[
        Step("book", invoke=Book, on_reply={Booked: remember}, compensate=Cancel),
        Step(
            "ping",
            invoke=Ping,
            on_reply={Pong: None},
            to="nobody",  # no participant answers
            retry=RetryPolicy(max_attempts=3, timeout_s=30, initial_backoff_s=5),
        ),
    ],
)


OLDEST = "sagakit_saga_oldest_running_seconds"


async def test_unanswered_commands_time_out_are_retried_and_then_parked_not_compensated() -> None:
    # ping has no compensation: a ping that may have taken effect cannot be undone, so
    # undoing the booking before it would leave a half-done trip; a person decides
    service, _, calls = trip_services()
    async with SagaTestEnvironment([impatient], [service]) as env:
        await env.start(impatient, "t6", Trip(trip_id="t6", seats=1))
        await env.advance(29)  # virtual time: nothing is due yet
        waiting = env.instance("t6")
        registry = env.orchestrators["impatient"].metrics.registry
        labels = {"saga_type": "impatient", "saga_version": "1"}
        oldest_while_running = registry.get_sample_value(OLDEST, labels)
        await env.advance(3600)  # three 30 s timeouts and two ~5 s back-offs, in order
        instance = await env.wait_until_ended("t6")
        pings = [dict(r.headers)["message-id"] for r in env.broker.records("nobody.commands")]
        timers_fired = env.orchestrators["impatient"].stats.timers_fired
        parked_now = registry.get_sample_value("sagakit_sagas_needing_attention", labels)
        oldest_once_parked = registry.get_sample_value(OLDEST, labels)
    # what the alerts of deploy/prometheus-rules.yaml watch
    assert oldest_while_running == pytest.approx(29, abs=1)
    assert (parked_now, oldest_once_parked) == (1, 0)
    assert waiting is not None and waiting.status is SagaStatus.RUNNING
    assert waiting.pending is not None and waiting.pending.attempt == 1
    assert instance.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert pings == [b"t6:ping:1", b"t6:ping:2", b"t6:ping:3"]
    assert instance.failure is not None and "gave up after 3 attempt(s)" in instance.failure
    assert "may have taken effect and has no compensation" in instance.failure
    assert instance.compensated == ()
    assert calls["cancel"] == 0
    assert timers_fired >= 5  # three timeouts and two back-offs
