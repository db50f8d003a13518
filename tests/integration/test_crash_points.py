"""SIGKILL at each boundary of the orchestrator's batch and of a participant's, then
restart: every saga ends, the state is consistent, nothing is applied twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sagakit import KafkaTransport
from sagakit.broker import EmbeddedBroker

from ._processes import (
    assert_invariants,
    prepare,
    sample_processes,
    snapshots_agree,
    wait_all_ended,
)

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

ORDERS = 40


@pytest.mark.parametrize(
    ("member", "point"),
    [
        ("orchestrator-1", "orchestrator.before-append"),
        ("orchestrator-1", "orchestrator.before-send"),
        ("orchestrator-1", "orchestrator.before-commit"),
        ("payments", "participant.before-reply"),
    ],
)
async def test_crash_at_a_boundary_then_restart_loses_nothing(
    kafka_broker: EmbeddedBroker,
    kafka_transport: KafkaTransport,
    unique: str,
    tmp_path: Path,
    member: str,
    point: str,
) -> None:
    ns = f"{unique}."
    system, orders = await prepare(kafka_transport, tmp_path, ns, ORDERS)
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns, orchestrators=1
    ) as processes:
        await processes.start_all(envs={member: {"SAGAKIT_CRASH_AT": f"{point}@2"}})
        await system.orders.place(kafka_transport, orders)

        status = await processes.wait_exit(member, timeout=60)
        assert status == -signal.SIGKILL, f"{member} did not crash at {point}"
        pending = system.orders.repository.count_by_status().get("PENDING", 0)
        assert pending > 0, "everything ended before the crash; the test proves nothing"

        # the crash is reported as one (what `sagakit chaos` lists as a violation)
        assert [(c.name, c.returncode) for c in processes.crashes] == [(member, -signal.SIGKILL)]

        await processes.start(member)
        await wait_all_ended(system)
        await assert_invariants(kafka_transport, system, ns, ORDERS)
    system.close()


async def test_crashes_while_writing_a_snapshot_lose_nothing_and_restore_uses_a_whole_one(
    kafka_broker: EmbeddedBroker,
    kafka_transport: KafkaTransport,
    unique: str,
    tmp_path: Path,
) -> None:
    """SIGKILL at each point of writing a snapshot, one restart after the other: before
    its records reach the journal, before its index record, after it. Restores never
    use the half-written ones, the last restore starts from the whole one."""
    ns = f"{unique}."
    system, orders = await prepare(kafka_transport, tmp_path, ns, ORDERS)
    snapshots = {"SAGAKIT_SNAPSHOT_EVERY": "5", "SAGAKIT_LOG_FORMAT": "json"}
    points = ("before-journal", "before-index", "after-index")
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns, orchestrators=1
    ) as processes:
        crash = {"SAGAKIT_CRASH_AT": f"orchestrator.snapshot-{points[0]}@1"}
        await processes.start_all(envs={"orchestrator-1": {**snapshots, **crash}})
        await system.orders.place(kafka_transport, orders)
        for n, point in enumerate(points):
            status = await processes.wait_exit("orchestrator-1", timeout=60)
            assert status == -signal.SIGKILL, f"no crash at snapshot-{point}"
            if n == 0:
                pending = system.orders.repository.count_by_status().get("PENDING", 0)
                assert pending > 0, "everything ended before the crash; the test proves nothing"
            env = dict(snapshots)
            if n + 1 < len(points):
                env["SAGAKIT_CRASH_AT"] = f"orchestrator.snapshot-{points[n + 1]}@1"
            await processes.start("orchestrator-1", env=env)
        await wait_all_ended(system)
        await assert_invariants(kafka_transport, system, ns, ORDERS)
        assert await snapshots_agree(kafka_transport, ns) > 0
        member = processes.members["orchestrator-1"]
        assert member.log_path is not None
        restores = [
            line for line in member.log_path.read_text().splitlines() if "restored " in line
        ]
        assert any("snapshot at journal offset" in line for line in restores), restores
    system.close()
