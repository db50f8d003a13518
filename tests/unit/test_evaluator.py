"""decide() on hand-built inbox messages: the place-order saga forward, failing and
compensating, and the messages it must ignore or reject."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    Decision,
    DefinitionError,
    Envelope,
    Event,
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
    decide,
    replay,
)
from sagakit._journal import decode_transition, encode_transition
from services.inventory.messages import (
    OutOfStock,
    ReleaseStock,
    ReserveStock,
    StockReleased,
    StockReserved,
)
from services.orders.messages import ApproveOrder, OrderApproved, OrderRejected, RejectOrder
from services.orders.saga import OrderState, place_order
from services.payments.messages import (
    CreditLimitExceeded,
    CreditReleased,
    CreditReserved,
    ReleaseCredit,
    ReserveCredit,
)
from services.shipping.messages import ScheduleShipment, ShipmentFailed, ShipmentScheduled

SAGA_ID = "order-1"
START_ID = "start-1"
ORDER = OrderState(
    order_id="o1",
    customer_id="c1",
    product_id="p1",
    quantity=2,
    amount=300,
    address="1 Main St",
)


def start(
    state: dict[str, Any] | None = None,
    *,
    saga_id: str = SAGA_ID,
    message_id: str = START_ID,
    correlation_id: str | None = None,
    saga_type: str | None = "place-order",
    saga_version: str | None = "1",
    at_ms: int = 1_000,
) -> Incoming[Message]:
    envelope = Envelope(
        message_id=message_id,
        message_type=StartSaga.message_type,
        saga_id=saga_id,
        correlation_id=correlation_id or message_id,
        causation_id=message_id,
        saga_type=saga_type,
        saga_version=saga_version,
    )
    body = ORDER.model_dump() if state is None else state
    return Incoming(envelope, StartSaga(state=body), at_ms)


def reply(
    to: PendingCommand | str,
    message: Message,
    *,
    message_id: str | None = None,
    saga_id: str = SAGA_ID,
    at_ms: int = 2_000,
) -> Incoming[Message]:
    """A participant's reply to command `to` (or to a command id)."""
    command_id = to if isinstance(to, str) else to.message_id
    envelope = Envelope(
        message_id=message_id or f"{command_id}:reply",
        message_type=message.message_type,
        saga_id=saga_id,
        correlation_id=START_ID,
        causation_id=command_id,
    )
    return Incoming(envelope, message, at_ms)


@dataclass
class Run:
    """Feeds messages to decide() one at a time, keeping what a journal would keep."""

    saga: Saga[Any] = place_order
    instance: SagaInstance | None = None
    records: list[Any] = field(default_factory=list)
    commands: list[PendingCommand] = field(default_factory=list)
    clock: int = 1_000

    def feed(self, incoming: Incoming[Message]) -> Decision:
        decision = decide(self.saga, self.instance, incoming)
        if decision.records:
            assert decision.instance is not None
            self.instance = decision.instance
        self.records.extend(decision.records)
        self.commands.extend(decision.commands)
        return decision

    def start(self, **kw: Any) -> Decision:
        return self.feed(start(**kw))

    def answer(self, message: Message, **kw: Any) -> Decision:
        """Answer the pending command with `message`."""
        assert self.instance is not None and self.instance.pending is not None
        self.clock += 1_000
        kw.setdefault("at_ms", self.clock)
        return self.feed(reply(self.instance.pending, message, **kw))

    @property
    def pending(self) -> PendingCommand:
        assert self.instance is not None and self.instance.pending is not None
        return self.instance.pending


def credit_exceeded() -> CreditLimitExceeded:
    return CreditLimitExceeded(order_id="o1", requested=300, available=100)


def out_of_stock() -> OutOfStock:
    return OutOfStock(order_id="o1", product_id="p1", requested=2, available=0)


def shipment_failed() -> ShipmentFailed:
    return ShipmentFailed(order_id="o1", reason="no carrier")


def assert_unchanged(decision: Decision, before: SagaInstance | None) -> None:
    assert decision.records == ()
    assert decision.commands == ()
    assert decision.instance is before


# -- start --------------------------------------------------------------------------------


