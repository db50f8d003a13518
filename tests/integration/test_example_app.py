"""The example app in examples/ (money transfers, three services) through the same tools
as the sample: `sagakit chaos` on it as processes, from its directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# three kills, 2 s apart (seed 8: the ledger, the notifier and the orchestrator), then it settles
CHAOS = ["--kill-every", "2", "--max-kills", "3", "--seed", "8", "--json"]


def test_the_transfers_app_keeps_every_invariant_under_chaos() -> None:
    proc = subprocess.run(
        [
            SAGAKIT,
            "chaos",
            "transfers.scenario:scenario",
            "--count",
            "40",
            "--orchestrators",
            "1",
            *CHAOS,
        ],
        cwd=EXAMPLES,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["scenario"] == "Transfers" and result["count"] == 40
    assert result["kills"] == 3 and result["killed"].get("orchestrator-1") == 1
    assert result["unfinished"] == 0 and result["unsettled_in_journal"] == 0
    # no money appeared or vanished, nothing was applied twice or left half done
    assert result["consistent"] is True and result["violations"] == []
    assert result["outcomes"]["COMPLETED"] > 0
    reasons = result["reasons"]
    assert any("business failure Blocked" in r for r in reasons)
    assert any("business failure InsufficientFunds" in r for r in reasons)
