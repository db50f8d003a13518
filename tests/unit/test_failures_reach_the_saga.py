"""A participant that cannot answer (a handler bug, no handler, a handler that hangs) tells
the saga with HandlerFailed; the saga retries, compensates or parks, and never waits for
ever on a reply that a running participant will not send."""

from __future__ import annotations

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    HandlerContext,
    MemoryStore,
    Reply,
    RetryPolicy,
    Saga,
    SagaStatus,
    Service,
    Step,
)
from sagakit.testing import SagaTestEnvironment

pytestmark = pytest.mark.anyio


class Book(Command, type="failreach.Book"):
    ref: str


class Booked(Reply, type="failreach.Booked"):
    pass


class Cancel(Command, type="failreach.Cancel"):
    ref: str


class Cancelled(Reply, type="failreach.Cancelled"):
    pass


class Pay(Command, type="failreach.Pay"):
    ref: str


class Paid(Reply, type="failreach.Paid"):
    pass


class Trip(BaseModel):
    ref: str


def trip(name: str, pay_retry: RetryPolicy | None = None) -> Saga[Trip]:
    return Saga(
        name,
        state=Trip,
        steps=[
            Step("book", invoke=Book, on_reply={Booked: None}, compensate=Cancel),
            Step("pay", invoke=Pay, on_reply={Paid: None}, retry=pay_retry or RetryPolicy()),
        ],
    )


def service(*, pay: str, cancel: bool = True, **options: object) -> tuple[Service[None], list[str]]:
    """`pay`: "bug" raises KeyError, "hang" never returns, "flaky" fails once."""
    calls: list[str] = []
    svc: Service[None] = Service("failreach", MemoryStore(), **options)  # type: ignore[arg-type]

    @svc.handles(Book)
    def book(cmd: Book, ctx: HandlerContext[None]) -> Booked:
        calls.append(ctx.message_id)
        return Booked()

    if cancel:

        @svc.handles(Cancel)
        def cancel_(cmd: Cancel, ctx: HandlerContext[None]) -> Cancelled:
            calls.append(ctx.message_id)
            return Cancelled()

    @svc.handles(Pay)
    async def pay_(cmd: Pay, ctx: HandlerContext[None]) -> Paid:
        calls.append(ctx.message_id)
        if pay == "bug" or (pay == "flaky" and ctx.message_id.endswith(":1")):
            raise KeyError("card")
        if pay == "hang":
            await anyio.sleep_forever()
        return Paid()

    return svc, calls


async def test_a_handler_bug_compensates_the_saga_with_the_error_as_its_reason() -> None:
    saga = trip("failreach-bug")
    svc, calls = service(pay="bug", handler_attempts=2)
    async with SagaTestEnvironment([saga], [svc]) as env:
        await env.start(saga, "t-1", Trip(ref="t-1"))
        await env.advance(1)  # the handler's back-off between its two runs
        ended = await env.wait_until_ended("t-1")
        dead = env.dead_letters("failreach.commands")
    assert ended.status is SagaStatus.COMPENSATED
    assert ended.failure is not None
    assert "pay" in ended.failure and "KeyError" in ended.failure and "2 attempt" in ended.failure
    assert calls == ["t-1:book:1", "t-1:pay:1", "t-1:pay:1", "t-1:book:c1"]  # 2 runs of pay
    assert [dict(d.headers)["error-type"] for d in dead] == [b"KeyError"]


async def test_the_steps_retry_policy_applies_to_a_handler_failure() -> None:
    saga = trip("failreach-retry", RetryPolicy(max_attempts=2, initial_backoff_s=1, jitter=0))
    svc, calls = service(pay="flaky", handler_attempts=1)
    async with SagaTestEnvironment([saga], [svc]) as env:
        await env.start(saga, "t-2", Trip(ref="t-2"))
        await env.settle()
        await env.advance(1)
        ended = await env.wait_until_ended("t-2")
    assert ended.status is SagaStatus.COMPLETED
    assert [c for c in calls if ":pay:" in c] == ["t-2:pay:1", "t-2:pay:2"]


async def test_a_compensation_nobody_handles_parks_the_saga_with_the_reason() -> None:
    saga = trip("failreach-nohandler")
    svc, _ = service(pay="bug", cancel=False, handler_attempts=1)
    async with SagaTestEnvironment([saga], [svc]) as env:
        await env.start(saga, "t-3", Trip(ref="t-3"))
        await env.advance(3600)  # the compensation's retries, with their back-offs
        ended = await env.wait_until_ended("t-3")
    assert ended.status is SagaStatus.FAILED_NEEDS_ATTENTION
    assert ended.failure is not None and "NoHandler" in ended.failure
    assert "failreach.Cancel" in ended.failure


async def test_a_handler_that_hangs_times_out_on_the_virtual_clock() -> None:
    saga = trip("failreach-hang")
    svc, _ = service(pay="hang", handler_attempts=1, handler_timeout_s=30)
    async with SagaTestEnvironment([saga], [svc]) as env:
        await env.start(saga, "t-4", Trip(ref="t-4"))
        await env.settle()
        assert env.instance("t-4").status is SagaStatus.RUNNING  # type: ignore[union-attr]
        await env.advance(30)
        ended = await env.wait_until_ended("t-4")
    assert ended.status is SagaStatus.COMPENSATED
    assert ended.failure is not None and "TimeoutError" in ended.failure


class Quote(Command, type="failreach.Quote", replies=(Booked,)):
    ref: str


async def test_a_handler_returning_a_reply_its_command_does_not_declare_fails_loudly() -> None:
    from sagakit.testing import DeadLettered, ServiceHarness

    svc: Service[None] = Service("failreach", MemoryStore(), handler_attempts=1)

    @svc.handles(Quote)
    def quote(cmd: Quote, ctx: HandlerContext[None]) -> Reply:
        return Paid()  # a bug: Quote declares only Booked

    async with ServiceHarness(svc) as harness:
        with pytest.raises(DeadLettered) as caught:
            await harness.handle(Quote(ref="q"))
    assert "failreach.Paid is not a reply failreach.Quote declares" in str(caught.value)
