"""`sagakit chaos` as people run it: random SIGKILLs of orchestrators and services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


def test_chaos_kills_processes_and_every_invariant_still_holds() -> None:
    proc = subprocess.run(
        [
            SAGAKIT,
            "chaos",
            "services.scenario:place_order",
            "--count",
            "40",
            "--kill-every",
            "2",
            "--max-kills",
            "5",  # then the system settles: the run ends when the last saga does
            "--seed",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # the orchestrators snapshot their partitions often, killed or not
        env={**os.environ, "SAGAKIT_SNAPSHOT_EVERY": "20"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["count"] == 40 and result["scenario"] == "PlaceOrder"
    assert result["kills"] == 5
    assert sum(result["killed"].values()) == result["kills"]
    assert result["unfinished"] == 0
    # the scenario's check: credit, stock and shipments match the orders, nothing twice
    assert result["consistent"] is True and result["violations"] == []
    assert result["journal_anomalies"] == 0
    assert sum(result["outcomes"].values()) == 40
    # checked once the journal shows every saga settled and no group has records left
    assert result["unsettled_in_journal"] == 0 and result["lag"] == 0
    assert sum(result["reasons"].values()) == 40
    assert result["reasons"].get("completed", 0) == result["outcomes"].get("APPROVED", 0)
    assert all(r == "completed" or r.startswith("compensated: ") for r in result["reasons"])
