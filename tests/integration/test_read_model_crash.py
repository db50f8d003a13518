"""The console's read model survives SIGKILL at each boundary of its writes: killed with a
batch fetched and nothing written, and killed with a batch written but its offsets not
committed, then started again, its rows are the sagas a full replay of the journal gives,
each with its whole timeline once (nothing lost, nothing twice)."""

from __future__ import annotations

from dataclasses import asdict
from itertools import islice
from pathlib import Path

import anyio
import pytest

from sagakit import KafkaTransport, SagaClient, SagaQuery, SqliteReadStore
from sagakit._inspect import read_journal
from sagakit._readmodel import where
from sagakit.broker import EmbeddedBroker
from services.app import app
from services.orders.saga import OrderState, place_order_v2
from services.system import DEMO_RUN, make_orders

from ._processes import sample_processes

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

POINTS = ("projector.before-write@2", "projector.after-write@2")


async def test_a_console_killed_at_each_write_boundary_ends_with_the_journals_sagas(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str, tmp_path: Path
) -> None:
    ns = f"{unique}."
    await app.runner(kafka_transport, namespace=ns).ensure_topics()
    path = tmp_path / "console.db"
    env = {
        "SAGAKIT_READ_MODEL": f"sqlite:///{path}",
        "SAGAKIT_CONSOLE_TOKENS": "ci:viewer:a-viewer-token-for-ci",
    }
    orders = iter(make_orders(400, seed=11, run=DEMO_RUN))
    client = SagaClient(kafka_transport, namespace=ns)

    async def place(n: int) -> None:
        """Start sagas: the orchestrator journals them (no service answers: they wait)."""
        items = [(o.order_id, OrderState(**asdict(o))) for o in islice(orders, n)]
        await client.start_many(place_order_v2, items)

    async with sample_processes(
        kafka_broker.bootstrap_servers,
        tmp_path,
        namespace=ns,
        orchestrators=1,
        env=env,
        console=True,
    ) as processes:
        await processes.start("orchestrator-1")
        for point in POINTS:
            await processes.start("console", env={"SAGAKIT_CRASH_AT": point})
            with anyio.fail_after(30):  # sagas apart, so the projector reads batch after batch
                while processes.members["console"].alive:
                    await place(3)
                    await anyio.sleep(0.2)
            assert await processes.wait_exit("console") == -9, point  # SIGKILL at the point
        await processes.start("console")
        await place(10)

        topic = f"{ns}place-order.journal"
        store = SqliteReadStore(path)
        with anyio.fail_after(60):
            while True:
                view = await read_journal(kafka_transport, topic, app.partitions)
                rows, _ = await store.sagas(SagaQuery(limit=10_000))
                journal = {i: x.seq for i, x in view.instances.items()}
                if journal and {r.saga_id: r.seq for r in rows} == journal:
                    break
                await anyio.sleep(0.3)
    assert [e.name for e in processes.crashes] == ["console", "console"]
    for row in rows:
        instance = view.instances[row.saga_id]
        assert (row.status, row.updated_ms, row.step) == (
            instance.status,
            instance.updated_ms,
            where(instance),
        )
        timeline = await store.timeline(row)
        assert [t.seq for t in timeline] == list(range(1, instance.seq + 1)), row.saga_id
    await store.close()