def test_start_sends_the_first_command_with_a_deterministic_id() -> None:
    run = Run()
    decision = run.start()
    assert decision.ignored is None and decision.rejected is None
    [command] = decision.commands
    assert command.message_id == f"{SAGA_ID}:reserve-credit:1"
    assert command.step == "reserve-credit"
    assert command.phase is Phase.FORWARD
    assert command.attempt == 1
    assert command.topic == "payments.commands"
    assert command.command == ReserveCredit(order_id="o1", customer_id="c1", amount=300)
    assert command.causation_id == START_ID

    [record] = decision.records
    assert record.seq == 1
    assert record.event == "started"
    assert record.step is None
    assert record.cause == START_ID
    assert record.cause_type == "sagakit.StartSaga"
    assert record.status is SagaStatus.RUNNING
    assert record.completed == ("create-order",)  # no command: done when the saga starts
    assert record.pending == command
    assert record.state == ORDER
    assert (record.at_ms, record.started_ms) == (1_000, 1_000)
    assert record.correlation_id == START_ID

    instance = decision.instance
    assert instance is not None
    assert instance.saga_id == SAGA_ID
    assert instance.saga_type == "place-order"
    assert instance.version == 1
    assert instance.status is SagaStatus.RUNNING
    assert instance.pending == command
    assert instance.applied == frozenset({START_ID})
    assert (instance.seq, instance.updated_ms) == (1, 1_000)


def test_start_keeps_the_clients_correlation_id() -> None:
    decision = Run().start(correlation_id="trace-77")
    assert decision.instance is not None
    assert decision.instance.correlation_id == "trace-77"
    assert decision.records[0].correlation_id == "trace-77"


def test_start_without_saga_type_or_version_headers_is_accepted() -> None:
    decision = Run().start(saga_type=None, saga_version=None)
    assert decision.rejected is None
    assert [c.step for c in decision.commands] == ["reserve-credit"]


@pytest.mark.parametrize(
    "state",
    [
        {"order_id": "o1"},
        {**ORDER.model_dump(), "quantity": "many"},
        {},
    ],
)
def test_start_with_invalid_state_is_rejected(state: dict[str, Any]) -> None:
    decision = Run().start(state=state)
    assert decision.rejected is not None
    assert "OrderState" in decision.rejected
    assert decision.records == () and decision.commands == ()
    assert decision.instance is None


def test_start_for_another_saga_type_is_rejected() -> None:
    decision = Run().start(saga_type="refund-order")
    assert decision.rejected is not None and "'refund-order'" in decision.rejected
    assert decision.records == () and decision.commands == ()


def test_start_for_another_version_is_rejected() -> None:
    decision = Run().start(saga_version="2")
    assert decision.rejected is not None and "version 2" in decision.rejected
    assert decision.records == () and decision.commands == ()


def test_a_second_start_with_the_same_state_is_ignored() -> None:
    run = Run()
    run.start()
    before = run.instance
    decision = run.start(message_id="start-2", state=ORDER.model_dump())
    assert decision.ignored is not None and "already started" in decision.ignored
    assert decision.rejected is None
    assert_unchanged(decision, before)


def test_a_second_start_with_another_state_is_a_conflict_not_silence() -> None:
    run = Run()
    run.start()
    before = run.instance
    decision = decide(
        run.saga,
        run.instance,
        start(message_id="start-2", state={**ORDER.model_dump(), "amount": 1}),
    )
    assert decision.rejected_as == "StartConflict"
    assert decision.rejected is not None and "started with another state" in decision.rejected
    assert decision.records == () and decision.commands == ()
    assert run.instance is before
    # the journal keeps what tells them apart: the conflict is found after a replay too
    rebuilt = replay(decode_transition(encode_transition(t), run.saga) for t in run.records)
    again = decide(
        run.saga,
        rebuilt[run.instance.saga_id],
        start(message_id="start-3", state={**ORDER.model_dump(), "amount": 2}),
    )
    assert again.rejected_as == "StartConflict"


def test_redelivered_start_is_ignored_as_a_duplicate() -> None:
    run = Run()
    run.start()
    before = run.instance
    decision = run.start()
    assert decision.ignored is not None and "duplicate" in decision.ignored
    assert_unchanged(decision, before)


