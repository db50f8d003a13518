"""The sample app as docker-compose and deploy/ run it: every service on PostgreSQL
(``SAGAKIT_POSTGRES_DSN``), orders placed over its HTTP API, on the embedded broker. Every
order ends as its kind says and the business invariants hold in the PostgreSQL tables."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import orjson
import pytest

from sagakit.broker import EmbeddedBroker, free_port
from services.app import DEMO_RUN
from services.db import PostgresConnection
from services.system import BLOCKED_REGION, make_orders, violations

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAGAKIT = str(Path(sys.executable).with_name("sagakit"))
ORDERS = 24


def _post(port: int, body: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/orders",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        answer: dict[str, Any] = orjson.loads(response.read())
        return answer


SEEDED = (
    "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM products)"
    " + (SELECT count(*) FROM undeliverable_regions)"
)
ENDED = "SELECT count(*) FROM orders WHERE status IN ('APPROVED', 'REJECTED')"


async def at_least(db: asyncpg.Connection, query: str, count: int, timeout: float = 60) -> None:
    """Wait until `query` counts `count` (rows another process writes)."""
    with anyio.fail_after(timeout):
        while await db.fetchval(query) < count:  # noqa: ASYNC110 - another process's database
            await anyio.sleep(0.2)


async def test_the_sample_services_run_on_postgres(
    kafka_broker: EmbeddedBroker, unique: str, tmp_path: Path, postgres_dsn: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SAGAKIT_POSTGRES_DSN": postgres_dsn,
        "PLACE_ORDER_DEMO_DATA": "1",
        "SAGAKIT_HTTP_PORT": str(port),
    }
    log = (tmp_path / "sample.log").open("wb")
    process = await anyio.open_process(
        [
            SAGAKIT,
            "run",
            "services.app:app",
            "--bootstrap",
            kafka_broker.bootstrap_servers,
            "--namespace",
            f"{unique}.",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    db = await asyncpg.connect(postgres_dsn)
    try:
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(60):
            async for chunk in process.stdout:
                seen += chunk
                if b"READY" in seen:
                    break
        assert b"READY" in seen, (tmp_path / "sample.log").read_text()
        # the seeders run beside the services: customers, products, a blocked region
        await at_least(db, SEEDED, 3 + 3 + 1)

        orders = make_orders(ORDERS, seed=3, run=DEMO_RUN)
        body = {"orders": [asdict(o) for o in orders]}
        answer = await anyio.to_thread.run_sync(_post, port, body)
        assert answer["order_ids"] == [o.order_id for o in orders]
        await at_least(db, ENDED, ORDERS)

        rows = await db.fetch("SELECT id, status, reason FROM orders")
        statuses = {r["id"]: r["status"] for r in rows}
        reasons = {r["id"]: r["reason"] for r in rows}
        for o in orders:
            fails = (
                o.customer_id.endswith("cust-poor")
                or o.product_id.endswith("prod-gone")
                or o.address.endswith(BLOCKED_REGION)
            )
            assert statuses[o.order_id] == ("REJECTED" if fails else "APPROVED"), (
                o,
                reasons[o.order_id],
            )
        assert "APPROVED" in statuses.values() and "REJECTED" in statuses.values()

        # each service stored its replies in its own table, in the same transactions
        for service in ("payments", "inventory", "shipping", "orders"):
            assert await db.fetchval(f"SELECT count(*) FROM {service}_replies") > 0, service

        def check() -> list[str]:
            connection = PostgresConnection(db)
            return violations(lambda _service: connection)

        assert await anyio.to_thread.run_sync(check) == []
    finally:
        await db.close()
        process.terminate()
        with anyio.fail_after(30):
            await process.wait()
        log.close()
