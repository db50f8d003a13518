"""`sagakit bench-growth` as people run it, on a small history: every level is measured, the
orchestrator holds nothing once the dedupe window has passed, a restart after the history
starts from a snapshot instead of replaying it, and the ratios are the figures' ratios.
Never a check of speed (numbers belong in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


def test_growth_benchmark_restores_from_snapshots_and_holds_no_history() -> None:
    proc = subprocess.run(
        [
            SAGAKIT,
            "bench-growth",
            "services.scenario:bench",
            "--history",
            "250",  # level 0 is added: the baseline every ratio is taken against
            "--restarts",
            "1",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--dedupe-window-s",
            "3",
            "--baseline-messages",
            "200",
            "--baseline-round-trips",
            "50",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    zero, grown = report["levels"]
    assert (zero["history_sagas"], grown["history_sagas"]) == (0, 250)

    journal = next(t for t in grown["history_records"] if t.endswith(".journal"))
    # the level counts every saga placed before it, level 0's throughput window included
    assert zero["placed_sagas"] == 0 and grown["placed_sagas"] >= 250
    assert grown["history_records"][journal] > zero["history_records"][journal] + 250

    for level in (zero, grown):
        # nothing in flight and the window passed: the orchestrator holds no saga at all
        assert level["unfinished"] == 0
        assert (level["held_instances"], level["held_ended"]) == (0, 0)
        # the history is behind the handover snapshot: a restart reads (almost) none of it
        assert level["restore_records_read"] < 50, level
        assert level["restore_s"] == min(level["restore_s_all"]) > 0
        assert level["sagas_per_s"] > 0
        broker = level["broker"]
        assert broker["fresh_round_trip_ms"]["p50"] > 0
        assert broker["fresh_tail_fetch_ms"]["p50"] > 0
        assert broker["grown_tail_fetch_ms"]["p50"] > 0
        cpu = level["cpu_ms_per_saga"]
        assert cpu["orchestrator"] > 0 and cpu["broker"] > 0 and cpu["services"] > 0
        assert broker["journal_full_read"]["records"] == level["history_records"][journal]

    # no saga ran before level 0: the app's partitions hold the owners' claims at most
    assert zero["broker"]["grown_depth"] < 20
    # after the history, the deepest partition is one of the app's
    assert grown["broker"]["grown_depth"] > 250
    assert grown["broker"]["grown_partition"].startswith(journal.rpartition(".")[0])
    ratios = grown["ratios"]
    assert ratios["restore"] == pytest.approx(grown["restore_s"] / zero["restore_s"], rel=0.02)
    assert ratios["throughput"] == pytest.approx(
        grown["sagas_per_s"] / zero["sagas_per_s"], rel=0.02
    )
    assert grown["targets"]["restore"] == (ratios["restore"] <= 1.3)
    assert grown["targets"]["throughput"] == (ratios["throughput"] >= 0.9)
    assert grown["targets"]["rss"] == (grown["rss_growth_mb"] <= 50)
