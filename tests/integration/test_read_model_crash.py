"""The console's read model survives SIGKILL at each boundary of its writes: killed with a
batch fetched and nothing written, and killed with a batch written but its offsets not
committed, then started again, its rows are the sagas a full replay of the journal gives,
each with its whole timeline once (nothing lost, nothing twice)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import aiohttp
import anyio
import pytest

from sagakit import KafkaTransport, SagaQuery, SqliteReadStore
from sagakit._inspect import read_journal
from sagakit.broker import EmbeddedBroker
from services.app import app
from services.orders.api import ORDERS_PATH
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
        "PLACE_ORDER_DEMO_DATA": "1",
        "SAGAKIT_READ_MODEL": f"sqlite:///{path}",
        "SAGAKIT_CONSOLE_TOKENS": "ci:viewer:a-viewer-token-for-ci",
    }
    orders = iter(make_orders(200, seed=11, run=DEMO_RUN))
    placed = 0
    async with (
        sample_processes(
            kafka_broker.bootstrap_servers,
            tmp_path,
            namespace=ns,
            orchestrators=1,
            env=env,
            console=True,
        ) as processes,
        aiohttp.ClientSession() as http,
    ):
        await processes.start_all()
        url = f"http://127.0.0.1:{processes.http_ports['orders']}{ORDERS_PATH}"

        async def place(n: int) -> None:
            nonlocal placed
            body = {"orders": [asdict(next(orders)) for _ in range(n)]}
            async with http.post(url, json=body) as r:
                assert r.status == 202
            placed += n

        for point in POINTS:
            await processes.start("console", env={"SAGAKIT_CRASH_AT": point})
            with anyio.fail_after(30):  # orders apart, so the projector reads batch after batch
                while processes.members["console"].alive:
                    await place(2)
                    await anyio.sleep(0.3)
            assert await processes.wait_exit("console") == -9, point  # SIGKILL at the point
        await processes.start("console")
        await place(12)

        topic = f"{ns}place-order.journal"
        store = SqliteReadStore(path)
        with anyio.fail_after(60):
            while True:
                view = await read_journal(kafka_transport, topic, app.partitions)
                ended = [i for i in view.instances.values() if i.status.terminal]
                rows, total = await store.sagas(SagaQuery(limit=1000))
                settled = len(ended) == placed and total == placed
                if settled and all(r.ended_ms for r in rows):
                    break
                await anyio.sleep(0.5)
    assert [e.name for e in processes.crashes] == ["console", "console"]
    by_id = {r.saga_id: r for r in rows}
    assert set(by_id) == set(view.instances)
    for saga_id, instance in view.instances.items():
        row = by_id[saga_id]
        assert (row.status, row.seq, row.updated_ms) == (
            instance.status,
            instance.seq,
            instance.updated_ms,
        )
        timeline = await store.timeline(row)
        assert [t.seq for t in timeline] == list(range(1, instance.seq + 1)), saga_id
    await store.close()