# -- forward --------------------------------------------------------------------------------


def test_success_path_completes_with_state_updates_applied() -> None:
    run = Run()
    run.start()
    run.answer(CreditReserved(order_id="o1"))
    run.answer(StockReserved(order_id="o1"))
    run.answer(ShipmentScheduled(order_id="o1", shipment_id="ship-7"))
    last = run.answer(OrderApproved(order_id="o1"))

    assert last.commands == ()
    instance = run.instance
    assert instance is not None
    assert instance.status is SagaStatus.COMPLETED
    assert instance.pending is None
    assert instance.failure is None
    assert instance.completed == (
        "create-order",
        "reserve-credit",
        "reserve-stock",
        "schedule-shipment",
        "approve-order",
    )
    assert instance.compensated == ()
    assert isinstance(instance.state, OrderState)
    assert instance.state.shipment_id == "ship-7"
    assert instance.state == ORDER.model_copy(update={"shipment_id": "ship-7"})

    assert [(c.message_id, c.topic, c.command) for c in run.commands] == [
        (
            f"{SAGA_ID}:reserve-credit:1",
            "payments.commands",
            ReserveCredit(order_id="o1", customer_id="c1", amount=300),
        ),
        (
            f"{SAGA_ID}:reserve-stock:1",
            "inventory.commands",
            ReserveStock(order_id="o1", product_id="p1", quantity=2),
        ),
        (
            f"{SAGA_ID}:schedule-shipment:1",
            "shipping.commands",
            ScheduleShipment(order_id="o1", address="1 Main St"),
        ),
        (f"{SAGA_ID}:approve-order:1", "orders.commands", ApproveOrder(order_id="o1")),
    ]
    # each command is caused by the message that led to it
    causes = [START_ID] + [f"{c.message_id}:reply" for c in run.commands[:-1]]
    assert [c.causation_id for c in run.commands] == causes
    assert [r.seq for r in run.records] == [1, 2, 3, 4, 5]
    assert [r.event for r in run.records] == ["started"] + ["step-succeeded"] * 4
    assert [r.step for r in run.records] == [
        None,
        "reserve-credit",
        "reserve-stock",
        "schedule-shipment",
        "approve-order",
    ]
    assert run.records[-1].status is SagaStatus.COMPLETED
    assert instance.started_ms == 1_000
    assert instance.updated_ms == run.records[-1].at_ms == 5_000
    replies = {f"{c.message_id}:reply" for c in run.commands}
    assert instance.applied == frozenset({START_ID, *replies})


# -- failure and compensation ------------------------------------------------------------

FORWARD_REPLIES: list[Message] = [
    CreditReserved(order_id="o1"),
    StockReserved(order_id="o1"),
    ShipmentScheduled(order_id="o1", shipment_id="ship-7"),
]


