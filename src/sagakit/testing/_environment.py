"""An in-memory environment for testing sagas and services, on virtual time.

    async with SagaTestEnvironment([place_order], [payments, inventory]) as env:
        await env.start(place_order, "order-1", OrderState(...))
        await env.settle()                    # everything that happens without time passing
        await env.advance(30)                 # 30 s: timeouts, back-offs, deadlines fire
        assert env.instance("order-1").status is SagaStatus.COMPENSATED

Everything runs on a `MemoryTransport` with the same code paths as on Kafka:
orchestrators journal, participants deduplicate, bad records go to DLQ topics. Time is
a `VirtualClock`: it stands still until `advance` moves it, and then every timer that
falls due fires in order, each handled to the end before the next — so a test of a 30 s
timeout takes milliseconds and does the same every run. Pass an `App` (or its sagas and
services) to run what you deploy.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel

from .._app import App
from .._client import SagaClient
from .._clock import SYSTEM_CLOCK, Clock
from .._definition import Saga
from .._dlq import dlq_topic
from .._errors import SagaError
from .._evaluator import SagaInstance, Transition, evolve
from .._interceptors import Interceptor
from .._orchestrator import Orchestrator
from .._participant import Service
from .._snapshots import History
from ..transport._base import Record
from ..transport.memory import MemoryBroker, MemoryTransport
from ._clock import VirtualClock
from ._stores import StoreSwap

#: How long (real time) the broker must stay still, with something asleep on the
#: virtual clock, to count as waiting for time to pass (a handler's retry back-off).
_STILL_S = 0.02


class SagaTestEnvironment:
    """Orchestrators for `sagas` and the `services`, on one in-memory broker and a
    virtual clock (``virtual_time=False``: the system clock, for tests of real waits).

    Each service gets an empty store of its kind while the environment runs (SQLite in
    memory with the store's schema, or a new `MemoryStore`) and its own store back
    afterwards, so tests start from nothing and write no files; seed data through
    ``service.store`` inside the environment. ``fresh_stores=False`` keeps the stores.
    `history` sets the orchestrators' snapshots and dedupe window (`History`; its
    defaults unless given): a small ``snapshot_every`` tests what restores from a snapshot.
    Give two environments one `broker` and `clock` to restart the system in a test.
    """

    def __init__(
        self,
        sagas: Sequence[Saga[Any]] | App,
        services: Sequence[Service[Any]] = (),
        *,
        partitions: int = 4,
        broker: MemoryBroker | None = None,
        interceptors: Sequence[Interceptor] = (),
        clock: VirtualClock | None = None,
        virtual_time: bool = True,
        namespace: str = "",
        fresh_stores: bool = True,
        history: History | None = None,
    ) -> None:
        if isinstance(sagas, App):
            app = sagas
            sagas = [v for saga in app.sagas for v in app.versions(saga.name)]
            services = (*app.services, *services)
            interceptors = (*app.interceptors, *interceptors)
        self.clock: VirtualClock | None = (clock or VirtualClock()) if virtual_time else None
        time_source: Clock = self.clock if self.clock is not None else SYSTEM_CLOCK
        self.broker = broker if broker is not None else MemoryBroker(clock=time_source.time)
        self.transport = MemoryTransport(self.broker)
        self.namespace = namespace
        self.partitions = partitions
        self.interceptors = tuple(interceptors)
        self.services = list(services)
        self.fresh_stores = fresh_stores
        self._stores = StoreSwap()
        by_type: dict[str, list[Saga[Any]]] = {}
        for saga in sagas:  # several versions of one type share an orchestrator
            by_type.setdefault(saga.name, []).append(saga)
        self.orchestrators = {
            name: Orchestrator(
                versions[0],
                self.transport,
                versions=versions[1:],
                partitions=partitions,
                namespace=namespace,
                on_transition=self._observe,
                interceptors=interceptors,
                clock=time_source,
                history=history,
            )
            for name, versions in by_type.items()
        }
        for service in self.services:
            service.configure(
                namespace=namespace,
                partitions=partitions,
                interceptors=(*service.interceptors_given, *interceptors),
                clock=time_source,
            )
        self.transitions: list[Transition] = []
        #: every saga's instance, as the transitions seen make it (a saga that ended
        #: leaves the orchestrator's memory at its partition's next snapshot)
        self._latest: dict[str, SagaInstance] = {}
        self._ended: dict[str, anyio.Event] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None

    def _observe(self, t: Transition) -> None:
        self.transitions.append(t)
        self._latest[t.saga_id] = evolve(self._latest.get(t.saga_id), t)
        event = self._ended.get(t.saga_id)
        if t.status.settled:
            self._ended.setdefault(t.saga_id, anyio.Event()).set()
        elif event is not None and event.is_set():  # resumed: it has not ended any more
            self._ended[t.saga_id] = anyio.Event()

    async def __aenter__(self) -> SagaTestEnvironment:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            stack.callback(self._stores.restore)  # after the services stopped
            if self.fresh_stores:
                for service in self.services:
                    self._stores.empty(service)
            graces = {s: s.shutdown_grace_s for s in self.services}
            stack.callback(self._restore_graces, graces)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            stack.callback(self._hurry)  # first: what is in hand now will never finish
            for orchestrator in self.orchestrators.values():
                await tg.start(orchestrator.run)
            for service in self.services:
                await tg.start(service.run, self.transport)
            with anyio.fail_after(5):
                for orchestrator in self.orchestrators.values():
                    await orchestrator.wait_ready()
                for service in self.services:
                    await service.wait_ready()
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

    @staticmethod
    def _restore_graces(graces: dict[Service[Any], float]) -> None:
        for service, grace in graces.items():
            service.shutdown_grace_s = grace

    def _hurry(self) -> None:
        for service in self.services:
            service.shutdown_grace_s = 0

    async def start_service(self, service: Service[Any]) -> None:
        """Start `service` in the running environment (one that was down comes back: it
        handles what was sent to it meanwhile)."""
        if self._tg is None:
            raise SagaError("start_service needs a running environment: use `async with`")
        if service in self.services:
            raise SagaError(f"service {service.name!r} already runs in this environment")
        service.configure(
            namespace=self.namespace,
            partitions=self.partitions,
            interceptors=(*service.interceptors_given, *self.interceptors),
            clock=self.clock if self.clock is not None else SYSTEM_CLOCK,
        )
        self.services.append(service)
        if self.fresh_stores:
            self._stores.empty(service)
        await self._tg.start(service.run, self.transport)
        with anyio.fail_after(5):
            await service.wait_ready()

    # -- time ------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """The environment's time (virtual unless ``virtual_time=False``), in seconds."""
        return self.clock.time() if self.clock is not None else SYSTEM_CLOCK.time()

    def _virtual(self) -> VirtualClock:
        if self.clock is None:
            raise SagaError("this environment runs on the system clock (virtual_time=False)")
        return self.clock

    def _next_due(self) -> float | None:
        """When the next timer or sleeper of the environment is due."""
        clock = self._virtual()
        dues = [clock.next_due()]
        for orchestrator in self.orchestrators.values():
            due_ms = orchestrator._timers.next_due_ms()
            # half way into the due millisecond: the orchestrator truncates time to whole
            # milliseconds, and due_ms / 1000 may fall a hair short of it as a float
            dues.append(None if due_ms is None else (due_ms + 0.5) / 1000)
        found = [d for d in dues if d is not None]
        return min(found) if found else None

    def _quiet(self, still_since: float | None) -> bool:
        if not all(o.ready for o in self.orchestrators.values()):
            return False
        if any(o.timers_in_flight for o in self.orchestrators.values()):
            return False  # a timer left the schedule and its record is not sent yet
        if self.clock is not None:
            due = self.clock.next_due()
            if due is not None and due <= self.now:
                return False  # a sleeper is due: let it wake
            now_ms = round(self.now * 1000)
            for orchestrator in self.orchestrators.values():
                due_ms = orchestrator._timers.next_due_ms()
                if due_ms is not None and due_ms <= now_ms:
                    return False  # a timer is due (its orchestrator just woke): let it fire
        if self.broker.idle():
            return True
        # records wait while a handler sleeps on the clock (a retry's back-off)
        return (
            self.clock is not None
            and self.clock.sleeping > 0
            and still_since is not None
            and anyio.current_time() - still_since >= _STILL_S
        )

    def _unsettled(self) -> str:
        """What keeps the environment from settling, for the error."""
        waiting = [
            f"{group} has {count} record(s) of {topic} unhandled"
            for (group, topic), count in self.broker.backlog().items()
        ]
        if waiting:
            return "; ".join(waiting) + " (a handler that never returns, or a send loop?)"
        return "records keep being sent or committed (something sends without end?)"

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait (in real time, at most `timeout` s) until everything that can happen
        without time passing has happened: every record handled and committed, nothing
        due."""
        changes, still_since = -1, None
        try:
            with anyio.fail_after(timeout):
                while True:
                    if self.broker.changes != changes:
                        changes, still_since = self.broker.changes, anyio.current_time()
                    if self._quiet(still_since):
                        return
                    await anyio.sleep(0.001)
        except TimeoutError:
            raise SagaError(
                f"the environment did not settle within {timeout}s: {self._unsettled()}"
            ) from None

    async def advance(self, seconds: float, *, timeout: float = 5.0) -> None:
        """Move virtual time `seconds` ahead: every timeout, back-off and deadline that
        falls due fires, in order, each handled to the end before time moves on."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        clock = self._virtual()
        target = clock.time() + seconds
        await self.settle(timeout)
        while (due := self._next_due()) is not None and due <= target:
            clock.set(max(due, clock.time()))
            await self.settle(timeout)
        clock.set(target)
        await self.settle(timeout)

    # -- sagas -----------------------------------------------------------------------------
    @property
    def client(self) -> SagaClient:
        return SagaClient(self.transport, namespace=self.namespace)

    async def start(self, saga: Saga[Any], saga_id: str, state: BaseModel) -> None:
        await self.client.start(saga, saga_id, state)

    def instance(self, saga_id: str) -> SagaInstance | None:
        """The saga's instance: its orchestrator's, or once it ended and left the
        orchestrator's memory, the one its transitions made."""
        for orchestrator in self.orchestrators.values():
            found = orchestrator.instance(saga_id)
            if found is not None:
                return found
        return self._latest.get(saga_id)

    async def wait_until_ended(self, saga_id: str, timeout: float = 5.0) -> SagaInstance:
        """The saga's instance once it is COMPLETED, COMPENSATED or parked.

        It first lets everything settle (so a `resume` just sent is read before the
        parked status counts). On virtual time that is all: what needs time to pass (a
        timeout) happens only with `advance`.
        """
        try:
            with anyio.fail_after(timeout):
                await self.settle(timeout)
                found = self.instance(saga_id)
                if found is None or not found.status.settled:
                    if self.clock is not None:
                        raise TimeoutError
                    await self._ended.setdefault(saga_id, anyio.Event()).wait()
        except (TimeoutError, SagaError):
            hint = " (call advance() to let time pass)" if self.clock is not None else ""
            raise SagaError(
                f"saga {saga_id} has not ended{hint}; now: {self.instance(saga_id)}"
            ) from None
        found = self.instance(saga_id)
        assert found is not None
        return found

    def dead_letters(self, topic: str) -> list[Record]:
        """Records that `topic`'s consumers could not process (from ``<topic>.dlq``)."""
        return self.broker.records(self.namespace + dlq_topic(topic))
