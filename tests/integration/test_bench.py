"""`sagakit bench` as people run it: the cheapest measurement, checked for completeness and
consistency of the report, never for speed (numbers belong in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))
SERVICES = ("orders", "payments", "inventory", "shipping")


def test_bench_reports_every_figure_consistently() -> None:
    proc = subprocess.run(
        [
            SAGAKIT,
            "bench",
            "services.scenario:bench",
            "--style",
            "orchestration",
            "--mode",
            "closed",
            "--concurrency",
            "16",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    baseline = report["baseline"]
    assert baseline["round_trips"] > 0
    assert 0 < baseline["round_trip_ms"]["p50"] <= baseline["round_trip_ms"]["p99"]
    assert baseline["produce_msgs_per_s"] > 0 and baseline["consume_msgs_per_s"] > 0

    [series] = report["series"]
    assert series["style"] == "orchestration" and series["transport"] == "kafka"
    [point] = series["closed"]["points"]
    assert series["closed"]["peak"] == point
    assert point["plan"]["concurrency"] == 16
    assert point["completed"] > 0
    assert point["sagas_per_s"] > 0
    assert point["steps_per_s"] == pytest.approx(point["sagas_per_s"] * 5, rel=0.01)
    assert point["unfinished"] == 0 and point["censored"] == 0
    lat = point["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]

    # one baseline per measurement, on that measurement's broker, and the ratios to it
    assert point["baseline"] == baseline
    assert all(v > 0 for v in point["ratios"].values()), point["ratios"]
    assert point["ratios"]["latency_p50_per_round_trip_p50"] == pytest.approx(
        lat["p50"] / baseline["round_trip_ms"]["p50"], rel=0.01
    )

    cpu = point["cpu_us_per_step"]
    for component in ("orchestrator", *SERVICES, "broker", "total"):
        assert cpu[component] > 0, component
    assert cpu["total"] >= cpu["orchestrator"] + sum(cpu[s] for s in SERVICES)

    # a successful place-order saga: start, 4 commands, 4 replies, and its journal
    assert point["messages_per_saga"] >= 9
    assert point["bytes_per_saga"] > 0
    assert point["messages_by_kind"]["commands"] > 0
    assert point["messages_by_kind"]["journal"] > 0
