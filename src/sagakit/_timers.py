"""The in-memory schedule of a saga owner's durable timers.

The timers themselves are part of each journaled saga instance (`timers()`); this
schedule only knows when to fire which, per owned partition. A timer fires by writing
a `TimerFired` record to the owner's own inbox partition, so it is ordered with the
replies, and is then decided like any other message (a stale one changes nothing).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

import anyio

from ._clock import Clock, wait_until
from ._evaluator import Timer
from .transport._base import TopicPartition


class TimerSchedule:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, TopicPartition, Timer]] = []
        self._current: dict[TopicPartition, dict[str, frozenset[str]]] = {}
        self._counter = itertools.count()
        self._wakeup = anyio.Event()

    def __len__(self) -> int:
        return sum(len(ids) for by_saga in self._current.values() for ids in by_saga.values())

    def set(self, tp: TopicPartition, saga_id: str, timers: Iterable[Timer]) -> None:
        """Replace the timers of one saga."""
        timers = tuple(timers)
        by_saga = self._current.setdefault(tp, {})
        if not timers:
            by_saga.pop(saga_id, None)
            return
        by_saga[saga_id] = frozenset(t.message_id for t in timers)
        earliest = self._heap[0][0] if self._heap else None
        for t in timers:
            heapq.heappush(self._heap, (t.due_ms, next(self._counter), tp, t))
        if earliest is None or min(t.due_ms for t in timers) < earliest:
            self._wake()

    def drop_partition(self, tp: TopicPartition) -> None:
        self._current.pop(tp, None)

    def _valid(self, tp: TopicPartition, timer: Timer) -> bool:
        ids = self._current.get(tp, {}).get(timer.saga_id)
        return ids is not None and timer.message_id in ids

    def pop_due(self, now_ms: int) -> list[tuple[TopicPartition, Timer]]:
        """Timers due at `now_ms` (each handed out once)."""
        due = []
        while self._heap and self._heap[0][0] <= now_ms:
            _, _, tp, timer = heapq.heappop(self._heap)
            if self._valid(tp, timer):
                due.append((tp, timer))
                ids = self._current[tp][timer.saga_id] - {timer.message_id}
                if ids:
                    self._current[tp][timer.saga_id] = ids
                else:
                    del self._current[tp][timer.saga_id]
        return due

    def next_due_ms(self) -> int | None:
        while self._heap and not self._valid(self._heap[0][2], self._heap[0][3]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = anyio.Event()

    async def wait(self, timeout_s: float | None, clock: Clock) -> None:
        """Sleep until `timeout_s` passed on `clock` (None: no timer is due), or an
        earlier timer was added."""
        await wait_until(self._wakeup, timeout_s, clock)
