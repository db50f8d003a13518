"""SubSaga: a parent saga starts a child saga, waits for its end and maps its outcome; a
parent that compensates after its child completed asks the child to undo its own steps.
Run with real orchestrators and a service on the in-memory transport, on virtual time."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    BusinessFailure,
    Command,
    DefinitionError,
    HandlerContext,
    MemoryStore,
    Reply,
    Saga,
    SagaStatus,
    Service,
    Step,
    SubSaga,
)
from sagakit.testing import SagaTestEnvironment

pytestmark = pytest.mark.anyio


class Hire(BaseModel):
    person: str
    badge: str = ""
    fail_welcome: bool = False
    badge_refused: bool = False


class Badge(BaseModel):
    person: str
    number: str = ""
    refused: bool = False


class Act(Command, type="subtest.Act"):
    what: str
    person: str
    fail: bool = False


class Acted(Reply, type="subtest.Acted"):
    what: str
    note: str = ""


class Refused(Reply, type="subtest.Refused"):
    pass


LOG: list[str] = []


def act(what: str, fail_field: str | None = None):  # type: ignore[no-untyped-def]
    def build(state: BaseModel) -> Act:
        fail = bool(getattr(state, fail_field)) if fail_field else False
        return Act(what=what, person=state.person, fail=fail)  # type: ignore[attr-defined]

    build.__annotations__ = {"state": BaseModel, "return": Act}
    return build


def numbered(state: Badge, reply: Acted) -> Badge:
    return state.model_copy(update={"number": reply.note})


issue_badge = Saga(
    "subtest-badge",
    state=Badge,
    steps=[
        Step("print", invoke=act("print"), on_reply={Acted: numbered}, compensate=act("shred")),
        Step(
            "activate",
            invoke=act("activate", "refused"),
            on_reply={Acted: None},
            failures=[Refused],
            compensate=act("deactivate"),
        ),
    ],
)

onboard = Saga(
    "subtest-onboard",
    state=Hire,
    steps=[
        Step("account", invoke=act("account"), on_reply={Acted: None}, compensate=act("close")),
        SubSaga(
            "badge",
            saga=issue_badge,
            input=lambda s: Badge(person=s.person, refused=s.badge_refused),
            on_done=lambda s, badge: s.model_copy(update={"badge": badge.number}),
        ),
        Step(
            "welcome",
            invoke=act("welcome", "fail_welcome"),
            on_reply={Acted: None},
            failures=[Refused],
        ),
    ],
)


def office(tracing: Any = None) -> Service[None]:
    service = Service("subtest", MemoryStore(), tracing=tracing)

    @service.handles(Act)
    async def handle(cmd: Act, ctx: HandlerContext[None]) -> Acted:
        LOG.append(f"{cmd.what}:{ctx.saga_id}")
        if cmd.fail:
            raise BusinessFailure(Refused())
        return Acted(what=cmd.what, note=f"B-{cmd.person}")

    return service


async def run(saga_id: str, hire: Hire) -> tuple[dict[str, object], list[str]]:
    LOG.clear()
    async with SagaTestEnvironment([onboard, issue_badge], [office()]) as env:
        await env.start(onboard, saga_id, hire)
        await env.settle()
        parent = env.instance(saga_id)
        child = env.instance(f"{saga_id}/badge")
    assert parent is not None and child is not None
    return {"parent": parent, "child": child}, list(LOG)


async def test_the_parent_goes_on_when_its_child_completes() -> None:
    found, log = await run("h-1", Hire(person="ada"))
    parent, child = found["parent"], found["child"]
    assert parent.status is SagaStatus.COMPLETED and parent.state.badge == "B-ada"  # type: ignore[attr-defined]
    assert child.status is SagaStatus.COMPLETED  # type: ignore[attr-defined]
    assert log == ["account:h-1", "print:h-1/badge", "activate:h-1/badge", "welcome:h-1"]


async def test_a_child_that_compensates_fails_the_parents_step() -> None:
    found, log = await run("h-2", Hire(person="bob", badge_refused=True))
    parent, child = found["parent"], found["child"]
    assert child.status is SagaStatus.COMPENSATED  # type: ignore[attr-defined]
    assert parent.status is SagaStatus.COMPENSATED  # type: ignore[attr-defined]
    assert "child saga h-2/badge ended COMPENSATED" in (parent.failure or "")  # type: ignore[attr-defined]
    assert log[-2:] == ["shred:h-2/badge", "close:h-2"]  # the child undid itself, then the parent


async def test_a_parent_compensating_after_its_child_completed_asks_it_to_undo() -> None:
    found, log = await run("h-3", Hire(person="cy", fail_welcome=True))
    parent, child = found["parent"], found["child"]
    assert parent.status is SagaStatus.COMPENSATED and child.status is SagaStatus.COMPENSATED  # type: ignore[attr-defined]
    assert log == [
        "account:h-3",
        "print:h-3/badge",
        "activate:h-3/badge",
        "welcome:h-3",
        "deactivate:h-3/badge",  # the child's own steps, in reverse
        "shred:h-3/badge",
        "close:h-3",  # then the parent's steps before the child
    ]


def test_a_subsaga_needs_a_saga_and_an_input_of_its_state() -> None:
    with pytest.raises(DefinitionError, match="not a Saga"):
        Saga("subtest-bad", state=Hire, steps=[SubSaga("x", saga="nope", input=lambda s: s)])


async def test_the_childs_trace_is_part_of_the_parents() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sagakit.tracing import Tracing

    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env("saga-orchestrator", env={}, exporter=exporter)
    env = SagaTestEnvironment([onboard, issue_badge], [office(tracing)])  # all traced
    for orchestrator in env.orchestrators.values():
        orchestrator.tracing = tracing
    async with env:
        await env.start(onboard, "h-4", Hire(person="dee"))
        await env.settle()
        assert env.instance("h-4").status is SagaStatus.COMPLETED  # type: ignore[union-attr]
    tracing.shutdown()
    spans = exporter.get_finished_spans()
    by_saga: dict[str, set[int]] = {}
    for span in spans:
        saga = (span.attributes or {}).get("saga.id")
        if saga is not None:
            by_saga.setdefault(str(saga), set()).add(span.context.trace_id)
    assert set(by_saga) >= {"h-4", "h-4/badge"}
    assert by_saga["h-4/badge"] == by_saga["h-4"] and len(by_saga["h-4"]) == 1
