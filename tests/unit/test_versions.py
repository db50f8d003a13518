"""Versions of one saga type run side by side: new sagas start on the newest (or the one the
start names), running ones go on with the version they started on — also across a
restart onto a journal of older sagas; an orchestrator without a version live sagas still
use, or with a changed shape under an old number, refuses and lists them."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from sagakit import (
    App,
    Command,
    DefinitionError,
    HandlerContext,
    MemoryBroker,
    MemoryStore,
    Reply,
    Saga,
    SagaStatus,
    Service,
    Step,
)
from sagakit.testing import SagaTestEnvironment

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str


class Reserve(Command, type="vtest.Reserve"):
    order_id: str


class Reserved(Reply, type="vtest.Reserved"):
    pass


class Release(Command, type="vtest.Release"):
    order_id: str


class Ship(Command, type="vtest.Ship"):
    order_id: str


class Shipped(Reply, type="vtest.Shipped"):
    pass


def v1() -> Saga[Order]:
    return Saga(
        "vtest-order",
        version=1,
        state=Order,
        steps=[Step("reserve", invoke=Reserve, on_reply={Reserved: None}, compensate=Release)],
    )


def v2() -> Saga[Order]:
    return Saga(
        "vtest-order",
        version=2,
        state=Order,
        steps=[
            Step("reserve", invoke=Reserve, on_reply={Reserved: None}, compensate=Release),
            Step("ship", invoke=Ship, on_reply={Shipped: None}),
        ],
    )


def warehouse() -> Service[None]:
    service = Service("vtest", MemoryStore())

    @service.handles(Reserve)
    async def reserve(cmd: Reserve, ctx: HandlerContext[None]) -> Reserved:
        return Reserved()

    @service.handles(Release)
    async def release(cmd: Release, ctx: HandlerContext[None]) -> Reserved:
        return Reserved()

    @service.handles(Ship)
    async def ship(cmd: Ship, ctx: HandlerContext[None]) -> Shipped:
        return Shipped()

    return service


async def started_on_v1(broker: MemoryBroker) -> None:
    """Sagas of version 1 left in flight: no service answers them."""
    async with SagaTestEnvironment([v1()], [], broker=broker) as env:
        await env.start(v1(), "old-1", Order(order_id="old-1"))
        await env.settle()
        assert env.instance("old-1").status is SagaStatus.RUNNING  # type: ignore[union-attr]


async def test_a_restart_with_both_versions_finishes_old_sagas_on_theirs() -> None:
    broker = MemoryBroker()
    await started_on_v1(broker)
    old, new = v1(), v2()
    app = App("vtest", sagas=[old, new], services=[warehouse()])
    assert app.sagas == (new,) and app.versions("vtest-order") == (old, new)
    async with SagaTestEnvironment(app, broker=broker) as env:
        await env.start(new, "new-1", Order(order_id="new-1"))
        await env.start(old, "named-1", Order(order_id="named-1"))  # a start naming v1
        await env.settle()
        finished = {i: env.instance(i) for i in ("old-1", "new-1", "named-1")}
    for saga_id, instance in finished.items():
        assert instance is not None and instance.status is SagaStatus.COMPLETED, saga_id
    assert finished["old-1"].version == 1 and finished["old-1"].completed == ("reserve",)
    assert finished["named-1"].version == 1
    assert finished["new-1"].version == 2 and finished["new-1"].completed == ("reserve", "ship")
    assert finished["new-1"].shape == new.shape != old.shape


async def test_without_a_version_live_sagas_use_the_orchestrator_refuses_and_lists_them() -> None:
    broker = MemoryBroker()
    await started_on_v1(broker)
    with pytest.raises(BaseException) as info:
        async with SagaTestEnvironment([v2()], [warehouse()], broker=broker) as env:
            await env.settle()
    message = _message(info.value)
    assert "version 1, which this orchestrator does not run" in message and "old-1" in message


async def test_the_same_number_with_another_shape_is_refused() -> None:
    broker = MemoryBroker()
    await started_on_v1(broker)
    changed = Saga(
        "vtest-order",
        version=1,
        state=Order,
        steps=[
            Step("reserve", invoke=Reserve, on_reply={Reserved: None}, compensate=Release),
            Step("ship", invoke=Ship, on_reply={Shipped: None}),
        ],
    )
    with pytest.raises(BaseException) as info:
        async with SagaTestEnvironment([changed], [warehouse()], broker=broker) as env:
            await env.settle()
    assert "version 1 has changed shape" in _message(info.value)


def test_two_definitions_of_one_version_in_an_app_are_refused() -> None:
    with pytest.raises(DefinitionError, match="two sagas named 'vtest-order' of version 1"):
        App("vtest", sagas=[v1(), v1()])


def _message(exc: BaseException) -> str:
    """The text of `exc`, or of the DefinitionError inside an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(_message(e) for e in exc.exceptions)
    return str(exc)
