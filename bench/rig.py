"""The system under test, running and ready for load: the place-order flow's orchestrators
and services as OS processes on Kafka (`KafkaRig`), or all of it in this process on
`MemoryTransport` (`MemoryRig`, the framework's own CPU cost with no client or broker).

Either way the driver places orders through `OrdersApp.place` on the orders SQLite file
(shared with the orders process on Kafka) and sees them end by querying that file.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Container, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from sagakit import KafkaSettings, KafkaTransport, MemoryTransport, Orchestrator, Transport
from sagakit.tracing import Tracing
from services.orders.saga import place_order
from services.orders.service import NewOrder
from services.outcome import Style
from services.processes import SERVICE_NAMES, ProcessSystem
from services.system import SampleSystem, build_system

from .cpu import cpu_seconds, own_cpu_seconds

ProgressFn = Callable[[str, float, float], None]

#: Customers and products the orders spread over, as real traffic would: no single row is
#: hot, and per-customer state stays small however long a run lasts.
CUSTOMERS = 20_000
PRODUCTS = 100
REGIONS = ("Lisbon", "Porto", "Faro", "Braga", "Coimbra")


@dataclass(frozen=True, slots=True)
class RigSetup:
    """What runs: style, scale-out, namespace, and the environment of every component."""

    style: Style = "orchestration"
    orchestrators: int = 1
    partitions: int = 8
    namespace: str = ""
    profile: str = "embedded"
    env: Mapping[str, str] | None = None


class OrderSource:
    """Orders that all succeed (5 steps each), spread over many customers and products."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.issued = 0

    def seed(self, system: SampleSystem) -> None:
        """Reference data: customers with ample credit, products with ample stock."""
        for name, sql, rows in (
            (
                "payments",
                "INSERT OR REPLACE INTO customers (id, credit_limit) VALUES (?, ?)",
                [(self.customer(i), 10**15) for i in range(CUSTOMERS)],
            ),
            (
                "inventory",
                "INSERT OR REPLACE INTO products (id, stock, initial) VALUES (?, ?, ?)",
                [(self.product(i), 10**12, 10**12) for i in range(PRODUCTS)],
            ),
        ):
            db = system.db(name)
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows)
            db.execute("COMMIT")

    def customer(self, i: int) -> str:
        return f"{self.run}-cust-{i % CUSTOMERS}"

    def product(self, i: int) -> str:
        return f"{self.run}-prod-{i % PRODUCTS}"

    def take(self, count: int) -> list[NewOrder]:
        orders = []
        for i in range(self.issued, self.issued + count):
            quantity = 1 + i % 5
            orders.append(
                NewOrder(
                    order_id=f"{self.run}-order-{i:07d}",
                    customer_id=self.customer(i * 7919),
                    product_id=self.product(i),
                    quantity=quantity,
                    amount=quantity * (100 + i % 4_900),
                    address=f"{1 + i % 200} Main Street, {REGIONS[i % len(REGIONS)]}",
                )
            )
        self.issued += count
        return orders


class Rig(Protocol):
    """A running system the load drivers can place orders on and watch."""

    async def place(self, count: int) -> None: ...

    def pending(self) -> int: ...

    def rows(self) -> list[tuple[float, float | None]]: ...

    def cpu(self) -> dict[str, float]: ...


class _OrdersDb:
    """The driver's side: place orders, count the pending ones, read (created, ended)."""

    def __init__(self, system: SampleSystem, source: OrderSource, transport: Transport) -> None:
        self.system = system
        self.source = source
        self._db = system.db("orders")
        self._transport = transport

    async def place(self, count: int) -> None:
        await self.system.orders.place(self._transport, self.source.take(count))

    def pending(self) -> int:
        # counted on the status index: cheap however many orders have ended
        row = self._db.execute("SELECT count(*) FROM orders WHERE status = 'PENDING'").fetchone()
        return int(row[0])

    def rows(self) -> list[tuple[float, float | None]]:
        return [
            (float(c), None if e is None else float(e))
            for c, e in self._db.execute("SELECT created_ms, ended_ms FROM orders")
        ]


class KafkaRig(_OrdersDb):
    """Components as separate OS processes (`ProcessSystem`); CPU read from /proc."""

    def __init__(
        self,
        system: SampleSystem,
        source: OrderSource,
        transport: KafkaTransport,
        processes: ProcessSystem,
        broker_pid: int | None,
    ) -> None:
        super().__init__(system, source, transport)
        self.transport = transport
        self.processes = processes
        self.broker_pid = broker_pid

    def cpu(self) -> dict[str, float]:
        seconds = {"driver": own_cpu_seconds()}
        pids = {name: m.pid for name, m in self.processes.members.items()}
        pids["broker"] = self.broker_pid
        for name, pid in pids.items():
            used = None if pid is None else cpu_seconds(pid)
            if used is not None:
                seconds[name] = used
        return seconds


