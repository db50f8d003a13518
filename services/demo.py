"""The place-order flow end to end: what `sagakit demo` runs and reports."""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from sagakit import Orchestrator, SagaStatus, Transition, Transport

from .orders.saga import place_order
from .system import build_system, check_consistency, seed_orders

ProgressFn = Callable[[int, int], None]


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
    saga_outcomes: dict[str, int] = field(default_factory=dict)

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


class _Tracker:
    """Counts sagas reaching a terminal state, as the orchestrator journals them."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total = total
        self.progress = progress
        self.ended: dict[str, Transition] = {}
        self.all_ended = anyio.Event()

    def __call__(self, t: Transition) -> None:
        if not t.status.terminal or t.saga_id in self.ended:
            return
        self.ended[t.saga_id] = t
        if self.progress is not None:
            self.progress(len(self.ended), self.total)
        if len(self.ended) >= self.total:
            self.all_ended.set()


async def run_orchestration(
    transport: Transport,
    *,
    orders: int = 100,
    seed: int = 7,
    partitions: int = 8,
    timeout_s: float = 120.0,
    db_dir: Path | None = None,
    progress: ProgressFn | None = None,
    run_id: str | None = None,
    namespace: str = "",
) -> DemoResult:
    """Run `orders` orders through the orchestrated place-order saga and check the outcome."""
    run = run_id or uuid.uuid4().hex[:8]
    system = build_system(db_dir=db_dir, partitions=partitions, namespace=namespace)
    try:
        new_orders = seed_orders(system, orders, seed=seed, run=run)
        tracker = _Tracker(len(new_orders), progress)
        orchestrator = Orchestrator(
            place_order,
            transport,
            partitions=partitions,
            namespace=namespace,
            on_transition=tracker,
        )
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            await tg.start(orchestrator.run)
            for service in system.services():
                await tg.start(service.run, transport)
            with anyio.fail_after(max(timeout_s, 30.0)):
                await orchestrator.wait_ready()
                for service in system.services():
                    await service.wait_assigned()
            started = time.perf_counter()
            await system.orders.place(transport, new_orders)
            with anyio.move_on_after(timeout_s):
                await tracker.all_ended.wait()
            tg.cancel_scope.cancel()
        duration = time.perf_counter() - started
        rows = system.orders.repository.all()
        outcomes = Counter(r.status for r in rows)
        violations = check_consistency(system)
        latencies = [float(t.at_ms - t.started_ms) for t in tracker.ended.values()]
        return DemoResult(
            style="orchestration",
            orders=len(new_orders),
            outcomes=dict(sorted(outcomes.items())),
            unfinished=sum(n for s, n in outcomes.items() if s not in ("APPROVED", "REJECTED")),
            latency_ms=percentiles(latencies),
            consistent=not violations,
            violations=violations,
            duration_s=round(duration, 3),
            saga_outcomes=dict(
                sorted(Counter(str(t.status) for t in tracker.ended.values()).items())
            ),
        )
    finally:
        system.close()


__all__ = ["DemoResult", "SagaStatus", "percentiles", "run_orchestration"]
