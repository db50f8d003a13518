"""Committing a batch's offsets while the next batch is fetched.

The offsets of batch N are committed after its effects are durable; waiting for that
commit before fetching batch N+1 costs a broker round trip per batch for nothing, since
a commit that never lands only means the batch is delivered again, and redelivery is
absorbed by the message-id deduplication. So the commit runs in the background and is
awaited before the next one starts (commits stay in order), before a revocation
completes, and on shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from anyio.abc import TaskGroup

from ._errors import PartitionsLost
from .transport._base import Subscription, TopicPartition


class BackgroundCommit:
    """At most one commit in flight; `wait()` reports a refused one (partitions lost)."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._done: anyio.Event | None = None
        self._lost: PartitionsLost | None = None
        self._timeout_s = timeout_s

    @property
    def busy(self) -> bool:
        """A commit is in flight."""
        return self._done is not None and not self._done.is_set()

    def start(
        self, tg: TaskGroup, sub: Subscription, offsets: Mapping[TopicPartition, int]
    ) -> None:
        if self._done is not None:
            raise RuntimeError("a commit is already in flight: wait() for it first")
        done = self._done = anyio.Event()
        offsets = dict(offsets)

        async def commit() -> None:
            try:
                # never cancelled halfway: a request cut off inside the client fails
                # unobserved when its connection closes
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout_s):
                    await sub.commit(offsets)
            except PartitionsLost as exc:
                self._lost = exc
            finally:
                done.set()

        tg.start_soon(commit)

    async def wait(self) -> PartitionsLost | None:
        """Wait for the commit in flight (if any); the PartitionsLost it met, if it did."""
        done, self._done = self._done, None
        if done is not None:
            with anyio.CancelScope(shield=True):
                await done.wait()
        lost, self._lost = self._lost, None
        return lost
