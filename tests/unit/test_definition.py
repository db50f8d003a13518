"""Build-time validation of saga definitions: every mistake is a DefinitionError naming
the saga and the step, raised when the `Saga` is built."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import Command, DefinitionError, Reply, RetryPolicy, Saga, SagaError, Step
from services.orders.messages import ApproveOrder, RejectOrder
from services.orders.saga import OrderState, place_order
from services.payments.messages import (
    CreditLimitExceeded,
    CreditReserved,
    ReleaseCredit,
    ReserveCredit,
)


class Account(BaseModel):
    order_id: str
    customer_id: str
    amount: int


class Pay(Command, type="dtest.Pay"):
    order_id: str
    amount: int


class Refund(Command, type="dtest.Refund"):
    order_id: str


class Notify(Command, type="mail.Notify"):
    order_id: str
    note: str = "hello"


class Charge(Command, type="dtest.Charge"):
    order_id: str
    card_number: str


class Paid(Reply, type="dtest.Paid"):
    order_id: str


class Declined(Reply, type="dtest.Declined"):
    order_id: str


class Refunded(Reply, type="dtest.Refunded"):
    order_id: str


class Bare(Command, type="Bare"):
    order_id: str


class Shouty(Command, type="Billing.Shouty"):
    order_id: str


class UnregisteredCommand(Command):
    order_id: str


class UnregisteredReply(Reply):
    order_id: str


def build_pay(state: Account) -> Pay:
    return Pay(order_id=state.order_id, amount=state.amount * 2)


def build_no_annotation(state):  # type: ignore[no-untyped-def]
    return Pay(order_id=state.order_id, amount=state.amount)


def build_unresolvable(state: Account) -> NoSuchCommand:  # type: ignore[name-defined]  # noqa: F821
    raise AssertionError("never called")


def build_not_a_command(state: Account) -> Paid:
    raise AssertionError("never called")


def remote(
    name: str,
    *,
    compensate: Any = Refund,
    fail: bool = True,
    pivot: bool = False,
    **kw: Any,
) -> Step[Account]:
    """A step that sends Pay, succeeds with Paid, may fail with Declined."""
    return Step(
        name,
        invoke=kw.pop("invoke", Pay),
        on_reply=kw.pop("on_reply", {Paid: None}),
        failures=[Declined] if fail else [],
        compensate=compensate,
        pivot=pivot,
        **kw,
    )


def saga(*steps: Any, name: str = "pay-saga", state: Any = Account) -> Saga[Account]:
    return Saga(name, version=1, state=state, steps=list(steps))


def definition_error(*steps: Any, **kw: Any) -> str:
    with pytest.raises(DefinitionError) as info:
        saga(*steps, **kw)
    return str(info.value)


def assert_names(message: str, step: str, saga_name: str = "pay-saga") -> None:
    assert f"step {step!r}" in message, message
    assert f"saga {saga_name!r}" in message, message


# -- a valid definition -----------------------------------------------------------------


def test_a_valid_definition_builds_and_resolves_its_steps() -> None:
    s = saga(
        Step("open", compensate=Refund),
        remote("pay"),
        remote("notify", invoke=Notify, compensate=None, fail=False),
    )
    assert [r.name for r in s.resolved()] == ["open", "pay", "notify"]
    assert [r.index for r in s.resolved()] == [0, 1, 2]
    assert s.step("open").action is None
    assert s.step("open").compensation is not None
    assert s.step("pay").action is not None and s.step("pay").action.command is Pay
    assert s.step("pay").failures == frozenset({Declined})
    assert s.inbox_topic == "pay-saga.inbox"
    assert s.journal_topic == "pay-saga.journal"
    assert s.command_topics() == frozenset({"dtest.commands", "mail.commands"})


def test_looking_up_an_unknown_step_names_it() -> None:
    s = saga(remote("pay"))
    with pytest.raises(DefinitionError) as info:
        s.step("refund")
    assert "'refund'" in str(info.value) and "'pay-saga'" in str(info.value)


def test_definition_error_is_a_saga_error() -> None:
    assert issubclass(DefinitionError, SagaError)


# -- names and shape -----------------------------------------------------------------


def test_duplicate_step_names() -> None:
    message = definition_error(remote("pay"), remote("pay", fail=False))
    assert_names(message, "pay")
    assert "duplicate" in message


@pytest.mark.parametrize("name", ["Pay-Saga", "pay saga", "-pay", "", "pay/saga", "päy"])
def test_bad_saga_names(name: str) -> None:
    message = definition_error(remote("pay"), name=name)
    assert f"saga name {name!r}" in message
    assert "lower-case" in message


def test_saga_name_that_is_not_a_string() -> None:
    with pytest.raises(DefinitionError) as info:
        Saga(42, state=Account, steps=[remote("pay")])  # type: ignore[arg-type]
    assert "saga name 42" in str(info.value)


@pytest.mark.parametrize("name", ["Pay", "pay now", "_pay", "pay:1", "pay/1"])
def test_bad_step_names(name: str) -> None:
    message = definition_error(remote("ok", fail=False), remote(name))
    assert_names(message, name)
    assert "lower-case" in message


def test_empty_step_name_is_named_as_a_step() -> None:
    message = definition_error(remote(""))
    assert_names(message, "")


def test_step_name_that_is_not_a_string() -> None:
    message = definition_error(Step(7, compensate=Refund))  # type: ignore[arg-type]
    assert "7" in message and "'pay-saga'" in message


@pytest.mark.parametrize("version", [0, -1, "1", 1.5])
def test_version_must_be_a_positive_integer(version: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        Saga("pay-saga", version=version, state=Account, steps=[remote("pay")])
    assert "saga 'pay-saga'" in str(info.value) and "version" in str(info.value)


@pytest.mark.parametrize("state", [dict, Account(order_id="o", customer_id="c", amount=1), None])
def test_state_must_be_a_pydantic_model_class(state: Any) -> None:
    message = definition_error(remote("pay"), state=state)
    assert "saga 'pay-saga'" in message and "pydantic model class" in message


def test_a_saga_needs_steps() -> None:
    message = definition_error()
    assert "saga 'pay-saga'" in message and "no steps" in message


@pytest.mark.parametrize("entry", ["pay", {"name": "pay"}, None, Pay])
def test_entries_that_are_not_steps(entry: Any) -> None:
    message = definition_error(remote("pay"), entry)
    assert "saga 'pay-saga'" in message
    assert f"steps[1] is {entry!r}, not a Step" in message


def test_step_with_neither_invoke_nor_compensate() -> None:
    message = definition_error(remote("pay", fail=False), Step("idle"))
    assert_names(message, "idle")
    assert "neither invoke nor compensate" in message


def test_invoke_without_a_success_reply() -> None:
    message = definition_error(remote("pay", on_reply={}))
    assert_names(message, "pay")
    assert "dtest.Pay" in message and "on_reply" in message


def test_replies_declared_on_a_step_that_sends_nothing() -> None:
    message = definition_error(Step("open", compensate=Refund, failures=[Declined]))
    assert_names(message, "open")
    assert "no invoke" in message


def test_on_failure_without_failures() -> None:
    message = definition_error(remote("pay", fail=False, on_failure=lambda s, r: s))
    assert_names(message, "pay")
    assert "on_failure" in message


def test_state_updates_must_be_callable() -> None:
    message = definition_error(remote("pay", on_reply={Paid: "not callable"}))
    assert_names(message, "pay")
    assert "on_reply[Paid] is not callable" in message
    message = definition_error(remote("pay", on_failure="nope"))
    assert_names(message, "pay")
    assert "on_failure is not callable" in message


# -- message types ---------------------------------------------------------------------


def test_unregistered_command_as_invoke() -> None:
    message = definition_error(remote("pay", invoke=UnregisteredCommand))
    assert_names(message, "pay")
    assert "UnregisteredCommand is not registered" in message
    assert 'type="<service>.UnregisteredCommand"' in message


def test_unregistered_command_as_compensate() -> None:
    message = definition_error(remote("pay", compensate=UnregisteredCommand))
    assert_names(message, "pay")
    assert "UnregisteredCommand is not registered" in message


def test_subclass_of_a_registered_command_without_type_is_unregistered() -> None:
    class MorePay(Pay):
        pass

    assert MorePay.message_type == ""
    message = definition_error(remote("pay", invoke=MorePay))
    assert_names(message, "pay")
    assert "MorePay is not registered" in message


def test_unregistered_success_reply() -> None:
    message = definition_error(remote("pay", on_reply={UnregisteredReply: None}))
    assert_names(message, "pay")
    assert "reply" in message and "UnregisteredReply is not registered" in message


def test_unregistered_failure_reply() -> None:
    step = Step("pay", invoke=Pay, on_reply={Paid: None}, failures=[UnregisteredReply])
    message = definition_error(step)
    assert_names(message, "pay")
    assert "UnregisteredReply is not registered" in message


def test_reply_that_is_not_a_reply_model() -> None:
    message = definition_error(remote("pay", on_reply={Refund: None}))
    assert_names(message, "pay")
    assert "is not a Reply model" in message


def test_reply_listed_as_success_and_failure() -> None:
    step = Step("pay", invoke=Pay, on_reply={Paid: None, Declined: None}, failures=[Declined])
    message = definition_error(step)
    assert_names(message, "pay")
    assert "dtest.Declined listed both as success and as failure" in message


def test_invoke_with_a_reply_class() -> None:
    message = definition_error(remote("pay", invoke=Paid))
    assert_names(message, "pay")
    assert "Paid, which is not a Command" in message


def test_invoke_that_is_neither_class_nor_function() -> None:
    message = definition_error(remote("pay", invoke="dtest.Pay"))
    assert_names(message, "pay")
    assert "invoke must be a Command class or a function" in message


# -- command builders -------------------------------------------------------------------


def test_lambda_as_invoke_needs_a_return_annotation() -> None:
    message = definition_error(
        remote("pay", invoke=lambda s: Pay(order_id=s.order_id, amount=s.amount))
    )
    assert_names(message, "pay")
    assert "needs a return annotation" in message and "lambda" in message


def test_lambda_as_compensate_needs_a_return_annotation() -> None:
    message = definition_error(remote("pay", compensate=lambda s: Refund(order_id=s.order_id)))
    assert_names(message, "pay")
    assert "compensate function" in message and "needs a return annotation" in message


def test_function_without_return_annotation() -> None:
    message = definition_error(remote("pay", invoke=build_no_annotation))
    assert_names(message, "pay")
    assert "build_no_annotation" in message and "needs a return annotation" in message


def test_function_with_unresolvable_annotation() -> None:
    message = definition_error(remote("pay", invoke=build_unresolvable))
    assert_names(message, "pay")
    assert "cannot read the annotations of invoke" in message and "NoSuchCommand" in message


def test_function_returning_something_that_is_not_a_command() -> None:
    message = definition_error(remote("pay", invoke=build_not_a_command))
    assert_names(message, "pay")
    assert "Paid, which is not a Command" in message


def test_annotated_function_is_used_as_the_builder() -> None:
    s = saga(remote("pay", invoke=build_pay))
    action = s.step("pay").action
    assert action is not None
    assert action.command is Pay
    assert action.topic == "dtest.commands"
    built = action.build(Account(order_id="o1", customer_id="c1", amount=21))
    assert built == Pay(order_id="o1", amount=42)


def test_command_class_is_built_from_the_state_fields() -> None:
    s = saga(remote("pay"), remote("notify", invoke=Notify, fail=False, compensate=None))
    state = Account(order_id="o1", customer_id="c1", amount=5)
    pay = s.step("pay").action
    notify = s.step("notify").action
    assert pay is not None and notify is not None
    assert pay.build(state) == Pay(order_id="o1", amount=5)
    # fields with defaults need not be in the state
    assert notify.build(state) == Notify(order_id="o1", note="hello")


def test_command_class_built_from_a_state_that_lacks_a_required_field() -> None:
    message = definition_error(remote("pay", invoke=Charge))
    assert_names(message, "pay")
    assert "Charge is built from the state" in message
    assert "Account has no field card_number" in message


def test_compensation_class_built_from_a_state_that_lacks_a_required_field() -> None:
    message = definition_error(remote("pay", compensate=Charge))
    assert_names(message, "pay")
    assert "no field card_number" in message


# -- compensation and pivot rules ---------------------------------------------------------


def test_step_without_compensation_followed_by_a_step_that_can_fail() -> None:
    message = definition_error(
        remote("reserve", compensate=None, fail=False),
        remote("middle", fail=False),
        remote("charge"),
    )
    assert_names(message, "reserve")
    assert "no compensation" in message and "'charge'" in message


def test_step_without_compensation_that_can_fail_itself_is_allowed_last() -> None:
    s = saga(remote("reserve"), remote("charge", compensate=None))
    assert s.step("charge").compensation is None


def test_step_without_compensation_followed_only_by_steps_that_cannot_fail() -> None:
    s = saga(
        remote("reserve"),
        remote("charge", compensate=None),
        remote("approve", compensate=None, fail=False),
        remote("notify", invoke=Notify, compensate=None, fail=False),
    )
    assert [r.name for r in s.resolved()] == ["reserve", "charge", "approve", "notify"]


def test_local_step_without_invoke_may_precede_a_failing_step() -> None:
    s = saga(Step("open", compensate=Refund), remote("pay", compensate=None))
    assert s.step("open").action is None


def test_two_pivots() -> None:
    message = definition_error(
        remote("reserve"),
        remote("charge", pivot=True, compensate=None, fail=False),
        remote("ship", pivot=True, compensate=None, fail=False),
    )
    assert_names(message, "ship")
    assert "second pivot" in message and "'charge'" in message


def test_pivot_must_send_a_command() -> None:
    message = definition_error(Step("open", compensate=Refund, pivot=True))
    assert_names(message, "open")
    assert "pivot must send a command" in message


def test_step_after_the_pivot_with_failures() -> None:
    message = definition_error(
        remote("charge", pivot=True, compensate=None),
        remote("ship", compensate=None),
    )
    assert_names(message, "ship")
    assert "after the pivot 'charge'" in message and "failures" in message


def test_step_after_the_pivot_with_compensation() -> None:
    message = definition_error(
        remote("charge", pivot=True, compensate=None),
        remote("ship", fail=False),
    )
    assert_names(message, "ship")
    assert "after the pivot 'charge'" in message and "compensate" in message


def test_local_step_after_the_pivot_is_rejected() -> None:
    message = definition_error(
        remote("charge", pivot=True, compensate=None),
        Step("note", compensate=Refund),
    )
    assert_names(message, "note")
    assert "after the pivot" in message


def test_step_without_compensation_before_a_pivot_that_can_fail() -> None:
    message = definition_error(
        remote("reserve", compensate=None, fail=False),
        remote("charge", pivot=True, compensate=None),
    )
    assert_names(message, "reserve")
    assert "no compensation" in message and "'charge'" in message


def test_valid_pivot_saga() -> None:
    s = saga(
        remote("reserve", compensate=None, fail=False),
        remote("charge", pivot=True, compensate=None, fail=False),
        remote("ship", compensate=None, fail=False),
    )
    assert [r.step.pivot for r in s.resolved()] == [False, True, False]
    s = saga(
        remote("reserve"),
        remote("charge", pivot=True, compensate=None),
        remote("ship", compensate=None, fail=False),
    )
    assert s.step("charge").failures == frozenset({Declined})


# -- participants and topics -------------------------------------------------------------


def test_participant_topic_from_the_command_type() -> None:
    s = saga(
        Step(
            "reserve-credit",
            invoke=ReserveCredit,
            on_reply={CreditReserved: None},
            failures=[CreditLimitExceeded],
            compensate=ReleaseCredit,
        ),
    )
    r = s.step("reserve-credit")
    assert r.action is not None and r.compensation is not None
    assert r.action.topic == "payments.commands"
    assert r.compensation.topic == "payments.commands"
    assert s.command_topics() == frozenset({"payments.commands"})


def test_to_overrides_the_participant() -> None:
    s = saga(remote("pay", to="billing"), remote("notify", invoke=Notify, fail=False))
    pay = s.step("pay")
    assert pay.action is not None and pay.compensation is not None
    assert pay.action.topic == "billing.commands"
    assert pay.compensation.topic == "billing.commands"
    assert s.command_topics() == frozenset({"billing.commands", "dtest.commands", "mail.commands"})


def test_to_rescues_a_command_type_without_a_service_prefix() -> None:
    message = definition_error(remote("pay", invoke=Bare, compensate=None))
    assert_names(message, "pay")
    assert "cannot tell which participant handles Bare" in message
    s = saga(remote("pay", invoke=Bare, compensate=None, to="bare"))
    action = s.step("pay").action
    assert action is not None and action.topic == "bare.commands"


@pytest.mark.parametrize(
    ("invoke", "to"), [(Shouty, None), (Pay, "Billing"), (Pay, "billing service")]
)
def test_bad_participant_names(invoke: type[Command], to: str | None) -> None:
    message = definition_error(remote("pay", invoke=invoke, compensate=None, to=to))
    assert_names(message, "pay")
    assert "cannot tell which participant" in message


def test_retry_policy_needs_an_attempt() -> None:
    with pytest.raises(DefinitionError) as info:
        RetryPolicy(max_attempts=0)
    assert "max_attempts" in str(info.value) and "0" in str(info.value)
    assert RetryPolicy(max_attempts=3).max_attempts == 3


# -- the sample saga -----------------------------------------------------------------------


def test_place_order_builds_with_the_expected_topics() -> None:
    assert place_order.name == "place-order"
    assert place_order.version == 1
    assert place_order.state is OrderState
    assert [r.name for r in place_order.resolved()] == [
        "create-order",
        "reserve-credit",
        "reserve-stock",
        "schedule-shipment",
        "approve-order",
    ]
    assert place_order.command_topics() == frozenset(
        {"orders.commands", "payments.commands", "inventory.commands", "shipping.commands"}
    )
    topics = {
        r.name: (
            r.action.topic if r.action else None,
            r.compensation.topic if r.compensation else None,
        )
        for r in place_order.resolved()
    }
    assert topics == {
        "create-order": (None, "orders.commands"),
        "reserve-credit": ("payments.commands", "payments.commands"),
        "reserve-stock": ("inventory.commands", "inventory.commands"),
        "schedule-shipment": ("shipping.commands", None),
        "approve-order": ("orders.commands", None),
    }
    create = place_order.step("create-order").compensation
    approve = place_order.step("approve-order").action
    assert create is not None and create.command is RejectOrder
    assert approve is not None and approve.command is ApproveOrder
    assert place_order.inbox_topic == "place-order.inbox"
    assert place_order.journal_topic == "place-order.journal"
