"""`sagakit demo` as a user runs it on the place-order scenario: its own embedded broker,
JSON on stdout, exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))
SCENARIO = "services.scenario:place_order"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGAKIT, "demo", SCENARIO, "--json", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_json_reports_every_order_ended_and_consistent() -> None:
    proc = run_demo("--count", "40", "--seed", "5", "--style", "orchestration")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["style"] == "orchestration"
    assert result["count"] == 40 and result["scenario"] == "PlaceOrder"
    assert result["unfinished"] == 0
    assert result["consistent"] is True and result["violations"] == []
    assert sum(result["outcomes"].values()) == 40
    assert set(result["outcomes"]) == {"APPROVED", "REJECTED"}
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


def test_demo_exits_non_zero_when_sagas_do_not_end() -> None:
    proc = run_demo("--count", "40", "--timeout", "0.001", "--style", "orchestration")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["unfinished"] > 0
    assert result["consistent"] is False
    assert any("is PENDING, not ended" in v for v in result["violations"])


def test_demo_of_both_styles_reports_each_and_they_agree() -> None:
    proc = run_demo("--count", "30", "--seed", "9")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"orchestration", "choreography"}
    for style, report in result.items():
        assert report["style"] == style
        assert report["unfinished"] == 0 and report["consistent"] is True
        assert sum(report["outcomes"].values()) == 30
    assert result["orchestration"]["outcomes"] == result["choreography"]["outcomes"]
    # the same orders ended the same way in both styles
    assert result["orchestration"]["outcomes_digest"] == result["choreography"]["outcomes_digest"]


def test_demo_runs_on_uvloop_when_asked() -> None:
    import os

    proc = subprocess.run(
        [SAGAKIT, "demo", SCENARIO, "--json", "--count", "20", "--style", "orchestration"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SAGAKIT_UVLOOP": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["unfinished"] == 0 and result["consistent"] is True
