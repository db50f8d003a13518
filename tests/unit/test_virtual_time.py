"""The test kit's virtual time: a saga's 30 s timeouts, back-offs and its deadline fire when
the test moves the clock, in order, the same way every run, in milliseconds. None of
these could pass on real time without waiting for minutes."""

from __future__ import annotations

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    App,
    Command,
    HandlerContext,
    MemoryStore,
    Reply,
    RetryPolicy,
    Saga,
    SagaError,
    SagaStatus,
    Service,
    Step,
)
from sagakit.testing import SagaTestEnvironment, VirtualClock

pytestmark = pytest.mark.anyio


class Reserve(Command, type="vtime.Reserve"):
    ref: str


class Reserved(Reply, type="vtime.Reserved"):
    pass


class Busy(Reply, type="vtime.Busy"):
    pass


class Release(Command, type="vtime.Release"):
    ref: str


class Released(Reply, type="vtime.Released"):
    pass


class Ship(Command, type="vtime-ship.Ship"):
    ref: str


class Shipped(Reply, type="vtime-ship.Shipped"):
    pass


class Ref(BaseModel):
    ref: str


PATIENT = RetryPolicy(max_attempts=3, timeout_s=30, initial_backoff_s=10, jitter=0)


def trip(
    name: str, *, deadline_s: float | None = None, ship_timeout: float | None = 30
) -> Saga[Ref]:
    return Saga(
        name,
        state=Ref,
        deadline_s=deadline_s,
        steps=[
            Step(
                "reserve",
                invoke=Reserve,
                on_reply={Reserved: None},
                retry=PATIENT,
                retry_on=[Busy],
                compensate=Release,
            ),
            Step(
                "ship",
                invoke=Ship,
                on_reply={Shipped: None},
                retry=RetryPolicy(max_attempts=2, timeout_s=ship_timeout, jitter=0)
                if ship_timeout
                else RetryPolicy(),
                compensate=Release,
            ),
        ],
    )


class World:
    """A participant whose answers the test decides: silent, busy, or fine."""

    def __init__(self) -> None:
        self.busy_until: dict[str, int] = {}  # per ref (= saga id): busy for this many asks
        self.seen: list[str] = []
        self.service: Service[None] = Service("vtime", MemoryStore())
        self.shipper: Service[None] = Service("vtime-ship", MemoryStore())
        s = self.service

        @s.handles(Reserve)
        def reserve(cmd: Reserve, ctx: HandlerContext[None]) -> Reply | None:
            self.seen.append(ctx.message_id)
            # busy for the first n asks of this saga (sagas run side by side: never count
            # another saga's calls)
            asked = sum(1 for m in self.seen if m.startswith(f"{ctx.saga_id}:reserve:"))
            if self.busy_until.get(cmd.ref, 0) >= asked:
                return Busy()
            return Reserved()

        @self.shipper.handles(Ship)
        def ship(cmd: Ship, ctx: HandlerContext[None]) -> Shipped:
            self.seen.append(ctx.message_id)
            return Shipped()

        @s.handles(Release)
        def release(cmd: Release, ctx: HandlerContext[None]) -> Released:
            self.seen.append(ctx.message_id)
            return Released()


def events(env: SagaTestEnvironment, saga_id: str) -> list[tuple[float, str, str | None]]:
    """(virtual seconds since the start, event, step) of a saga's transitions."""
    ts = [t for t in env.transitions if t.saga_id == saga_id]
    start = ts[0].at_ms
    return [((t.at_ms - start) / 1000, t.event, t.step) for t in ts]


def silent_service() -> Service[None]:
    """Reserves and releases; nothing serves vtime-ship.commands: ships go unanswered."""
    service: Service[None] = Service("vtime", MemoryStore())

    @service.handles(Reserve)
    def reserve(cmd: Reserve, ctx: HandlerContext[None]) -> Reserved:
        return Reserved()

    @service.handles(Release)
    def release(cmd: Release, ctx: HandlerContext[None]) -> Released:
        return Released()

    return service


async def test_a_30_second_timeout_fires_when_the_clock_passes_it_and_not_before() -> None:
    saga = trip("vtime-timeout")
    # nothing reads the Ship commands: they go unanswered
    async with SagaTestEnvironment([saga], [silent_service()]) as env:
        await env.start(saga, "t-1", Ref(ref="t-1"))
        await env.settle()
        assert env.instance("t-1").pending.message_id == "t-1:ship:1"  # type: ignore[union-attr]
        await env.advance(29.999)
        assert env.instance("t-1").pending.message_id == "t-1:ship:1"  # type: ignore[union-attr]
        await env.advance(0.001)  # 30 s: attempt 1 timed out, attempt 2 waits 0.5 s
        after = env.instance("t-1")
        await env.advance(600)
        ended = env.instance("t-1")
    assert after is not None and after.status is SagaStatus.RUNNING
    assert after.next is not None and after.next.attempt == 2
    assert ended is not None and ended.status is SagaStatus.COMPENSATED
    ship = [(at, event) for at, event, step in events(env, "t-1") if step == "ship"]
    # attempt 2 after the policy's default 0.5 s back-off times out 30 s later: the step
    # gave up (it may have taken effect, so it is undone too), then reserve is undone
    assert ship == [
        (30.0, "retry-scheduled"),
        (30.5, "retry"),
        (60.5, "step-failed"),
        (60.5, "step-compensated"),
    ]
    assert events(env, "t-1")[-1][1:] == ("step-compensated", "reserve")