@pytest.mark.parametrize(
    ("failing_step", "failure", "compensations"),
    [
        (
            "reserve-credit",
            credit_exceeded(),
            [("create-order", "orders.commands", OrderRejected(order_id="o1"))],
        ),
        (
            "reserve-stock",
            out_of_stock(),
            [
                ("reserve-credit", "payments.commands", CreditReleased(order_id="o1")),
                ("create-order", "orders.commands", OrderRejected(order_id="o1")),
            ],
        ),
        (
            "schedule-shipment",
            shipment_failed(),
            [
                ("reserve-stock", "inventory.commands", StockReleased(order_id="o1")),
                ("reserve-credit", "payments.commands", CreditReleased(order_id="o1")),
                ("create-order", "orders.commands", OrderRejected(order_id="o1")),
            ],
        ),
    ],
)
def test_failure_compensates_completed_steps_in_reverse_order(
    failing_step: str, failure: Any, compensations: list[tuple[str, str, Reply]]
) -> None:
    run = Run()
    run.start()
    while run.pending.step != failing_step:
        run.answer(FORWARD_REPLIES[len(run.commands) - 1])
    forward = len(run.commands)
    failed = run.answer(failure)

    reason = failure.reason
    assert run.instance is not None
    assert run.instance.status is SagaStatus.COMPENSATING
    assert run.instance.failure == f"{failing_step}: {failure.message_type}"
    assert failed.records[0].event == "step-failed"
    assert failed.records[0].step == failing_step
    assert run.instance.state.rejection_reason == reason  # on_failure ran

    for name, topic, answer in compensations:
        command = run.pending
        assert command.step == name
        assert command.phase is Phase.COMPENSATE
        assert command.message_id == f"{SAGA_ID}:{name}:c1"
        assert command.topic == topic
        decision = run.answer(answer)
        assert decision.records[0].event == "step-compensated"
        assert decision.records[0].step == name

    instance = run.instance
    assert instance.status is SagaStatus.COMPENSATED
    assert instance.pending is None
    assert instance.compensated == tuple(name for name, _, _ in compensations)
    assert failing_step not in instance.completed
    assert instance.completed == tuple(reversed(instance.compensated))
    assert instance.failure == f"{failing_step}: {failure.message_type}"

    sent = [c.command for c in run.commands[forward:]]
    expected = {
        "reserve-stock": ReleaseStock(order_id="o1", product_id="p1"),
        "reserve-credit": ReleaseCredit(order_id="o1", customer_id="c1"),
        "create-order": RejectOrder(order_id="o1", reason=reason),
    }
    assert sent == [expected[name] for name, _, _ in compensations]
    assert run.records[-1].status is SagaStatus.COMPENSATED
    assert replay(run.records) == {SAGA_ID: instance}


def test_shipping_failure_releases_stock_then_credit_then_rejects_the_order() -> None:
    run = Run()
    run.start()
    for message in FORWARD_REPLIES[:2]:
        run.answer(message)
    run.answer(shipment_failed())
    run.answer(StockReleased(order_id="o1"))
    run.answer(CreditReleased(order_id="o1"))
    run.answer(OrderRejected(order_id="o1"))
    assert [type(c.command) for c in run.commands] == [
        ReserveCredit,
        ReserveStock,
        ScheduleShipment,
        ReleaseStock,
        ReleaseCredit,
        RejectOrder,
    ]
    assert run.commands[-1].command == RejectOrder(order_id="o1", reason="no carrier")
    assert run.instance is not None and run.instance.status is SagaStatus.COMPENSATED


def test_approve_order_cannot_fail_so_other_replies_are_rejected() -> None:
    run = Run()
    run.start()
    for message in FORWARD_REPLIES:
        run.answer(message)
    assert run.pending.step == "approve-order"
    before = run.instance
    decision = run.answer(OrderRejected(order_id="o1"))
    assert decision.rejected is not None
    assert "'approve-order'" in decision.rejected and "orders.OrderApproved" in decision.rejected
    assert_unchanged(decision, before)


# -- messages that change nothing --------------------------------------------------------


def test_duplicate_reply_is_ignored() -> None:
    run = Run()
    run.start()
    credit = reply(run.pending, CreditReserved(order_id="o1"))
    run.feed(credit)
    before = run.instance
    assert before is not None and before.pending is not None
    assert before.pending.step == "reserve-stock"
    decision = run.feed(credit)
    assert decision.ignored is not None and credit.envelope.message_id in decision.ignored
    assert decision.rejected is None
    assert_unchanged(decision, before)


def test_reply_whose_causation_is_not_the_pending_command_is_ignored() -> None:
    run = Run()
    run.start()
    first = run.pending
    run.answer(CreditReserved(order_id="o1"))
    before = run.instance
    # a late second reply to the first command, with a fresh message id
    stale = reply(first, CreditReserved(order_id="o1"), message_id="late-reply")
    decision = run.feed(stale)
    assert decision.ignored is not None
    assert first.message_id in decision.ignored
    assert f"{SAGA_ID}:reserve-stock:1" in decision.ignored  # what it awaits
    assert decision.rejected is None
    assert_unchanged(decision, before)
    # a reply to a command that was never sent
    decision = run.feed(reply("order-1:nope:1", StockReserved(order_id="o1")))
    assert decision.ignored is not None
    assert_unchanged(decision, before)


