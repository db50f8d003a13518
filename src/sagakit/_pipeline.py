"""Records of different sagas at once, the records of one saga in order.

A participant's records are keyed by saga id, so one saga's records are in one partition,
in offset order. The pipeline gives each (partition, key) a lane: a lane handles its
records one after another, lanes run side by side, up to `concurrency` records at once
in the process and `partition_concurrency` in one partition. An offset is committable
only once it and every offset before it in its partition are done, so a crash re-reads
exactly the records that were not finished (and the store answers those that were).

    fetch ──► dispatch ──► lane (partition 3, saga a) ──► work ──► done ──► watermark ──► commit
                      └──► lane (partition 3, saga b) ──► work ──► done ─┘
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
from anyio.abc import TaskGroup

from .transport._base import Record, TopicPartition

log = logging.getLogger("sagakit.pipeline")

#: Handle one record; True once it is done (False: given up, as its partition is gone).
Work = Callable[[Record], Awaitable[bool]]


class Watermarks:
    """Per partition, the offset below which every dispatched record is done."""

    def __init__(self) -> None:
        self._entries: dict[TopicPartition, deque[list[int]]] = {}  # [offset, done]
        self._open: dict[tuple[TopicPartition, int], list[int]] = {}
        self._mark: dict[TopicPartition, int] = {}
        self._reported: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        entry = [offset, 0]
        self._entries.setdefault(tp, deque()).append(entry)
        self._open[(tp, offset)] = entry

    def done(self, tp: TopicPartition, offset: int) -> None:
        entry = self._open.pop((tp, offset), None)
        if entry is None:
            return  # its partition was dropped meanwhile
        entry[1] = 1
        entries = self._entries[tp]
        while entries and entries[0][1]:
            self._mark[tp] = entries.popleft()[0] + 1

    def unfinished(self, tp: TopicPartition) -> int:
        return len(self._entries.get(tp, ()))

    def committable(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """Offsets to commit that moved since they were last handed out."""
        wanted = (
            self._mark
            if partitions is None
            else {tp: self._mark[tp] for tp in partitions if tp in self._mark}
        )
        moved = {tp: m for tp, m in wanted.items() if self._reported.get(tp) != m}
        self._reported.update(moved)
        return moved

    def drop(self, tp: TopicPartition) -> None:
        for entry in self._entries.pop(tp, ()):
            self._open.pop((tp, entry[0]), None)
        self._mark.pop(tp, None)
        self._reported.pop(tp, None)


class Pipeline:
    """Lanes of records, bounded, ordered per key; see the module's docstring."""

    def __init__(
        self,
        work: Work,
        *,
        concurrency: int,
        partition_concurrency: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if partition_concurrency is not None and partition_concurrency < 1:
            raise ValueError(
                f"partition_concurrency must be at least 1, not {partition_concurrency}"
            )
        self._work = work
        self.concurrency = concurrency
        self.partition_concurrency = partition_concurrency or concurrency
        #: records dispatched and not done, at most: beyond it, `dispatch` waits
        self.max_pending = max_pending or max(4 * concurrency, 1000)
        self.watermarks = Watermarks()
        self._lanes: dict[tuple[TopicPartition, bytes | None], deque[Record]] = {}
        self._active: set[TopicPartition] = set()
        self._slots: anyio.CapacityLimiter | None = None
        self._partition_slots: dict[TopicPartition, anyio.CapacityLimiter] = {}
        self._running: dict[TopicPartition, int] = {}
        self._pending = 0
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None

    # -- the loop's side ----------------------------------------------------------------
    def start(self, tg: TaskGroup) -> None:
        """Run lanes in `tg` from now on (the consume loop's task group)."""
        self._tg = tg
        self._slots = anyio.CapacityLimiter(self.concurrency)
        self._changed = anyio.Event()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Take records of these partitions (a new assignment: positions start afresh)."""
        for tp in partitions:
            if tp not in self._active:
                self.watermarks.drop(tp)
                self._active.add(tp)

    async def dispatch(self, records: Sequence[Record]) -> None:
        """Queue records in their lanes; waits while `max_pending` are unfinished."""
        assert self._tg is not None, "start() the pipeline first"
        for record in records:
            tp = record.tp
            if tp not in self._active:
                continue  # revoked after the fetch: the new owner reads it
            while self._pending >= self.max_pending:
                await self._wait_change()
            self.watermarks.add(tp, record.offset)
            self._pending += 1
            key = (tp, record.key)
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append(record)
            else:
                self._lanes[key] = deque([record])
                self._tg.start_soon(self._lane, key)

    def committable(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        return self.watermarks.committable(partitions)

    async def revoke(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stop taking records of `partitions`, wait for those being handled, and return
        their final offsets to commit; their queued records are left to the next owner."""
        gone = set(partitions) & self._active
        self._active -= gone
        for key in [k for k in self._lanes if k[0] in gone]:
            lane = self._lanes[key]
            while len(lane) > 1:  # the first may be in hand: its lane sees to it
                lane.pop()
                self._pending -= 1
        self._notify()
        while any(self._running.get(tp) for tp in gone):
            await self._wait_change()
        offsets = self.watermarks.committable(gone)
        for tp in gone:
            self.watermarks.drop(tp)
            self._partition_slots.pop(tp, None)
        return offsets

    async def drain(self) -> None:
        """Wait until no record is being handled (on shutdown: the loop is cancelled, so
        no lane starts another)."""
        while any(self._running.values()):
            await self._wait_change()

    @property
    def pending(self) -> int:
        """Records dispatched and not done."""
        return self._pending

    # -- lanes ------------------------------------------------------------------------------
    async def _lane(self, key: tuple[TopicPartition, bytes | None]) -> None:
        tp = key[0]
        lane = self._lanes[key]
        try:
            while lane:
                record = lane[0]
                if tp not in self._active:
                    break
                slots = self._partition_slots.get(tp)
                if slots is None:
                    slots = self._partition_slots[tp] = anyio.CapacityLimiter(
                        self.partition_concurrency
                    )
                assert self._slots is not None
                async with slots, self._slots:
                    if tp not in self._active:
                        break
                    self._running[tp] = self._running.get(tp, 0) + 1
                    try:
                        done = await self._work(record)
                    finally:
                        self._running[tp] -= 1
                        if not self._running[tp]:
                            del self._running[tp]
                        self._notify()
                if not done:
                    break
                lane.popleft()
                self._pending -= 1
                self.watermarks.done(tp, record.offset)
                self._notify()
        finally:
            self._pending -= len(lane)
            lane.clear()
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()
