"""Time, as the orchestrator's timers and a participant's retries see it.

Everything that waits for business time (step timeouts, back-offs, saga deadlines,
handler retries) asks a `Clock`; record timestamps come from the transport. Production
runs on the system clock; `sagakit.testing.VirtualClock` makes a 30 s timeout a step
of a test.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

import anyio

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock (at once if not positive)."""
        ...


class SystemClock:
    """The machine's clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class _FunctionClock:
    """A bare time function (``clock=time.time``) as a clock that sleeps in real time."""

    def __init__(self, fn: Callable[[], float]) -> None:
        self._fn = fn

    def time(self) -> float:
        return self._fn()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    if clock is None:
        return SYSTEM_CLOCK
    if isinstance(clock, Clock):
        return clock
    return _FunctionClock(clock)


async def within(clock: Clock, seconds: float | None, fn: Callable[[], Awaitable[T]]) -> T:
    """`await fn()`, raising TimeoutError once `seconds` have passed on `clock` first."""
    if seconds is None:
        return await fn()
    if isinstance(clock, SystemClock):
        with anyio.fail_after(seconds):
            return await fn()
    results: list[T] = []
    error: BaseException | None = None
    expired = False
    async with anyio.create_task_group() as tg:

        async def expire() -> None:
            nonlocal expired
            await clock.sleep(seconds)
            expired = True
            tg.cancel_scope.cancel()

        tg.start_soon(expire)
        try:
            results.append(await fn())
        except Exception as exc:  # raised as it is, not in an exception group
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if expired and not results:
        raise TimeoutError(f"no result within {seconds}s")
    return results[0]


async def wait_until(event: anyio.Event, timeout_s: float | None, clock: Clock) -> None:
    """Until `event` is set, or `timeout_s` has passed on `clock` (None: no limit)."""
    if timeout_s is None:
        await event.wait()
        return
    until = clock.time() + timeout_s  # from now, not from when `elapse` gets to run
    async with anyio.create_task_group() as tg:

        async def elapse() -> None:
            await clock.sleep(max(0.0, until - clock.time()))
            tg.cancel_scope.cancel()

        tg.start_soon(elapse)
        await event.wait()
        tg.cancel_scope.cancel()
