"""Interceptors: a user's own hooks see every transition, every handled record and every
dead letter, in the order things happen, through the same interface tracing and
metrics use."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    BusinessFailure,
    Command,
    Envelope,
    HandlerContext,
    Interceptor,
    MemoryStore,
    OutgoingRecord,
    Record,
    Reply,
    Saga,
    SagaInstance,
    SagaStatus,
    Scope,
    Service,
    Step,
    Transition,
)
from sagakit.testing import SagaTestEnvironment

pytestmark = pytest.mark.anyio


class Book(Command, type="itest.Book"):
    ref: str


class Booked(Reply, type="itest.Booked"):
    pass


class Cancel(Command, type="itest.Cancel"):
    ref: str


class Cancelled(Reply, type="itest.Cancelled"):
    pass


class Pay(Command, type="itest.Pay"):
    ref: str


class Paid(Reply, type="itest.Paid"):
    pass


class Refused(Reply, type="itest.Refused"):
    pass


class Ref(BaseModel):
    ref: str


trip = Saga(
    "itrip",
    state=Ref,
    steps=[
        Step("book", invoke=Book, on_reply={Booked: None}, compensate=Cancel),
        Step("pay", invoke=Pay, on_reply={Paid: None}, failures=[Refused]),
    ],
)


class Audit(Interceptor):
    """What a user writes: an audit trail of transitions and handled records."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.open = 0

    def transition(self, saga: Saga[Any], previous: SagaInstance | None, t: Transition) -> None:
        self.events.append(f"{t.saga_id} {t.event} {t.step or ''} -> {t.status.value}")

    def handled(self, service: str, envelope: Envelope, outcome: str) -> None:
        self.events.append(f"{service} handled {envelope.message_type}: {outcome}")

    def dead_letter(self, component: str, record: OutgoingRecord, error_type: str) -> None:
        self.events.append(f"{component} dead-lettered to {record.topic}: {error_type}")

    def handle(self, component: str, record: Record, envelope: Envelope | None) -> Scope | None:
        audit = self

        class Counting:
            def __enter__(self) -> Counting:
                audit.open += 1
                return self

            def __exit__(self, *exc: object) -> None:
                audit.open -= 1

            def set(self, **attributes: Any) -> None:
                pass

            def error(self, kind: str, message: str) -> None:
                audit.events.append(f"{component} error {kind}")

            def exception(self, exc: BaseException) -> None:
                pass

        return Counting()


def itest_service() -> Service[None]:
    service: Service[None] = Service("itest", MemoryStore())

    @service.handles(Book)
    def book(cmd: Book, ctx: HandlerContext[None]) -> Booked:
        return Booked()

    @service.handles(Cancel)
    def cancel(cmd: Cancel, ctx: HandlerContext[None]) -> Cancelled:
        return Cancelled()

    @service.handles(Pay)
    def pay(cmd: Pay, ctx: HandlerContext[None]) -> Paid:
        if cmd.ref == "broke":
            raise BusinessFailure(Refused())
        return Paid()

    return service


async def test_a_users_interceptor_sees_every_transition_and_handled_record() -> None:
    audit = Audit()
    async with SagaTestEnvironment([trip], [itest_service()], interceptors=[audit]) as env:
        await env.start(trip, "broke", Ref(ref="broke"))
        ended = await env.wait_until_ended("broke")
        await env.transport.send(
            [OutgoingRecord("itrip.inbox", b"x", b"garbage", (("message-id", b"m"),))]
        )
        await env.broker.wait_until(lambda: bool(env.dead_letters("itrip.inbox")))
    assert ended.status is SagaStatus.COMPENSATED
    transitions = [e for e in audit.events if e.startswith("broke ")]
    assert transitions == [
        "broke started  -> RUNNING",
        "broke step-succeeded book -> RUNNING",
        "broke step-failed pay -> COMPENSATING",
        "broke step-compensated book -> COMPENSATED",
    ]
    assert "itest handled itest.Book: itest.Booked" in audit.events
    assert "itest handled itest.Pay: itest.Refused" in audit.events
    assert "itest handled itest.Cancel: itest.Cancelled" in audit.events
    assert "orchestrator:itrip dead-lettered to itrip.inbox.dlq: DecodeError" in audit.events
    assert "orchestrator:itrip error DecodeError" in audit.events
    assert audit.open == 0  # every scope entered was left
