"""The one consume loop every role runs on: the orchestrator and every service.

    fetch a batch ──► (lock) process it, shielded, within the grace ──► commit its offsets
                      in the background, overlapped with the next fetch

What it does the same way for every role:

- **Batches.** `getmany` up to `max_records`; the role processes the whole batch and
  returns the offsets to commit, or None when it could not (its sends failed): nothing
  of it is committed, the role has arranged for it to be read again, and the loop backs
  off a little more each time it happens in a row.
- **Shutdown grace.** A cancelled loop finishes the batch in hand first (cancelling a
  client mid-request leaves it failing unobserved); a batch that takes longer than
  `shutdown_grace_s` is given up as failed — loudly — and read again.
- **Commits.** In the background, one at a time (`BackgroundCommit`); a commit refused
  because the group moved the partitions is reported to the role before the next batch.
- **Rebalances.** The role is the subscription's listener; `lock` is held while a batch
  is processed, so a revocation can wait for the batch in hand (`Role.on_revoked`).
- **Readiness.** `Role.ready` and `wait_ready()`; the HTTP endpoints read them.

A *pipelined* role (a `Service`: ``pipelined = True``) is not given batches to finish:
it `dispatch`es each fetched batch into its own lanes, which finish records at their own
pace, and the loop commits what the role reports `committable` after every fetch. On
shutdown the loop waits (within the grace) for the role to `drain` the records in hand
and commits once more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._commits import BackgroundCommit
from ._errors import PartitionsLost
from .transport._base import (
    OutgoingRecord,
    RebalanceListener,
    Record,
    Subscription,
    TopicPartition,
    Transport,
)

log = logging.getLogger("sagakit.runtime")


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How a role consumes: batch size, poll window and the grace of a batch in hand."""

    max_records: int = 500
    poll_timeout_s: float = 0.1
    shutdown_grace_s: float = 30.0


class Role(RebalanceListener, Protocol):
    """What the loop drives (`Orchestrator`, `Service`): a `BatchRole` or a
    `PipelinedRole`."""

    name: str

    def partitions_lost(self, lost: PartitionsLost) -> None:
        """A commit was refused: the partitions no longer assigned are gone."""
        ...

    async def joined(self, loop: ConsumeLoop) -> None:
        """The loop has joined the group: start what runs beside it (in `loop.tg`)."""
        ...

    async def leaving(self) -> None:
        """The loop is stopping and still holds its partitions: hand them over (the
        orchestrator snapshots what changed, so the next owner's restore is short)."""
        ...

    def left(self) -> None:
        """The loop has stopped: drop what belongs to the subscription."""
        ...


class BatchRole(Role, Protocol):
    """A role that finishes each batch before the next (the orchestrator)."""

    async def process(self, records: Sequence[Record]) -> Mapping[TopicPartition, int] | None:
        """Handle one batch; the offsets to commit, or None if it failed (and will be read
        again: the role has seen to that)."""
        ...

    def batch_failed(self, records: Sequence[Record], why: str) -> None:
        """A batch did not finish within the grace: nothing of it is committed."""
        ...


class PipelinedRole(Role, Protocol):
    """A role that takes batches into lanes of its own (a service)."""

    pipelined: bool

    async def dispatch(self, records: Sequence[Record]) -> None:
        """Take a fetched batch (may wait while the role is full)."""
        ...

    def committable(self) -> Mapping[TopicPartition, int]:
        """Offsets below which everything is finished, not handed out before."""
        ...

    async def drain(self) -> None:
        """Wait for the records in hand, at most the shutdown grace."""
        ...