def test_reply_after_the_saga_ended_is_ignored() -> None:
    run = Run()
    run.start()
    run.answer(credit_exceeded())
    last = run.pending
    run.answer(OrderRejected(order_id="o1"))
    before = run.instance
    assert before is not None and before.status is SagaStatus.COMPENSATED
    decision = run.feed(reply(last, OrderRejected(order_id="o1"), message_id="again"))
    assert decision.ignored is not None and "awaiting nothing" in decision.ignored
    assert_unchanged(decision, before)


def test_unexpected_reply_type_is_rejected() -> None:
    run = Run()
    run.start()
    before = run.instance
    decision = run.answer(StockReserved(order_id="o1"))
    assert decision.rejected is not None
    assert "'reserve-credit'" in decision.rejected
    assert "inventory.StockReserved" in decision.rejected
    assert "payments.CreditLimitExceeded, payments.CreditReserved" in decision.rejected
    assert decision.ignored is None
    assert_unchanged(decision, before)


def test_reply_for_an_unknown_saga_is_rejected() -> None:
    decision = decide(
        place_order,
        None,
        reply(f"{SAGA_ID}:reserve-credit:1", CreditReserved(order_id="o1")),
    )
    assert decision.rejected is not None
    assert SAGA_ID in decision.rejected and "unknown saga" in decision.rejected
    assert decision.records == () and decision.commands == () and decision.instance is None


class Stray(Event, type="etest.Stray"):
    order_id: str


class Poke(Command, type="etest.Poke"):
    order_id: str


@pytest.mark.parametrize("message", [Stray(order_id="o1"), Poke(order_id="o1")])
def test_messages_that_are_neither_start_nor_reply_are_rejected(message: Message) -> None:
    run = Run()
    run.start()
    before = run.instance
    decision = run.feed(reply("x", message, message_id="m-9"))
    assert decision.rejected is not None and message.message_type in decision.rejected
    assert_unchanged(decision, before)


# -- purity --------------------------------------------------------------------------------


def test_decide_does_not_mutate_its_input_instance() -> None:
    run = Run()
    run.start()
    inputs = [
        CreditReserved(order_id="o1"),
        StockReserved(order_id="o1"),
        shipment_failed(),
        StockReleased(order_id="o1"),
        CreditReleased(order_id="o1"),
        OrderRejected(order_id="o1"),
    ]
    for message in inputs:
        before = run.instance
        assert before is not None
        snapshot = copy.deepcopy(before)
        state_dump = before.state.model_dump()
        incoming = reply(run.pending, message)
        first = decide(place_order, before, incoming)
        again = decide(place_order, before, incoming)
        assert before == snapshot
        assert before.state.model_dump() == state_dump
        assert first == again  # same input, same decision
        assert first.instance is not before
        run.feed(incoming)
    assert run.instance is not None and run.instance.status is SagaStatus.COMPENSATED


# -- deterministic command ids are unique --------------------------------------------------


class Hold(Command, type="etest.Hold"):
    key: str


class Held(Reply, type="etest.Held"):
    key: str


class Unhold(Command, type="etest.Unhold"):
    key: str


class NotHeld(Reply, type="etest.NotHeld"):
    key: str


class Key(BaseModel):
    key: str


def test_command_ids_are_unique_even_for_steps_named_compensate_something() -> None:
    try:
        saga = Saga(
            "hold",
            state=Key,
            steps=[
                Step("x", invoke=Hold, on_reply={Held: None}, compensate=Unhold),
                Step("compensate-x", invoke=Hold, on_reply={Held: None}, failures=[NotHeld]),
            ],
        )
    except DefinitionError:
        return  # refusing the ambiguous name is a fix too
    run = Run(saga=saga)
    run.start(state={"key": "k"}, saga_type="hold")
    run.answer(Held(key="k"))
    run.answer(NotHeld(key="k"))
    run.answer(Held(key="k"))  # the compensation's reply; ids follow the participant's rule
    ids = [c.message_id for c in run.commands]
    assert len(ids) == 3
    assert len(set(ids)) == len(ids), ids
    assert run.instance is not None and run.instance.status is SagaStatus.COMPENSATED
