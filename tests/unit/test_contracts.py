"""Command → reply contracts: a command declares the replies it produces (``replies=``),
saga steps are held to them when the `Saga` is built, and `undeclared_reply` says why a
handler's reply breaks them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    DefinitionError,
    Event,
    Reply,
    Saga,
    Step,
)
from sagakit._messages import undeclared_reply
from services.orders.saga import place_order


class Granted(Reply, type="ctest.Granted"):
    order_id: str


class Refused(Reply, type="ctest.Refused"):
    order_id: str


class Busy(Reply, type="ctest.Busy"):
    pass


class Undone(Reply, type="ctest.Undone"):
    pass


class UndoFailed(Reply, type="ctest.UndoFailed"):
    pass


class Shipped(Reply, type="cship.Shipped"):
    """Another service's reply: the typo the contracts catch."""


class FrameworkFailure(Reply, type="sagakit.ContractTestFailure"):
    """Stands for the framework's own failure reply (``sagakit.*``), which any command
    may produce."""


class Grant(Command, type="ctest.Grant", replies=(Granted, Refused, Busy)):
    order_id: str


class Undo(Command, type="ctest.Undo", replies=(Undone, UndoFailed)):
    order_id: str


class Loose(Command, type="ctest.Loose"):
    """Declares nothing: held to nothing, as before contracts."""

    order_id: str


class Order(BaseModel):
    order_id: str


def saga(**step: Any) -> Saga[Order]:
    return Saga("contract", state=Order, steps=[Step("grant", **step)])


FULL: dict[str, Any] = {
    "invoke": Grant,
    "on_reply": {Granted: None},
    "failures": [Refused],
    "retry_on": [Busy],
}


# replies= ------------------------------------------------------------------------------------


def test_a_command_declares_its_replies_and_one_without_declares_none() -> None:
    assert Grant.declared_replies == frozenset({Granted, Refused, Busy})
    assert Loose.declared_replies is None
    assert Grant(order_id="o1").order_id == "o1"  # still an ordinary model


def test_replies_on_a_reply_or_an_event_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"BadReply: replies= is for Command types"):

        class BadReply(Reply, type="ctest.BadReply", replies=(Granted,)):
            pass

    with pytest.raises(DefinitionError, match=r"BadEvent: replies= is for Command types"):

        class BadEvent(Event, type="ctest.BadEvent", replies=(Granted,)):
            pass


class Unregistered(Reply):
    pass


@pytest.mark.parametrize(
    ("replies", "problem"),
    [
        ((Granted, Loose), r"Loose in replies= is not a Reply class"),
        ((Granted, "ctest.Refused"), r"'ctest.Refused' in replies= is not a Reply class"),
        ((Unregistered,), r"reply Unregistered in replies= is not registered"),
        (Granted, r"replies= takes a tuple of Reply classes"),
        ((), r"replies= is empty"),
    ],
)
def test_replies_must_be_registered_reply_classes(replies: Any, problem: str) -> None:
    with pytest.raises(DefinitionError, match=rf"command \S*Wrong: {problem}"):

        class Wrong(Command, type="ctest.Wrong", replies=replies):
            pass


def test_replies_need_a_registered_command_type() -> None:
    with pytest.raises(DefinitionError, match=r"command \S*Abstract: replies= needs type="):

        class Abstract(Command, replies=(Granted,)):
            pass


# undeclared_reply ----------------------------------------------------------------------------


def test_undeclared_reply_names_the_command_the_reply_and_what_is_declared() -> None:
    problem = undeclared_reply(Grant, Shipped())

    assert problem is not None
    assert "cship.Shipped is not a reply ctest.Grant declares" in problem
    assert "(it declares ctest.Busy, ctest.Granted, ctest.Refused)" in problem


def test_undeclared_reply_allows_declared_replies_undeclared_commands_and_the_framework() -> None:
    assert undeclared_reply(Grant, Granted(order_id="o1")) is None
    assert undeclared_reply(Grant, Busy()) is None
    assert undeclared_reply(Loose, Shipped()) is None  # nothing declared, nothing checked
    assert undeclared_reply(Grant, FrameworkFailure()) is None  # sagakit.* always may


# build time ----------------------------------------------------------------------------------


def test_a_step_that_handles_exactly_the_declared_replies_builds() -> None:
    built = saga(**FULL, compensate=Undo, compensation_failures=[UndoFailed])

    [step] = built.resolved()
    assert set(step.success) | step.failures | step.retryable == {Granted, Refused, Busy}


@pytest.mark.parametrize(
    ("lists", "where"),
    [
        ({"on_reply": {Granted: None, Shipped: None}}, "on_reply"),
        ({"failures": [Refused, Shipped]}, "failures"),
        ({"retry_on": [Busy, Shipped]}, "retry_on"),
    ],
)
def test_a_step_listing_a_reply_its_command_does_not_declare_fails_at_build(
    lists: dict[str, Any], where: str
) -> None:
    step = {**FULL, "on_reply": {Granted: None}, "failures": [Refused], "retry_on": [Busy]}
    step.update(lists)
    with pytest.raises(DefinitionError) as caught:
        saga(**step)

    message = str(caught.value)
    assert message.startswith("step 'grant' of saga 'contract': lists cship.Shipped ")
    assert f"cship.Shipped (in {where}), which ctest.Grant does not declare" in message
    assert "(it declares ctest.Busy, ctest.Granted, ctest.Refused)" in message


def test_a_compensation_failure_its_command_does_not_declare_fails_at_build() -> None:
    with pytest.raises(DefinitionError) as caught:
        saga(**FULL, compensate=Undo, compensation_failures=[UndoFailed, Refused])

    message = str(caught.value)
    assert message.startswith("step 'grant' of saga 'contract': ")
    assert "ctest.Refused (in compensation_failures), which ctest.Undo does not declare" in message
    assert "(it declares ctest.UndoFailed, ctest.Undone)" in message


def test_a_declared_reply_the_step_does_not_handle_fails_at_build() -> None:
    with pytest.raises(DefinitionError) as caught:
        saga(invoke=Grant, on_reply={Granted: None}, failures=[Refused])

    message = str(caught.value)
    assert message.startswith("step 'grant' of saga 'contract': ctest.Grant declares ctest.Busy")
    assert "list it in on_reply (success), failures (compensate) or retry_on" in message


def test_a_compensation_need_not_list_its_declared_replies() -> None:
    # a compensation's replies that are not compensation_failures count as done
    built = saga(**FULL, compensate=Undo)

    [step] = built.resolved()
    assert step.compensation is not None and step.compensation.command is Undo


def test_the_framework_s_replies_may_be_listed_without_being_declared() -> None:
    built = saga(**{**FULL, "failures": [Refused, FrameworkFailure]})

    [step] = built.resolved()
    assert FrameworkFailure in step.failures


def test_a_command_without_replies_keeps_working_as_before() -> None:
    built = saga(invoke=Loose, on_reply={Shipped: None, Granted: None})

    [step] = built.resolved()
    assert set(step.success) == {Shipped, Granted}


def test_every_command_of_the_samples_declares_its_replies() -> None:
    import sys
    from pathlib import Path

    examples = str(Path(__file__).parents[2] / "examples")
    if examples not in sys.path:  # imported as `transfers`, as its own tests and the CLI do
        sys.path.insert(0, examples)
    from transfers.saga import transfer

    for definition in (place_order, transfer):
        for step in definition.resolved():
            for action in (step.action, step.compensation):
                if action is not None:
                    assert action.command.declared_replies, action.command.message_type
