"""SIGKILL at each boundary of the orchestrator's batch and of its snapshots, and of a
participant's, then restart: every saga ends, the state is consistent, nothing is
applied twice, and restores never use a half-written snapshot."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sagakit import KafkaTransport
from sagakit._processes import ProcessSystem
from sagakit.broker import EmbeddedBroker
from services.system import SampleSystem

from ._processes import (
    assert_invariants,
    prepare,
    sample_processes,
    snapshots_agree,
    wait_all_ended,
)

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

#: Where the orchestrator is killed, in turn (the batch: decide, append, send, commit;
#: a snapshot: its records, its index record, after it), each at its Nth pass.
ORCHESTRATOR_POINTS = (
    "orchestrator.before-append@2",
    "orchestrator.before-send@2",
    "orchestrator.before-commit@2",
    "orchestrator.snapshot-before-journal@1",
    "orchestrator.snapshot-before-index@1",
    "orchestrator.snapshot-after-index@1",
)
WAVE = 12  # orders placed before each kill


async def assert_killed(
    processes: ProcessSystem, system: SampleSystem, member: str, point: str, kills: int
) -> None:
    """`member` died by SIGKILL at `point` with sagas unfinished, reported as a crash."""
    status = await processes.wait_exit(member, timeout=60)
    assert status == -signal.SIGKILL, f"{member} did not crash at {point}"
    pending = system.orders.repository.count_by_status().get("PENDING", 0)
    assert pending > 0, f"everything ended before the crash at {point}: it proves nothing"
    # each crash is reported as one (what `sagakit chaos` lists as a violation)
    assert [(c.name, c.returncode) for c in processes.crashes] == [
        (member, -signal.SIGKILL)
    ] * kills


async def test_an_orchestrator_killed_at_each_boundary_in_turn_loses_nothing(
    kafka_broker: EmbeddedBroker,
    kafka_transport: KafkaTransport,
    unique: str,
    tmp_path: Path,
) -> None:
    ns = f"{unique}."
    count = WAVE * len(ORCHESTRATOR_POINTS)
    system, orders = await prepare(kafka_transport, tmp_path, ns, count)
    # snapshots often; JSON logs show each restore's INFO line
    base = {"SAGAKIT_SNAPSHOT_EVERY": "5", "SAGAKIT_LOG_FORMAT": "json"}
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns, orchestrators=1
    ) as processes:
        first = {"SAGAKIT_CRASH_AT": ORCHESTRATOR_POINTS[0]}
        await processes.start_all(envs={"orchestrator-1": {**base, **first}})
        for n, point in enumerate(ORCHESTRATOR_POINTS):
            await system.orders.place(kafka_transport, orders[n * WAVE : (n + 1) * WAVE])
            await assert_killed(processes, system, "orchestrator-1", point, n + 1)
            env = dict(base)
            if n + 1 < len(ORCHESTRATOR_POINTS):
                env["SAGAKIT_CRASH_AT"] = ORCHESTRATOR_POINTS[n + 1]
            await processes.start("orchestrator-1", env=env)
        await wait_all_ended(system)
        await assert_invariants(kafka_transport, system, ns, count)
        assert await snapshots_agree(kafka_transport, ns) > 0
        # the last restore started from the snapshot indexed just before the last kill
        member = processes.members["orchestrator-1"]
        assert member.log_path is not None
        restores = [
            line for line in member.log_path.read_text().splitlines() if "restored " in line
        ]
        assert restores and any("snapshot at journal offset" in line for line in restores), restores
    system.close()


async def test_a_participant_killed_before_its_reply_answers_from_its_stored_reply(
    kafka_broker: EmbeddedBroker,
    kafka_transport: KafkaTransport,
    unique: str,
    tmp_path: Path,
) -> None:
    ns = f"{unique}."
    orders_count = 40
    system, orders = await prepare(kafka_transport, tmp_path, ns, orders_count)
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns, orchestrators=1
    ) as processes:
        await processes.start_all(
            envs={"payments": {"SAGAKIT_CRASH_AT": "participant.before-reply@2"}}
        )
        await system.orders.place(kafka_transport, orders)

        await assert_killed(processes, system, "payments", "participant.before-reply", 1)

        await processes.start("payments")
        await wait_all_ended(system)
        await assert_invariants(kafka_transport, system, ns, orders_count)
    system.close()
