"""The choreographed flow on the embedded broker: many orders, a service killed and
restarted mid-run, the comparison of both styles, and `sagas show` from events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from sagakit import KafkaTransport
from sagakit._flows import run_flow
from sagakit.broker import EmbeddedBroker
from services.scenario import PlaceOrder
from services.system import build_system, seed_orders

from ._processes import assert_invariants, sample_processes, wait_all_ended

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


async def test_200_choreographed_orders_end_consistently(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    result = await run_flow(
        PlaceOrder(),
        kafka_transport,
        style="choreography",
        count=200,
        seed=4,
        namespace=f"{unique}.",
    )
    assert result.unfinished == 0, result.outcomes
    assert result.violations == []
    assert sum(result.outcomes.values()) == 200
    assert result.outcomes["REJECTED"] >= 3


@pytest.mark.slow
async def test_a_service_killed_mid_run_resumes_its_reactions_and_does_nothing_twice(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str, tmp_path: Path
) -> None:
    ns = f"{unique}."
    system = build_system(db_dir=tmp_path, namespace=ns, style="choreography")
    orders = seed_orders(system, 60, seed=6, run=unique)
    for service in system.services():
        await service.ensure_topics(kafka_transport)
    async with sample_processes(
        kafka_broker.bootstrap_servers, tmp_path, namespace=ns, style="choreography"
    ) as processes:
        await processes.start_all()
        await system.orders.place(kafka_transport, orders[:30])
        await processes.kill("inventory")
        await system.orders.place(kafka_transport, orders[30:])
        assert system.orders.repository.count_by_status().get("PENDING", 0) > 0
        await processes.start("inventory")
        await wait_all_ended(system)
        await assert_invariants(kafka_transport, system, ns, len(orders))
    system.close()


def test_compare_runs_both_styles_to_the_same_outcome() -> None:
    proc = subprocess.run(
        [
            SAGAKIT,
            "compare",
            "services.scenario:place_order",
            "--count",
            "60",
            "--seed",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert set(results) == {"orchestration", "choreography"}
    orchestration, choreography = results["orchestration"], results["choreography"]
    assert orchestration["outcomes_digest"] == choreography["outcomes_digest"]
    for r in (orchestration, choreography):
        assert r["consistent"] is True and r["unfinished"] == 0
        assert r["throughput_per_s"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["messages_per_saga"] > 0 and r["bytes_per_saga"] > 0
    # the orchestrator knows every participant and they know nobody; in choreography
    # each service knows the services whose events it reacts to
    coupling = orchestration["coupling"]
    assert len(coupling["place-order orchestrator"]["knows"]) == 4
    assert all(c["knows"] == [] for n, c in coupling.items() if n != "place-order orchestrator")
    assert "place-order orchestrator" not in choreography["coupling"]
    assert all(c["knows"] for c in choreography["coupling"].values())
    # the journal is part of the orchestrated traffic, events are all of the choreographed
    assert orchestration["messages_by_topic_kind"]["journal"] > 0
    assert set(k for k, v in choreography["messages_by_topic_kind"].items() if v) == {"events"}


async def test_sagas_show_rebuilds_a_choreographed_order_from_its_events(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    await run_flow(
        PlaceOrder(),
        kafka_transport,
        style="choreography",
        count=3,
        seed=1,
        namespace=ns,
        run=unique,
    )
    shipping_failure = f"{unique}-order-000002"
    proc = await anyio.run_process(
        [
            SAGAKIT,
            "sagas",
            "show",
            shipping_failure,
            "--namespace",
            ns,
            "--bootstrap",
            kafka_broker.bootstrap_servers,
        ],
        check=False,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "choreography" in out
    for event in (
        "OrderCreated",
        "CreditReserved",
        "StockReserved",
        "ShipmentFailed",
        "StockReleased",
        "CreditReleased",
        "OrderRejected",
    ):
        assert event in out, event
    assert out.index("OrderCreated") < out.index("ShipmentFailed") < out.index("OrderRejected")
