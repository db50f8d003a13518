"""The test kit as a user meets it: no marker and no fixture of their own (the pytest
plugin provides them), a participant's handler called on its own with its store at
hand, and throwaway message models that do not clash."""

from __future__ import annotations

import sqlite3

import pytest
from pydantic import BaseModel

from sagakit import (
    App,
    BusinessFailure,
    Command,
    DefinitionError,
    HandlerContext,
    JsonCodec,
    Reply,
    Saga,
    SagaStatus,
    Service,
    SqliteStore,
    Step,
)
from sagakit.testing import DeadLettered, isolated_registry


class Charge(Command, type="kittest.Charge"):
    order: str
    amount: int


class Charged(Reply, type="kittest.Charged"):
    balance: int


class Declined(Reply, type="kittest.Declined"):
    reason: str


class Order(BaseModel):
    order: str
    amount: int


def payments_service() -> tuple[Service[sqlite3.Connection], list[str]]:
    calls: list[str] = []
    service = Service(
        "kittest",
        SqliteStore(schema="CREATE TABLE IF NOT EXISTS spent (o TEXT PRIMARY KEY, amount INT)"),
    )

    @service.handles(Charge)
    def charge(cmd: Charge, ctx: HandlerContext[sqlite3.Connection]) -> Charged:
        calls.append(ctx.message_id)
        if cmd.amount < 0:
            raise ValueError("negative amount")  # a bug: not a business failure
        ctx.db.execute("INSERT OR IGNORE INTO spent VALUES (?, ?)", (cmd.order, cmd.amount))
        (total,) = ctx.db.execute("SELECT coalesce(sum(amount), 0) FROM spent").fetchone()
        if total > 100:
            raise BusinessFailure(Declined(reason=f"{total} is over the limit"))
        return Charged(balance=100 - total)

    return service, calls


checkout = Saga(
    "kittest-checkout",
    state=Order,
    steps=[Step("charge", invoke=Charge, on_reply={Charged: None}, failures=[Declined])],
)


async def test_a_first_test_needs_no_marker_and_no_fixture_of_its_own(saga_env) -> None:  # type: ignore[no-untyped-def]
    service, _ = payments_service()
    env = await saga_env(App("kittest", sagas=[checkout], services=[service]))
    await env.start(checkout, "o-1", Order(order="o-1", amount=30))
    ended = await env.wait_until_ended("o-1")
    assert ended.status is SagaStatus.COMPLETED


async def test_a_handler_on_its_own_with_its_reply_and_its_store(service_harness) -> None:  # type: ignore[no-untyped-def]
    service, calls = payments_service()
    harness = await service_harness(service)
    reply = await harness.handle(Charge(order="o-1", amount=60))
    assert reply == Charged(balance=40)
    assert harness.db.execute("SELECT o, amount FROM spent").fetchall() == [("o-1", 60)]
    # the same command again: the stored reply, the handler does not run twice
    again = await harness.handle(Charge(order="o-1", amount=60), message_id=harness.last_id)
    assert again == reply and len(calls) == 1
    # a business failure is the failure reply, and its writes are undone
    declined = await harness.handle(Charge(order="o-2", amount=70))
    assert isinstance(declined, Declined) and "130 is over the limit" in declined.reason
    assert harness.db.execute("SELECT count(*) FROM spent").fetchone() == (1,)
    # a bug in the handler: its command goes to the DLQ, and the test says why
    with pytest.raises(DeadLettered, match=r"ValueError: .*negative amount"):
        await harness.handle(Charge(order="o-3", amount=-1))


def test_throwaway_models_in_an_isolated_registry_do_not_clash() -> None:
    for amount_type in (int, str):  # two different models under one type name
        with isolated_registry():

            class Throwaway(Command, type="kittest.Throwaway"):
                amount: amount_type  # type: ignore[valid-type]

            assert Throwaway.model_fields["amount"].annotation is amount_type
    with pytest.raises(DefinitionError, match="isolated_registry"):

        class Clash(Command, type="kittest.Charge"):  # Charge's type, another class
            pass


def test_a_class_defined_again_in_its_own_place_replaces_the_first() -> None:
    with isolated_registry():
        first: type[Command] | None = None
        for _ in range(2):  # a notebook cell run twice, or a module reloaded

            class Again(Command, type="kittest.Again"):
                n: int

            first = first or Again
        assert first is not Again
        # records of that type decode with the newest definition
        assert type(JsonCodec().decode("kittest.Again", b'{"n": 1}')) is Again
