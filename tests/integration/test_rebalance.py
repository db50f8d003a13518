"""Two orchestrator processes in one group: a killed one is taken over, a stalled one
(a zombie) wakes up and writes, and its writes are fenced by the claim epochs."""

from __future__ import annotations

import signal
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from sagakit import KafkaEventLog, KafkaTransport
from sagakit._inspect import read_journal
from sagakit._journal import CLAIM
from sagakit._snapshots import read_checkpoints
from sagakit.broker import EmbeddedBroker
from services.orders.saga import place_order

from ._processes import assert_invariants, prepare, sample_processes, wait_all_ended

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

ORDERS = 60


async def latest_claims(transport: KafkaTransport, topic: str, partitions: int) -> list[int]:
    log = KafkaEventLog(transport, topic)
    latest = []
    for p in range(partitions):
        epoch = 0
        async with aclosing(log.read(p)) as batches:
            async for batch in batches:
                epoch = max([epoch, *(s.entry.epoch for s in batch if s.entry.kind == CLAIM)])
        latest.append(epoch)
    return latest


async def fenced_snapshots(transport: KafkaTransport, topic: str) -> int:
    """Snapshots written by an owner after the next owner claimed the partition."""
    log = KafkaEventLog(transport, topic)
    return sum([(await read_checkpoints(log, p)).fenced for p in range(8)])


def stopped(pid: int) -> bool:
    """True when the process is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


async def test_a_killed_orchestrator_is_taken_over_and_its_sagas_finish(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str, tmp_path: Path
) -> None:
    ns = f"{unique}."
    system, orders = await prepare(kafka_transport, tmp_path, ns, ORDERS)
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns
    ) as processes:
        await processes.start_all()
        await system.orders.place(kafka_transport, orders)
        await processes.kill("orchestrator-2")
        assert system.orders.repository.count_by_status().get("PENDING", 0) > 0
        await wait_all_ended(system)
        await assert_invariants(kafka_transport, system, ns, ORDERS)
        # orchestrator-1 claimed every partition again after the takeover: alone (1),
        # shared with orchestrator-2 (2), alone again after the kill (3)
        claims = await latest_claims(kafka_transport, f"{ns}{place_order.journal_topic}", 8)
        assert min(claims) >= 3, claims
    system.close()


async def test_a_zombie_orchestrators_late_writes_are_fenced(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str, tmp_path: Path
) -> None:
    ns = f"{unique}."
    journal = f"{ns}{place_order.journal_topic}"
    checkpoints = f"{ns}{place_order.checkpoints_topic}"
    system, orders = await prepare(kafka_transport, tmp_path, ns, ORDERS)
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns
    ) as processes:
        # orchestrator-2 stops itself holding its second decided batch, before the append;
        # both snapshot often, the zombie after every batch (its stale view included)
        await processes.start_all(
            envs={
                "orchestrator-1": {"SAGAKIT_SNAPSHOT_EVERY": "5"},
                "orchestrator-2": {
                    "SAGAKIT_STALL_AT": "orchestrator.before-append@2",
                    "SAGAKIT_SNAPSHOT_EVERY": "1",
                },
            }
        )
        zombie = processes.members["orchestrator-2"]
        await system.orders.place(kafka_transport, orders)
        assert zombie.pid is not None
        with anyio.fail_after(30):
            while not stopped(zombie.pid):  # noqa: ASYNC110 - another process's state
                await anyio.sleep(0.1)

        # the survivor takes the zombie's partitions and finishes every saga
        await wait_all_ended(system)
        before = await read_journal(kafka_transport, journal, 8)
        assert before.fenced == 0

        processes.signal("orchestrator-2", signal.SIGCONT)
        with anyio.fail_after(30):
            while (await read_journal(kafka_transport, journal, 8)).fenced == 0:  # noqa: ASYNC110
                await anyio.sleep(0.2)
        assert zombie.alive, "the zombie should carry on (rejoin), not crash"
        # its snapshot after the stale batch is fenced too: never the latest valid one
        with anyio.fail_after(30):
            while not await fenced_snapshots(kafka_transport, checkpoints):  # noqa: ASYNC110
                await anyio.sleep(0.2)

        # the zombie's stale decisions are in the journal but fenced: every saga's
        # journaled state still matches its order, nothing was applied twice
        await assert_invariants(kafka_transport, system, ns, ORDERS)
    system.close()
