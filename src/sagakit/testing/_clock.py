"""A clock that moves only when a test says so."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

#: 2027-01-01T00:00:00Z: a fixed start, so that runs of a test see the same times.
EPOCH = 1_798_761_600.0

#: Sleepers due within this much of the clock's time wake: near 2027 a float second holds
#: only about seven decimal places, and ``now + seconds`` may land a hair past the mark.
RESOLUTION = 1e-6


@dataclass(order=True)
class _Sleeper:
    due: float
    seq: int
    event: anyio.Event = field(compare=False)
    done: bool = field(default=False, compare=False)


class VirtualClock:
    """Virtual time: `time()` stands still until `set` (or `SagaTestEnvironment.advance`)
    moves it, and `sleep` returns when it has moved far enough."""

    def __init__(self, start: float = EPOCH) -> None:
        self._now = start
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(self._now + seconds, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, sleeper)
        try:
            await sleeper.event.wait()
        finally:
            sleeper.done = True  # woken, or cancelled: no longer waits

    def next_due(self) -> float | None:
        """When the earliest sleeper wakes up (None: nobody sleeps)."""
        while self._sleepers and self._sleepers[0].done:
            heapq.heappop(self._sleepers)
        return self._sleepers[0].due if self._sleepers else None

    @property
    def sleeping(self) -> int:
        return sum(1 for s in self._sleepers if not s.done)

    def set(self, when: float) -> None:
        """Move to `when` (never backwards), waking every sleeper due by then, in order."""
        self._now = max(self._now, when)
        while self._sleepers and (
            self._sleepers[0].done or self._sleepers[0].due <= self._now + RESOLUTION
        ):
            sleeper = heapq.heappop(self._sleepers)
            if not sleeper.done:
                sleeper.done = True
                sleeper.event.set()
