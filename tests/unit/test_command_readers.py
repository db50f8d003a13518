"""The orchestrator's start-up check that a consumer group reads each of its command
topics, on the in-memory transport: a warning and a gauge for a topic nobody reads,
nothing when the participants start beside it, and a check that fails stays quiet."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    HandlerContext,
    MemoryBroker,
    MemoryStore,
    MemoryTransport,
    Orchestrator,
    Reply,
    Saga,
    SagaClient,
    SagaStatus,
    Service,
    Step,
    TransportError,
)
from sagakit._metrics import Metrics

pytestmark = pytest.mark.anyio


class Answered(Reply, type="rtest.Answered"):
    pass


class Ask(Command, type="rtest.Ask", replies=(Answered,)):
    question: str


class Told(Reply, type="rtestx.Told"):
    pass


class Tell(Command, type="rtestx.Tell", replies=(Told,)):  # a service nobody runs
    question: str


class Question(BaseModel):
    question: str


asking = Saga(
    "asking",
    state=Question,
    steps=[Step("ask", invoke=Ask, on_reply={Answered: None})],
)
telling = Saga(
    "telling",
    state=Question,
    steps=[
        Step("ask", invoke=Ask, on_reply={Answered: None}),
        Step("tell", invoke=Tell, on_reply={Told: None}),
    ],
)


def answering() -> Service[None]:
    service: Service[None] = Service("rtest", MemoryStore(), partitions=2)

    @service.handles(Ask)
    def ask(cmd: Ask, ctx: HandlerContext[None]) -> Answered:
        return Answered()

    return service


def unread(metrics: Metrics, topic: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(
        "sagakit_unread_command_topics", {"topic": topic}
    )
    return value


class Watched(MemoryTransport):
    """Counts the orchestrator's checks (and can fail them, or not know the answer)."""

    def __init__(self, broker: MemoryBroker | None = None, *, answer: str = "broker") -> None:
        super().__init__(broker)
        self.answer = answer
        self.checks = 0
        self._checked = anyio.Event()

    async def topic_readers(self, topics: Sequence[str]) -> dict[str, frozenset[str] | None]:
        answer: dict[str, frozenset[str] | None] = {t: None for t in topics}
        if self.answer == "broker":
            answer = await super().topic_readers(topics)
        self.checks += 1
        self._checked.set()
        self._checked = anyio.Event()
        if self.answer == "fail":
            raise TransportError("the admin API is down")
        return answer

    async def checked(self, times: int) -> None:
        """Wait until the orchestrator has checked `times` times. It acts on an answer
        before it awaits anything, so that is done by the time this returns."""
        with anyio.fail_after(5):
            while self.checks < times:
                await self._checked.wait()


def orchestrator_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sagakit.orchestrator" and r.levelno == level
    ]


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sagakit.orchestrator")


async def test_a_command_topic_nobody_reads_is_warned_about_once_and_gauged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, metrics = Watched(), Metrics("t")
    orchestrator = Orchestrator(
        telling, transport, partitions=2, metrics=metrics, reader_check_s=0.02
    )
    async with anyio.create_task_group() as tg:
        await tg.start(answering().run, transport)
        await tg.start(orchestrator.run)
        await transport.checked(1)
        assert unread(metrics, "rtestx.commands") == 1
        assert unread(metrics, "rtest.commands") == 0
        await transport.checked(3)  # checked again, 0.1 s and 0.3 s later
        tg.cancel_scope.cancel()

    assert unread(metrics, "rtestx.commands") == 1
    assert orchestrator_logs(caplog, logging.WARNING) == [
        "no consumer group reads rtestx.commands, where saga 'telling' sends the commands "
        "of step 'tell' (rtestx.Tell): those steps wait for replies until a service "
        "consumes it. Is the service 'rtestx' running, and is the command type's prefix right?"
    ]


async def test_no_warning_when_the_participant_starts_after_the_orchestrator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    transport, metrics = Watched(broker), Metrics("t")
    orchestrator = Orchestrator(
        asking, transport, partitions=2, metrics=metrics, reader_check_s=0.2
    )
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await anyio.sleep(0.05)  # the usual start: the participant a moment later
        await tg.start(answering().run, MemoryTransport(broker))
        await transport.checked(1)
        tg.cancel_scope.cancel()

    assert unread(metrics, "rtest.commands") == 0
    assert orchestrator_logs(caplog, logging.WARNING) == []


async def test_a_topic_that_gets_a_reader_later_is_gauged_read_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    transport, metrics = Watched(broker), Metrics("t")
    orchestrator = Orchestrator(
        asking, transport, partitions=2, metrics=metrics, reader_check_s=0.02
    )
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await transport.checked(1)
        assert unread(metrics, "rtest.commands") == 1
        await tg.start(answering().run, MemoryTransport(broker))
        await transport.checked(2)
        assert unread(metrics, "rtest.commands") == 0
        tg.cancel_scope.cancel()

    assert len(orchestrator_logs(caplog, logging.WARNING)) == 1
    assert orchestrator_logs(caplog, logging.INFO)[-1] == (
        "rtest.commands is read now, by rtest.service"
    )


@pytest.mark.parametrize("answer", ["fail", "cannot-tell"])
async def test_a_check_that_fails_or_cannot_tell_is_quiet_and_the_saga_runs(
    caplog: pytest.LogCaptureFixture, answer: str
) -> None:
    broker = MemoryBroker()
    transport, metrics = Watched(broker, answer=answer), Metrics("t")
    ended = anyio.Event()
    orchestrator = Orchestrator(
        asking,
        transport,
        partitions=2,
        metrics=metrics,
        reader_check_s=0.01,
        on_transition=lambda t: ended.set() if t.status.settled else None,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await transport.checked(3)  # it keeps asking, less and less often
        await tg.start(answering().run, MemoryTransport(broker))
        await SagaClient(transport).start(asking, "q1", Question(question="why"))
        with anyio.fail_after(5):
            await ended.wait()
        instance = orchestrator.instance("q1")
        tg.cancel_scope.cancel()

    assert instance is not None and instance.status is SagaStatus.COMPLETED
    assert orchestrator_logs(caplog, logging.WARNING) == []
    assert unread(metrics, "rtest.commands") is None
    why = "failed: TransportError" if answer == "fail" else "cannot tell whether a consumer"
    assert any(why in m for m in orchestrator_logs(caplog, logging.DEBUG))
