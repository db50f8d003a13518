"""The projector: follows the journal and dead-letter topics into the read model.

It is a role of the one consume loop (`_runtime.ConsumeLoop`). Its consumer group is
named after the read model's id, so projectors sharing one database (PostgreSQL) share
the partitions, and a projector with a database of its own reads them all. Each batch is
written with its partitions' positions in one transaction (`ReadStore.project`); offsets
are committed to the group after that, for lag metrics only: on assignment the projector
seeks to the positions the database holds, so what it read is what it wrote, exactly
once, whatever the group has committed.

Topics are found by name in the namespace (``*.journal``, ``*.dlq``), again every
`discover_s`: a saga type deployed later is followed from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._definition import Saga
from ._errors import PartitionsLost
from ._faults import fault_point
from ._inspect import _as_of_snapshot
from ._metrics import Metrics
from ._readmodel import is_dlq, is_journal
from ._readstore import ReadStore
from ._runtime import ConsumeLoop, LoopSettings, first_offsets
from .transport._base import Record, Subscription, TopicPartition, Transport

log = logging.getLogger("sagakit.readmodel")


@dataclass
class ProjectorStats:
    batches: int = 0
    transitions: int = 0
    letters: int = 0
    fenced: int = 0
    anomalies: int = 0


class Projector:
    """Keeps a `ReadStore` up to date with the journals and DLQs of `namespace`."""

    name = "read-model"

    def __init__(
        self,
        transport: Transport,
        store: ReadStore,
        *,
        namespace: str = "",
        sagas: Sequence[Saga[Any]] = (),
        discover_s: float = 10.0,
        settings: LoopSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.transport = transport
        self.store = store
        self.namespace = namespace
        self.searchable: dict[str, tuple[str, ...]] = {}
        for saga in sagas:
            self.searchable[saga.name] = tuple(
                dict.fromkeys((*self.searchable.get(saga.name, ()), *saga.searchable))
            )
        self.discover_s = discover_s
        self.settings = settings or LoopSettings(max_records=2000, poll_timeout_s=0.2)
        self.metrics = metrics
        self.stats = ProjectorStats()
        self.topics: frozenset[str] = frozenset()
        self._loop: ConsumeLoop | None = None
        self._pending: frozenset[TopicPartition] = frozenset()
        self._joined = anyio.Event()
        self._seen: set[TopicPartition] = set()
        if metrics is not None:
            metrics.watch_lag(lambda: self._sub)

    @property
    def _sub(self) -> Subscription | None:
        return self._loop.sub if self._loop is not None else None

    @property
    def ready(self) -> bool:
        """True once it follows the topics (the read model may still be catching up)."""
        return self._joined.is_set()

    async def lag(self) -> int:
        """Records of the followed topics not yet projected."""
        sub = self._sub
        return sum((await sub.lag()).values()) if sub is not None else 0

    async def discover(self) -> frozenset[str]:
        existing = await self.transport.existing_topics()
        return frozenset(
            t for t in existing if t.startswith(self.namespace) and (is_journal(t) or is_dlq(t))
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the topics until cancelled (started once the first topics are followed,
        or at once when none exist yet)."""
        await self.store.open()
        group = f"sagakit-read-model-{await self.store.identity()}"
        started = False
        while True:
            self.topics = await self.discover()
            if not self.topics:
                if not started:
                    task_status.started()
                    started = True
                    self._joined.set()
                await anyio.sleep(min(self.discover_s, 2.0))
                continue
            topics = sorted(self.topics)
            self._loop = ConsumeLoop(self, self.transport, topics, group, self.settings)
            async with anyio.create_task_group() as tg:
                await tg.start(self._loop.run)
                if not started:
                    task_status.started()
                    started = True
                tg.start_soon(self._watch_topics, tg.cancel_scope)
            log.info("read model: new topics to follow; joining again")

    async def _watch_topics(self, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(self.discover_s)
            if await self.discover() - self.topics:
                scope.cancel()
                return

    # -- the role -----------------------------------------------------------------------
    async def joined(self, loop: ConsumeLoop) -> None:
        self._joined.set()
        if self._pending:
            await self.on_assigned(self._pending)

    async def leaving(self) -> None:
        return None

    def left(self) -> None:
        self._pending = frozenset()

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        loop = self._loop
        if loop is not None:
            async with loop.lock:  # the batch in hand is written first
                await loop.commit.wait()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        loop = self._loop
        if loop is None or loop.sub is None or not loop.running:
            self._pending = partitions
            return
        self._pending = frozenset()
        positions = await self.store.positions()
        for tp in partitions:
            at = positions.get((tp.topic, tp.partition))
            if at is not None:
                loop.sub.seek(tp, at.next_offset)

    def partitions_lost(self, lost: PartitionsLost) -> None:
        log.info("read model: partitions moved to another projector: %s", lost)

    async def _seed_trimmed(self, records: Sequence[Record]) -> None:
        """A journal partition seen for the first time whose first record is not at offset
        0: the journal's retention deleted what came before, so the sagas that have not
        changed since are taken from its latest snapshot (the live ones whole, the ended
        ones it remembers by id and final status)."""
        firsts = first_offsets(records)
        new = [tp for tp in firsts if is_journal(tp.topic) and tp not in self._seen]
        if not new:
            return
        positions = await self.store.positions()
        for tp in new:
            self._seen.add(tp)
            if firsts[tp] == 0 or (tp.topic, tp.partition) in positions:
                continue
            replayer = await _as_of_snapshot(self.transport, tp.topic, tp.partition)
            if replayer is None:
                log.warning(
                    "read model: %s[%d] keeps its records from offset %d on and has no "
                    "snapshot: sagas that have not changed since are not in the read model",
                    tp.topic,
                    tp.partition,
                    firsts[tp],
                )
                continue
            saga_type = tp.topic[len(self.namespace) : -len(".journal")]
            await self.store.seed(tp.topic, tp.partition, replayer, saga_type)

    async def process(self, records: Sequence[Record]) -> Mapping[TopicPartition, int] | None:
        try:
            await self._seed_trimmed(records)
            fault_point("projector.before-write")
            done = await self.store.project(records, self.searchable)
            fault_point("projector.after-write")
        except Exception:
            log.exception("read model: writing a batch of %d record(s) failed", len(records))
            loop = self._loop
            if loop is not None and loop.sub is not None:
                for tp, offset in first_offsets(records).items():
                    loop.sub.seek(tp, offset)  # read it again
            return None
        self.stats.batches += 1
        self.stats.transitions += done.transitions
        self.stats.letters += done.letters
        self.stats.fenced += done.fenced
        self.stats.anomalies += len(done.anomalies)
        for anomaly in done.anomalies[:5]:
            log.warning("read model: skipped %s", anomaly)
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            offsets[r.tp] = r.offset + 1
        return offsets

    def batch_failed(self, records: Sequence[Record], why: str) -> None:
        log.error("read model: a batch of %d record(s) failed: %s", len(records), why)
