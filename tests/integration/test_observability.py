"""Health, readiness, metrics and the orders API of the processes, as Prometheus,
Kubernetes probes and the load generator see them."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import aiohttp
import anyio
import pytest

from sagakit import KafkaTransport
from sagakit._http import HEALTH_PATH, METRICS_PATH, READY_PATH
from sagakit.broker import EmbeddedBroker
from services.app import app
from services.orders.api import ORDERS_PATH
from services.system import DEMO_RUN, SampleSystem, build_system, make_orders

from ._processes import ROOT, sample_processes

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


def all_ended(system: SampleSystem, count: int) -> bool:
    statuses = system.orders.repository.count_by_status()
    return sum(statuses.values()) >= count and not statuses.get("PENDING")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def test_probes_metrics_and_the_orders_api_of_a_running_system(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str, tmp_path: Path
) -> None:
    ns = f"{unique}."
    system = build_system(db_dir=tmp_path, namespace=ns)
    await app.runner(kafka_transport, namespace=ns).ensure_topics()
    async with (
        sample_processes(
            kafka_broker.bootstrap_servers,
            tmp_path,
            namespace=ns,
            env={"PLACE_ORDER_DEMO_DATA": "1"},
        ) as processes,
        aiohttp.ClientSession() as http,
    ):
        url = {name: f"http://127.0.0.1:{port}" for name, port in processes.http_ports.items()}
        await processes.start_all()
        for name in processes.members:
            async with http.get(url[name] + HEALTH_PATH) as r:
                assert r.status == 200, name
            async with http.get(url[name] + READY_PATH) as r:
                assert r.status == 200, name

        # place orders through the orders service's HTTP API, then with the load generator
        orders = make_orders(12, seed=3, run=DEMO_RUN)
        body = {"orders": [asdict(o) for o in orders]}
        async with http.post(url["orders"] + ORDERS_PATH, json=body) as r:
            assert r.status == 202
            assert (await r.json())["order_ids"] == [o.order_id for o in orders]
        async with http.post(url["orders"] + ORDERS_PATH, json={"quantity": "x"}) as r:
            assert r.status == 400
        loaded = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "services.load",
                "--orders-url",
                url["orders"] + ORDERS_PATH,
                "--rate",
                "20",
                "--count",
                "8",
            ],
            check=False,
            cwd=ROOT,
        )
        assert loaded.returncode == 0, loaded.stderr
        with anyio.fail_after(60):
            while not all_ended(system, 20):  # noqa: ASYNC110 - other processes write it
                await anyio.sleep(0.2)
        statuses = system.orders.repository.count_by_status()

        texts = {}
        for name in processes.members:
            async with http.get(url[name] + METRICS_PATH) as r:
                assert r.status == 200
                texts[name] = await r.text()
    system.close()

    orchestrators = [t for n, t in texts.items() if n.startswith("orchestrator")]
    # the orders service starts version 2 of the saga; metrics are labelled by version
    labels = {"saga_type": "place-order", "saga_version": "2"}
    started = sum(metric(t, "sagakit_sagas_started_total", **labels) for t in orchestrators)
    completed = sum(metric(t, "sagakit_sagas_completed_total", **labels) for t in orchestrators)
    compensated = sum(metric(t, "sagakit_sagas_compensated_total", **labels) for t in orchestrators)
    assert started == 20
    assert completed == statuses["APPROVED"] and compensated == statuses["REJECTED"]
    assert sum(metric(t, "sagakit_sagas_in_flight", **labels) for t in orchestrators) == 0
    # what the alerts (deploy/prometheus-rules.yaml) watch
    ended = {
        status: sum(
            metric(t, "sagakit_saga_duration_seconds_count", status=status, **labels)
            for t in orchestrators
        )
        for status in ("COMPLETED", "COMPENSATED")
    }
    assert ended == {"COMPLETED": completed, "COMPENSATED": compensated}
    assert sum(metric(t, "sagakit_sagas_needing_attention") for t in orchestrators) == 0
    assert all(metric(t, "sagakit_saga_oldest_running_seconds") == 0 for t in orchestrators)
    steps = sum(
        metric(t, "sagakit_step_duration_seconds_count", step="reserve-credit", phase="forward")
        for t in orchestrators
    )
    assert steps == 20
    assert all(metric(t, "sagakit_consumer_lag") == 0 for t in texts.values())
    handled = metric(
        texts["payments"], "sagakit_messages_handled_total", message_type="payments.ReserveCredit"
    )
    assert handled == 20
    assert metric(texts["payments"], "sagakit_dead_letters_total") == 0


def test_json_logs_carry_the_saga_the_correlation_and_the_trace() -> None:
    script = """
import logging
from sagakit._logging import configure_logging, log_context
configure_logging(False, "json")
with log_context(saga_id="order-7", correlation_id="order-7:start", trace_id="ab" * 16):
    logging.getLogger("sagakit.participant").warning("handler of %s failed", "X")
logging.getLogger("sagakit.participant").warning("outside")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    import json

    inside, outside = (json.loads(line) for line in proc.stderr.splitlines())
    assert inside["message"] == "handler of X failed" and inside["level"] == "warning"
    assert inside["saga_id"] == "order-7"
    assert inside["correlation_id"] == "order-7:start"
    assert inside["trace_id"] == "ab" * 16
    assert "saga_id" not in outside