async def test_back_offs_fire_in_order_at_their_virtual_time() -> None:
    saga = trip("vtime-backoff")
    world = World()
    world.busy_until["b-1"] = 2  # busy twice, then reserved
    async with SagaTestEnvironment([saga], [world.service, world.shipper]) as env:
        await env.start(saga, "b-1", Ref(ref="b-1"))
        await env.settle()
        assert world.seen == ["b-1:reserve:1"]
        await env.advance(9.9)  # the first back-off is 10 s
        assert world.seen == ["b-1:reserve:1"]
        await env.advance(0.1)
        assert world.seen == ["b-1:reserve:1", "b-1:reserve:2"]
        await env.advance(20)  # the second back-off doubles: 20 s
        ended = await env.wait_until_ended("b-1")
    assert ended.status is SagaStatus.COMPLETED
    assert world.seen == ["b-1:reserve:1", "b-1:reserve:2", "b-1:reserve:3", "b-1:ship:1"]
    sends = [(at, e) for at, e, step in events(env, "b-1") if e in ("retry",)]
    assert [at for at, _ in sends] == [10.0, 30.0]


async def test_a_saga_deadline_an_hour_away_fires_in_milliseconds() -> None:
    saga = trip("vtime-deadline", deadline_s=3600, ship_timeout=None)  # ship waits for ever
    async with SagaTestEnvironment([saga], [silent_service()]) as env:
        await env.start(saga, "d-1", Ref(ref="d-1"))
        await env.advance(3599)
        before = env.instance("d-1")
        await env.advance(1)
        ended = await env.wait_until_ended("d-1")
    assert before is not None and before.status is SagaStatus.RUNNING
    assert ended.status is SagaStatus.COMPENSATED and ended.failure == "saga deadline passed"
    # the ship in flight may have taken effect: undone too, then reserve
    assert events(env, "d-1")[-3:] == [
        (3600.0, "deadline-passed", "ship"),
        (3600.0, "step-compensated", "ship"),
        (3600.0, "step-compensated", "reserve"),
    ]


async def test_the_same_run_gives_the_same_timeline_every_time() -> None:
    async def run() -> list[tuple[str, float, str, str | None]]:
        saga = trip("vtime-determinism")
        world = World()
        world.busy_until.update({"x": 1, "y": 2})
        async with SagaTestEnvironment(
            [saga], [world.service, world.shipper], clock=VirtualClock()
        ) as env:
            for ref in ("x", "y", "z"):
                await env.start(saga, ref, Ref(ref=ref))
            await env.advance(120)
        return [(saga_id, *e) for saga_id in ("x", "y", "z") for e in events(env, saga_id)]

    first, second = await run(), await run()
    assert first == second
    assert {e for _, _, e, _ in first} >= {"started", "retry-scheduled", "retry"}


async def test_a_handlers_retry_back_off_waits_on_the_virtual_clock() -> None:
    saga = Saga(
        "vtime-handler",
        state=Ref,
        steps=[Step("reserve", invoke=Reserve, on_reply={Reserved: None})],
    )
    calls: list[str] = []
    service: Service[None] = Service(
        "vtime", MemoryStore(), handler_attempts=2, handler_backoff_s=60
    )

    @service.handles(Reserve)
    def reserve(cmd: Reserve, ctx: HandlerContext[None]) -> Reserved:
        calls.append(ctx.message_id)
        if len(calls) == 1:
            raise ConnectionError("the database restarts")
        return Reserved()

    async with SagaTestEnvironment(App("vtime", sagas=[saga], services=[service])) as env:
        await env.start(saga, "h-1", Ref(ref="h-1"))
        await env.settle()
        assert calls == ["h-1:reserve:1"]  # it failed once and sleeps 60 virtual seconds
        await env.advance(60)
        ended = await env.wait_until_ended("h-1")
    assert calls == ["h-1:reserve:1", "h-1:reserve:1"]
    assert ended.status is SagaStatus.COMPLETED


async def test_on_real_time_advance_says_there_is_no_virtual_clock() -> None:
    saga = trip("vtime-real")
    async with SagaTestEnvironment([saga], [silent_service()], virtual_time=False) as env:
        with pytest.raises(SagaError, match="system clock"):
            await env.advance(1)


async def test_a_timer_wait_whose_moment_passed_returns_on_the_system_clock() -> None:
    # The orchestrator computes a wait, then the loop is busy past it: the wait must end at
    # once and the timer fire, not crash the timer task with a negative sleep (which
    # killed orchestrators under chaos: their sagas waited for the next restart).
    from sagakit import SystemClock, TopicPartition
    from sagakit._evaluator import Timer
    from sagakit._timers import TimerSchedule

    class Late(SystemClock):
        calls = 0

        def time(self) -> float:
            self.calls += 1
            return super().time() + (0.5 if self.calls > 1 else 0.0)  # later at each look

    clock = Late()
    schedule = TimerSchedule()
    tp = TopicPartition("vtime.inbox", 0)
    timer = Timer("s-1", "timeout", "s-1:ship:1", round(SystemClock().time() * 1000) + 1)
    schedule.set(tp, "s-1", [timer])
    with anyio.fail_after(2):
        await schedule.wait(0.001, clock)  # by now the clock is 0.5 s past the moment
    assert schedule.pop_due(round(clock.time() * 1000)) == [(tp, timer)]
