"""Helpers for tests that run the sample system as OS processes on the embedded broker."""

from __future__ import annotations

from pathlib import Path

import anyio

from sagakit import KafkaTransport, Orchestrator
from services.chaos import audit, duplicated_effects
from services.orders.saga import place_order
from services.system import SampleSystem, build_system, check_consistency, seed_orders


async def prepare(
    transport: KafkaTransport, db_dir: Path, namespace: str, orders: int, seed: int = 1
) -> tuple[SampleSystem, list]:  # type: ignore[type-arg]
    system = build_system(db_dir=db_dir, namespace=namespace)
    new_orders = seed_orders(system, orders, seed=seed, run=namespace.rstrip("."))
    await Orchestrator(place_order, transport, namespace=namespace).ensure_topics()
    for service in system.services():
        await service.ensure_topics(transport)
    return system, new_orders


async def wait_all_ended(system: SampleSystem, timeout: float = 90.0) -> None:
    """Poll the orders database (other processes write it) until no order is PENDING."""
    with anyio.fail_after(timeout):
        while system.orders.repository.count_by_status().get("PENDING", 0):  # noqa: ASYNC110
            await anyio.sleep(0.2)


async def assert_invariants(
    transport: KafkaTransport, system: SampleSystem, namespace: str, orders: int
) -> None:
    """Every order ended, consistent, no effect twice, journal agrees and has no gap."""
    counts = system.orders.repository.count_by_status()
    assert sum(counts.values()) == orders
    assert set(counts) <= {"APPROVED", "REJECTED"}, counts
    assert check_consistency(system) == []
    assert duplicated_effects(system) == 0
    violations, anomalies, dlq = await audit(transport, system, namespace)
    assert violations == []
    assert anomalies == 0
    assert dlq == {}
