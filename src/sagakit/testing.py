"""An in-memory environment for testing sagas and services without a broker.

    async with SagaTestEnvironment([place_order], [payments, inventory]) as env:
        await env.start(place_order, "order-1", OrderState(...))
        instance = await env.wait_until_ended("order-1")
        assert instance.status is SagaStatus.COMPLETED

Everything runs on a `MemoryTransport` with the same code paths as on Kafka:
orchestrators journal, participants deduplicate, bad records go to DLQ topics.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel

from ._client import SagaClient
from ._definition import Saga
from ._dlq import dlq_topic
from ._errors import SagaError
from ._evaluator import SagaInstance, Transition
from ._interceptors import Interceptor
from ._orchestrator import Orchestrator
from ._participant import Service
from .transport._base import Record
from .transport.memory import MemoryBroker, MemoryTransport


class SagaTestEnvironment:
    """Orchestrators for `sagas` and the `services`, running on one in-memory broker."""

    def __init__(
        self,
        sagas: Sequence[Saga[Any]],
        services: Sequence[Service[Any]] = (),
        *,
        partitions: int = 4,
        broker: MemoryBroker | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.transport = MemoryTransport(self.broker)
        self.services = list(services)
        self.orchestrators = {
            saga.name: Orchestrator(
                saga,
                self.transport,
                partitions=partitions,
                on_transition=self._observe,
                interceptors=interceptors,
            )
            for saga in sagas
        }
        for service in self.services:
            service.configure(
                partitions=partitions,
                interceptors=(*service.interceptors_given, *interceptors),
            )
        self.transitions: list[Transition] = []
        self._ended: dict[str, anyio.Event] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None

    def _observe(self, t: Transition) -> None:
        self.transitions.append(t)
        if t.status.terminal or t.status.value == "FAILED_NEEDS_ATTENTION":
            self._ended.setdefault(t.saga_id, anyio.Event()).set()

    async def __aenter__(self) -> SagaTestEnvironment:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            for orchestrator in self.orchestrators.values():
                await tg.start(orchestrator.run)
            for service in self.services:
                await tg.start(service.run, self.transport)
            with anyio.fail_after(5):
                for orchestrator in self.orchestrators.values():
                    await orchestrator.wait_ready()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._tg = stack, tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is not None:
            return await stack.__aexit__(exc_type, exc, tb)
        return None

    async def start(self, saga: Saga[Any], saga_id: str, state: BaseModel) -> None:
        await SagaClient(self.transport).start(saga, saga_id, state)

    def instance(self, saga_id: str) -> SagaInstance | None:
        for orchestrator in self.orchestrators.values():
            found = orchestrator.instance(saga_id)
            if found is not None:
                return found
        return None

    async def wait_until_ended(self, saga_id: str, timeout: float = 5.0) -> SagaInstance:
        """The saga's instance once it is COMPLETED, COMPENSATED or parked."""
        event = self._ended.setdefault(saga_id, anyio.Event())
        try:
            with anyio.fail_after(timeout):
                await event.wait()
        except TimeoutError:
            raise SagaError(
                f"saga {saga_id} did not end within {timeout}s; now: {self.instance(saga_id)}"
            ) from None
        found = self.instance(saga_id)
        assert found is not None
        return found

    def dead_letters(self, topic: str) -> list[Record]:
        """Records that `topic`'s consumers could not process (from ``<topic>.dlq``)."""
        return self.broker.records(dlq_topic(topic))
