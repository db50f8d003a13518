"""The bench-growth report as people read it: on a terminal a column per level (it fits 80
columns), in markdown a row per level, with every level's figures and target marks."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from sagakit._bench.growth import compare
from sagakit.cli._bench_growth import table, to_markdown


def level(history: int, restore_s: float, rss: float, per_s: float) -> dict[str, Any]:
    ms = {"p50": 1.5, "p95": 2.0, "p99": 3.0, "max": 4.0}
    return {
        "history_sagas": history,
        "history_records": {"ns.place-order.journal": history * 3 + 8},
        "restore_s": restore_s,
        "rss_mb_after_restore": rss,
        "held_instances": 0.0,
        "held_ended": 0.0,
        "sagas_per_s": per_s,
        "cpu_ms_per_saga": {"orchestrator": 2.0, "services": 5.0, "broker": 3.5, "driver": 1.0},
        "broker": {
            "fresh_round_trip_ms": ms,
            "fresh_tail_fetch_ms": ms,
            "grown_tail_fetch_ms": {**ms, "p50": 6.0},
            "journal_full_read": {"records": history * 3, "seconds": 0.5},
        },
    }


def report() -> dict[str, Any]:
    levels = [level(0, 3.0, 66.0, 160.0), level(20_000, 2.9, 67.0, 10.0)]
    compare(levels)
    return {"levels": levels}


def test_the_terminal_table_has_a_column_per_level_and_fits_80_columns() -> None:
    console = Console(width=80, record=True)
    console.print(table(report()))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if "history" in line)
    assert "0" in header and "20,000" in header
    restore, throughput = [line for line in text.splitlines() if line.startswith("│ vs 0")]
    assert "0.97 ✓" in restore  # 2.9 s against 3.0 s: within 1.3x
    assert "0.06 ✗" in throughput  # 10 against 160 sagas/s: under 0.9x


def test_the_markdown_table_has_a_row_per_level() -> None:
    lines = to_markdown(report()).splitlines()
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "20,000"]
    assert "60,008" in rows[1] and "0.06 ✗" in rows[1]