class MemoryRig(_OrdersDb):
    """Everything in this process on `MemoryTransport`: CPU is this process's, all of it."""

    def __init__(
        self, system: SampleSystem, source: OrderSource, transport: MemoryTransport
    ) -> None:
        super().__init__(system, source, transport)
        self.transport = transport

    def cpu(self) -> dict[str, float]:
        return {"process": own_cpu_seconds()}


async def ensure_topics(system: SampleSystem, transport: Transport, setup: RigSetup) -> None:
    if setup.style == "orchestration":
        await Orchestrator(
            place_order, transport, partitions=setup.partitions, namespace=setup.namespace
        ).ensure_topics()
    for service in system.services():
        await service.ensure_topics(transport)


class Tracings:
    """Tracing of the components run in this process, as the OTEL_* variables say."""

    def __init__(self, components: Container[str]) -> None:
        self.components = components
        self.made: list[Tracing] = []

    def __call__(self, component: str) -> Tracing:
        if component not in self.components:
            return Tracing.disabled()
        tracing = Tracing.from_env(component)
        self.made.append(tracing)
        return tracing

    def shutdown(self) -> None:
        for tracing in self.made:
            tracing.shutdown()


@asynccontextmanager
async def _system(
    setup: RigSetup, work_dir: Path | None, tracings: Tracings
) -> AsyncIterator[tuple[SampleSystem, OrderSource, Path]]:
    with tempfile.TemporaryDirectory(prefix="sagakit-bench-", dir=work_dir) as tmp:
        db_dir = Path(tmp)
        system = build_system(
            db_dir=db_dir,
            partitions=setup.partitions,
            namespace=setup.namespace,
            style=setup.style,
            tracing=tracings,
        )
        try:
            source = OrderSource(setup.namespace.rstrip(".") or "bench")
            source.seed(system)
            yield system, source, db_dir
        finally:
            system.close()
            tracings.shutdown()


@asynccontextmanager
async def kafka_rig(
    setup: RigSetup,
    settings: KafkaSettings,
    *,
    broker_pid: int | None = None,
    progress: ProgressFn | None = None,
    work_dir: Path | None = None,
) -> AsyncIterator[KafkaRig]:
    """Start the processes on the broker `settings` names and wait until each is READY."""
    async with (
        # the driver starts each saga's trace (the orders API's root span)
        _system(setup, work_dir, Tracings({"orders"})) as (system, source, db_dir),
        KafkaTransport(settings) as transport,
    ):
        await ensure_topics(system, transport, setup)
        orchestrators = setup.orchestrators if setup.style == "orchestration" else 0
        async with ProcessSystem(
            settings.bootstrap_servers,
            db_dir,
            namespace=setup.namespace,
            partitions=setup.partitions,
            orchestrators=orchestrators,
            profile=setup.profile,
            style=setup.style,
        ) as processes:
            env = dict(setup.env or {})
            names = list(processes.members)
            # orchestrators one after another (one group), then the services together
            for i, name in enumerate(n for n in names if n not in SERVICE_NAMES):
                if progress:
                    progress(f"starting {name}", i, len(names))
                await processes.start(name, env=env, wait_ready=60)
            if progress:
                progress("starting services", orchestrators, len(names))
            async with anyio.create_task_group() as tg:
                for name in SERVICE_NAMES:
                    tg.start_soon(lambda n: processes.start(n, env=env, wait_ready=60), name)
            yield KafkaRig(system, source, transport, processes, broker_pid)


@asynccontextmanager
async def memory_rig(
    setup: RigSetup, *, work_dir: Path | None = None, order_deadline_s: float = 60.0
) -> AsyncIterator[MemoryRig]:
    """Orchestrators and services as tasks of this process, on one `MemoryTransport`."""
    tracings = Tracings({"saga-orchestrator", *SERVICE_NAMES})
    async with _system(setup, work_dir, tracings) as (system, source, _db_dir):
        transport = MemoryTransport()
        await ensure_topics(system, transport, setup)
        async with anyio.create_task_group() as tg:
            orchestrators = []
            if setup.style == "orchestration":
                for _ in range(setup.orchestrators):
                    orchestrator = Orchestrator(
                        place_order,
                        transport,
                        partitions=setup.partitions,
                        namespace=setup.namespace,
                        tracing=tracings("saga-orchestrator"),
                    )
                    await tg.start(orchestrator.run)
                    orchestrators.append(orchestrator)
            else:
                await tg.start(
                    lambda task_status: system.orders.run_deadlines(
                        transport, order_deadline_s, task_status=task_status
                    )
                )
            for service in system.services():
                await tg.start(service.run, transport)
            with anyio.fail_after(30):
                for orchestrator in orchestrators:
                    await orchestrator.wait_ready()
                for service in system.services():
                    await service.wait_assigned()
            yield MemoryRig(system, source, transport)
            tg.cancel_scope.cancel()
