"""The place-order flow end to end, in either coordination style: what `sagakit demo`
and `sagakit compare` run and report."""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from sagakit import Orchestrator, Transition, Transport
from sagakit.tracing import Tracing

from .orders.saga import place_order
from .outcome import Style
from .system import SampleSystem, build_system, check_consistency, seed_orders

ProgressFn = Callable[[int, int], None]

#: Choreography's safety net in the demo: an order with no outcome after this expires.
ORDER_DEADLINE_S = 60.0


@dataclass
class DemoResult:
    style: str
    orders: int
    outcomes: dict[str, int]
    unfinished: int
    latency_ms: dict[str, float]
    consistent: bool
    violations: list[str]
    duration_s: float
    throughput_per_s: float = 0.0
    saga_outcomes: dict[str, int] = field(default_factory=dict)
    outcomes_by_order_digest: str = ""
    namespace: str = ""

    @property
    def ok(self) -> bool:
        return self.unfinished == 0 and self.consistent

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    if len(values) == 1:
        v = round(values[0], 2)
        return {"p50": v, "p95": v, "p99": v, "max": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(q[49], 2),
        "p95": round(q[94], 2),
        "p99": round(q[98], 2),
        "max": round(max(values), 2),
    }


class TracingFromEnv:
    """One `Tracing` per component, as the OTEL_* variables say (all off when unset).

    Several components in one process still report their own `service.name`.
    """

    def __init__(self) -> None:
        self._made: dict[str, Tracing] = {}

    def __call__(self, component: str) -> Tracing:
        if component not in self._made:
            self._made[component] = Tracing.from_env(component, env=_without_service_name())
        return self._made[component]

    def shutdown(self) -> None:
        for tracing in self._made.values():
            tracing.shutdown()


def _without_service_name() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}


def outcome_digest(system: SampleSystem, run: str) -> str:
    """A hash of the sorted (order number, final status) pairs: equal for equal outcomes."""
    pairs = sorted(
        (o.order_id.removeprefix(f"{run}-"), o.status) for o in system.orders.repository.all()
    )
    return hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


class _Ended:
    """Counts orders (orchestration: sagas) that ended, and wakes whoever waits."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total = total
        self.progress = progress
        self.ids: set[str] = set()
        self.sagas: Counter[str] = Counter()
        self.changed = anyio.Event()

    def add(self, saga_id: str) -> None:
        if saga_id in self.ids:
            return
        self.ids.add(saga_id)
        if self.progress is not None:
            self.progress(len(self.ids), self.total)
        self.changed.set()
        self.changed = anyio.Event()

    def transition(self, t: Transition) -> None:
        if t.status.terminal and t.saga_id not in self.ids:
            self.sagas[t.status.value] += 1
            self.add(t.saga_id)

    async def wait_until(self, count: int) -> None:
        while len(self.ids) < count:
            await self.changed.wait()


async def run_flow(
    transport: Transport,
    *,
    style: Style = "orchestration",
    orders: int = 100,
    seed: int = 7,
    partitions: int = 8,
    timeout_s: float = 120.0,
    concurrency: int | None = None,
    failure_mix: dict[str, float] | None = None,
    db_dir: Path | None = None,
    progress: ProgressFn | None = None,
    run_id: str | None = None,
    namespace: str = "",
    order_deadline_s: float = ORDER_DEADLINE_S,
    keep: Callable[[SampleSystem], None] | None = None,
    tracing: Callable[[str], Tracing] | None = None,
) -> DemoResult:
    """Run `orders` orders through the place-order flow in `style` and check the outcome.

    With `concurrency`, at most that many orders are in flight at once; otherwise all
    are placed at once. Latency is measured from the order's creation to its end.
    """
    run = run_id or uuid.uuid4().hex[:8]
    system = build_system(
        db_dir=db_dir, partitions=partitions, namespace=namespace, style=style, tracing=tracing
    )
    try:
        new_orders = seed_orders(system, orders, seed=seed, run=run, mix=failure_mix)
        ended = _Ended(len(new_orders), progress)
        orchestrator = None
        if style == "orchestration":
            orchestrator = Orchestrator(
                place_order,
                transport,
                partitions=partitions,
                namespace=namespace,
                on_transition=ended.transition,
                tracing=tracing("saga-orchestrator") if tracing else None,
            )
        else:
            system.orders.on_ended = lambda order_id, _status: ended.add(order_id)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            if orchestrator is not None:
                await tg.start(orchestrator.run)
            else:
                await tg.start(
                    lambda task_status: system.orders.run_deadlines(
                        transport, order_deadline_s, task_status=task_status
                    )
                )
            for service in system.services():
                await tg.start(service.run, transport)
            with anyio.fail_after(max(timeout_s, 30.0)):
                if orchestrator is not None:
                    await orchestrator.wait_ready()
                for service in system.services():
                    await service.wait_assigned()
            started = time.perf_counter()
            with anyio.move_on_after(timeout_s):
                window = concurrency or len(new_orders)
                placed = 0
                while placed < len(new_orders):
                    room = window - (placed - len(ended.ids))
                    if room > 0:
                        batch = new_orders[placed : placed + room]
                        await system.orders.place(transport, batch)
                        placed += len(batch)
                    else:
                        await ended.wait_until(len(ended.ids) + 1)
                await ended.wait_until(len(new_orders))
            duration = time.perf_counter() - started
            tg.cancel_scope.cancel()
        rows = system.orders.repository.all()
        outcomes = Counter(r.status for r in rows)
        violations = check_consistency(system)
        latencies = [r.ended_ms - r.created_ms for r in rows if r.ended_ms is not None]
        if keep is not None:
            keep(system)
        return DemoResult(
            style=style,
            orders=len(new_orders),
            outcomes=dict(sorted(outcomes.items())),
            unfinished=sum(n for s, n in outcomes.items() if s not in ("APPROVED", "REJECTED")),
            latency_ms=percentiles(latencies),
            consistent=not violations,
            violations=violations,
            duration_s=round(duration, 3),
            throughput_per_s=round(len(ended.ids) / duration, 1) if duration > 0 else 0.0,
            saga_outcomes=dict(sorted(ended.sagas.items())),
            outcomes_by_order_digest=outcome_digest(system, run),
            namespace=namespace,
        )
    finally:
        system.close()


async def run_orchestration(transport: Transport, **options: Any) -> DemoResult:
    """Run the orchestrated flow (see `run_flow`)."""
    return await run_flow(transport, style="orchestration", **options)


async def run_choreography(transport: Transport, **options: Any) -> DemoResult:
    """Run the choreographed flow (see `run_flow`)."""
    return await run_flow(transport, style="choreography", **options)
