"""`App.check`: steps whose command goes to a service the app does not have (a typo in the
command type's prefix), or to one of its services that has no handler for it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    App,
    Command,
    HandlerContext,
    MemoryStore,
    MemoryTransport,
    Reply,
    Saga,
    Service,
    Step,
)
from services.app import app as sample_app

pytestmark = pytest.mark.anyio


class Granted(Reply, type="atest.Granted"):
    order_id: str


class Order(BaseModel):
    order_id: str


class Pay(Command, type="payment.Pay", replies=(Granted,)):  # "payment." for "payments."
    order_id: str


class Hold(Command, type="atest.Hold", replies=(Granted,)):
    order_id: str


def typo_app(services: Sequence[Service[Any]] | None = None) -> App:
    paying = Saga(
        "paying",
        state=Order,
        steps=[
            Step("hold", invoke=Hold, on_reply={Granted: None}),
            Step("pay", invoke=Pay, on_reply={Granted: None}),
        ],
    )
    if services is None:
        payments: Service[None] = Service("payments", MemoryStore())
        atest: Service[None] = Service("atest", MemoryStore())

        @atest.handles(Hold)
        def hold(cmd: Hold, ctx: HandlerContext[None]) -> Granted:
            return Granted(order_id=cmd.order_id)

        services = [payments, atest]
    return App("shop", sagas=[paying], services=services)


def test_app_check_reports_a_command_whose_prefix_names_no_service_of_the_app() -> None:
    assert typo_app().check() == (
        "step 'pay' of saga 'paying' sends payment.Pay to payment.commands, but app 'shop' "
        "has no service 'payment' (its services: payments, atest); fine if it runs in "
        "another app, else a typo in the command type or to=",
    )


def test_app_check_reports_a_command_its_service_has_no_handler_for() -> None:
    atest: Service[None] = Service("atest", MemoryStore())
    payment: Service[None] = Service("payment", MemoryStore())

    @payment.handles(Pay)
    def pay(cmd: Pay, ctx: HandlerContext[None]) -> Granted:
        return Granted(order_id=cmd.order_id)

    assert typo_app([atest, payment]).check() == (
        "step 'hold' of saga 'paying' sends atest.Hold to service 'atest', which has no "
        "handler for it",
    )


def test_app_check_finds_nothing_in_the_sample_or_in_an_app_without_services() -> None:
    assert sample_app.check() == ()
    assert App("sagas-only", sagas=typo_app().sagas).check() == ()


async def test_running_an_app_logs_what_check_finds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sagakit.app")
    app = typo_app()
    async with anyio.create_task_group() as tg:
        await tg.start(app.run, MemoryTransport())
        tg.cancel_scope.cancel()

    warned = [r.getMessage() for r in caplog.records if r.name == "sagakit.app"]
    assert warned == list(app.check())
    assert len(warned) == 1 and "no service 'payment'" in warned[0]