class ConsumeLoop:
    """One role's consumer-group membership and batch loop."""

    def __init__(
        self,
        role: BatchRole | PipelinedRole,
        transport: Transport,
        topics: Sequence[str],
        group_id: str,
        settings: LoopSettings,
    ) -> None:
        self.role = role
        self.transport = transport
        self.topics = list(topics)
        self.group_id = group_id
        self.settings = settings
        self.lock = anyio.Lock()
        self.commit = BackgroundCommit()
        self.sub: Subscription | None = None
        self._tg: TaskGroup | None = None
        self.failing = 0  # batches failed in a row

    @property
    def tg(self) -> TaskGroup:
        """The task group of the running loop (for what runs beside it)."""
        if self._tg is None:
            raise RuntimeError(f"{self.role.name}: the consume loop is not running")
        return self._tg

    @property
    def running(self) -> bool:
        return self._tg is not None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until cancelled; started once subscribed (the group may still be joining)."""
        settings = self.settings
        async with (
            self.transport.subscribe(
                self.topics, group_id=self.group_id, listener=self.role
            ) as sub,
            anyio.create_task_group() as tg,
        ):
            self.sub, self._tg = sub, tg
            await self.role.joined(self)
            task_status.started()
            pipe = self.role if getattr(self.role, "pipelined", False) else None
            try:
                while True:
                    records = await sub.getmany(
                        timeout=settings.poll_timeout_s, max_records=settings.max_records
                    )
                    if pipe is not None:
                        if records:
                            await cast(PipelinedRole, pipe).dispatch(records)
                        await self._commit_progress(sub)
                    elif records:
                        await self._batch(sub, records)
            finally:
                if pipe is not None:
                    with anyio.CancelScope(shield=True):  # the role keeps to the grace
                        await cast(PipelinedRole, pipe).drain()
                        await self.commit_now(cast(PipelinedRole, pipe).committable())
                await self.commit.wait()
                with anyio.CancelScope(shield=True), anyio.move_on_after(settings.shutdown_grace_s):
                    await self.role.leaving()
                self.sub = self._tg = None
                self.role.left()

    async def _commit_progress(self, sub: Subscription) -> None:
        """Commit what a pipelined role has finished, one commit at a time."""
        if self.commit.busy:
            return
        lost = await self.commit.wait()
        if lost is not None:
            self.role.partitions_lost(lost)
        offsets = cast(PipelinedRole, self.role).committable()
        if offsets:
            self.commit.start(self.tg, sub, offsets)

    async def commit_now(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit `offsets` before going on (a revocation, the end): after the commit in
        flight, in order."""
        lost = await self.commit.wait()
        if lost is not None:
            self.role.partitions_lost(lost)
        if not offsets or self.sub is None:
            return
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30.0):
                await self.sub.commit(offsets)
        except PartitionsLost as exc:
            self.role.partitions_lost(exc)

    async def _batch(self, sub: Subscription, records: Sequence[Record]) -> None:
        async with self.lock:
            # the previous batch's commit, overlapped with this fetch
            lost = await self.commit.wait()
            if lost is not None:
                self.role.partitions_lost(lost)
            offsets: Mapping[TopicPartition, int] | None = None
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self.settings.shutdown_grace_s) as limit,
            ):
                offsets = await cast(BatchRole, self.role).process(records)
            if limit.cancelled_caught:
                cast(BatchRole, self.role).batch_failed(
                    records, f"it did not finish within {self.settings.shutdown_grace_s}s"
                )
                offsets = None
            if offsets is None:
                self.failing += 1
            else:
                self.failing = 0
                if offsets:
                    self.commit.start(self.tg, sub, offsets)
        if self.failing:  # back off while batches keep failing
            await anyio.sleep(min(0.05 * 2 ** (self.failing - 1), 5.0))


def first_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """The first offset of each partition in a batch (where to read it again from)."""
    firsts: dict[TopicPartition, int] = {}
    for record in records:
        firsts.setdefault(record.tp, record.offset)
    return firsts


class _Ticket:
    __slots__ = ("done", "error", "lead", "records")

    def __init__(self, records: Sequence[OutgoingRecord]) -> None:
        self.records = records
        self.done = anyio.Event()
        self.error: Exception | None = None
        self.lead = False


class Sender:
    """Sends what records handled side by side produce, many callers' records in one
    `transport.send`: a caller that finds no send in flight sends at once; those that
    come meanwhile go together in the next one, sent by the first of them.

    Each caller waits until its records are acknowledged (or gets the TransportError).
    A caller's records stay in order, and callers are sent in the order they came.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._queue: list[_Ticket] = []
        self._sending = False

    async def send(self, records: Sequence[OutgoingRecord]) -> None:
        ticket = _Ticket(records)
        self._queue.append(ticket)
        if self._sending:
            await ticket.done.wait()
            if not ticket.lead:
                if ticket.error is not None:
                    raise ticket.error
                return
        self._sending = True
        batch, self._queue = self._queue, []
        error: Exception | None = None
        try:
            await self.transport.send([r for t in batch for r in t.records])
        except Exception as exc:  # every caller of the batch learns it
            error = exc
        finally:
            for t in batch:
                t.error, t.lead = error, False
                t.done.set()
            if self._queue:  # the next one sends what came meanwhile
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()
                nxt.done = anyio.Event()
            else:
                self._sending = False
        if error is not None:
            raise error
