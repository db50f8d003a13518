"""`sagakit bench --participant-latency-ms`: every service record waits as if its handler
called another system, and `--compare-serial` measures the same load with services that
handle one record at a time. Checked on the memory transport for what the waits imply
(a lower bound on time, whatever the machine), never for speed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sagakit._bench.measure import Plan, Target, measure
from sagakit._bench.run import serial_against
from services.scenario import bench

pytestmark = pytest.mark.anyio

LATENCY_MS = 50.0
#: what a saga waits for one after another: credit and stock (at once), shipping, orders
SERVICES_IN_SEQUENCE = 3


def _plan(**changes: object) -> Plan:
    plan = Plan(
        style="orchestration",
        mode="closed",
        concurrency=8,
        transport="memory",
        duration_s=1.5,
        warmup_s=0.5,
        drain_s=10.0,
        participant_latency_ms=LATENCY_MS,
    )
    return replace(plan, **changes)  # type: ignore[arg-type]


async def test_every_service_record_waits_and_serial_services_queue_them() -> None:
    target = Target(bench(), {"orchestration": "services.scenario:bench"}, Path.cwd())
    concurrent = await measure(_plan(), target)
    assert concurrent.completed > 0 and concurrent.unfinished == 0
    # each saga waits on three services one after another, each of which waited 50 ms
    assert concurrent.latency_ms["p50"] >= SERVICES_IN_SEQUENCE * LATENCY_MS

    report = await serial_against(_plan(), concurrent.to_json(), lambda p: measure(p, target))
    serial = report["point"]
    assert serial["plan"]["service_concurrency"] == 1
    assert serial["plan"]["concurrency"] == concurrent.plan["concurrency"]
    assert serial["completed"] > 0
    # one record at a time, 50 ms each: no service can pass more than 20 sagas a second
    assert serial["sagas_per_s"] <= 1000 / LATENCY_MS * 1.05
    assert report["ratio"] == round(concurrent.sagas_per_s / serial["sagas_per_s"], 2)
