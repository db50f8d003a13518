"""`sagakit bench-growth MODULE:ATTR`: restore time, memory and throughput of an
orchestrator as the history behind it grows, against the zero-history level of the run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .._loader import LoadError, spec_of
from ._common import AppDir, fail
from ._flows import Options, ScenarioArg, scenario_of
from ._progress import run_with_progress


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give sagas of history, e.g. 0,20000,100000") from None
    if not levels or any(n < 0 for n in levels):
        raise typer.BadParameter("give one or more counts of sagas ≥ 0, e.g. 0,20000,100000")
    return levels


def bench_growth(
    scenario_spec: ScenarioArg,
    history: Annotated[
        str,
        typer.Option(
            help="Levels of history to measure at, in sagas run so far (comma-separated; "
            "0 is always measured first)."
        ),
    ] = "0,20000,100000",
    concurrency: Annotated[
        int, typer.Option(min=1, help="Sagas in flight while throughput is measured.")
    ] = 64,
    fill_concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Sagas in flight while the history is made (more in flight, fewer fetches "
            "per saga: the fill is faster on a broker whose fetches cost more as it grows).",
        ),
    ] = 256,
    duration: Annotated[
        float, typer.Option(min=0.5, help="Seconds of throughput measured per level.")
    ] = 10.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="Seconds before each window.")] = 2.0,
    restarts: Annotated[
        int,
        typer.Option(min=1, help="Orchestrator restarts per level (restore time: the best)."),
    ] = 3,
    dedupe_window_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="How long ended sagas are remembered (SAGAKIT_DEDUPE_WINDOW_S of the "
            "orchestrator); each level waits it out, so memory is measured with nothing "
            "left to remember.",
        ),
    ] = 30.0,
    snapshot_every: Annotated[
        int | None, typer.Option(min=1, help="SAGAKIT_SNAPSHOT_EVERY (default: the app's).")
    ] = None,
    snapshot_interval_s: Annotated[
        float | None,
        typer.Option(min=0.0, help="SAGAKIT_SNAPSHOT_INTERVAL_S (default: the app's)."),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of every topic.")] = 8,
    baseline_messages: Annotated[
        int, typer.Option(min=100, help="Raw messages per broker throughput figure.")
    ] = 20_000,
    baseline_round_trips: Annotated[
        int, typer.Option(min=10, help="Raw round trips per broker latency figure.")
    ] = 200,
    bootstrap: Annotated[
        str | None, typer.Option(help="A running Kafka; default: a fresh embedded broker.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object with every figure on stdout.")
    ] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table.")] = False,
    option: Options = None,
    app_dir: AppDir = None,
) -> None:
    """Run waves of sagas on one broker; at each level of history restart the orchestrator
    and measure its restore time, memory and the saga throughput, next to what the broker
    itself does at that size."""
    from .._bench.growth import GrowthPlan, run_growth
    from .._bench.measure import Target

    scenario = scenario_of(scenario_spec, option, app_dir)
    try:
        target = Target(
            scenario,
            {"orchestration": spec_of(scenario.app, near=scenario_spec)},
            Path(app_dir).resolve() if app_dir else Path.cwd(),
        )
    except LoadError as exc:
        raise fail(str(exc)) from None
    plan = GrowthPlan(
        history=_levels(history),
        concurrency=concurrency,
        fill_concurrency=fill_concurrency,
        duration_s=duration,
        warmup_s=warmup,
        restarts=restarts,
        dedupe_window_s=dedupe_window_s,
        snapshot_every=snapshot_every,
        snapshot_interval_s=snapshot_interval_s,
        partitions=partitions,
        bootstrap=bootstrap,
        baseline_messages=baseline_messages,
        baseline_round_trips=baseline_round_trips,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report = run_with_progress("growth", lambda progress: run_growth(plan, target, progress))
    if json_output:
        print(json.dumps(report))
    elif markdown:
        print(to_markdown(report))
    else:
        Console().print(table(report))


COLUMNS = (
    "history",
    "journal",
    "restore s",
    "vs 0",
    "RSS MB",
    "+MB",
    "held",
    "sagas/s",
    "vs 0",
    "fetch ms",
    "CPU ms/saga",
    "full read s",
)
LEGEND = (
    "history: sagas run so far; journal: records in the saga's journal; restore s: orchestrator "
    "restart until ready (best); RSS MB: after the restore, +MB over zero history; held: sagas "
    "in memory, whole instances / ended ids; fetch ms: the broker's raw fetch of a partition's "
    "last record, p50, on a fresh topic / on the app's deepest partition; CPU ms/saga: "
    "orchestrator / broker; full read s: raw read of the whole journal; vs 0: ratio to zero "
    "history, ✓/✗ against the targets (restore ≤ 1.3x, RSS ≤ +50 MB, throughput ≥ 0.9x)"
)


def _num(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def rows(report: dict[str, Any]) -> list[list[str]]:
    namespace_journal = [
        t for t in report["levels"][0]["history_records"] if t.endswith(".journal")
    ]
    out = []
    for level in report["levels"]:
        r, b, cpu = level["ratios"], level["broker"], level["cpu_ms_per_saga"]
        ok = level["targets"]

        def mark(text: str, passed: bool, first: bool = level is report["levels"][0]) -> str:
            return text if first else f"{text} {'✓' if passed else '✗'}"

        journal = sum(level["history_records"][t] for t in namespace_journal)
        out.append(
            [
                f"{level['history_sagas']:,}",
                f"{journal:,}",
                f"{level['restore_s']:.2f}",
                mark(_num(r["restore"]), ok["restore"]),
                f"{level['rss_mb_after_restore']}",
                mark(_num(level["rss_growth_mb"], "+.1f"), ok["rss"]),
                f"{_num(level['held_instances'], '.0f')} / {_num(level['held_ended'], '.0f')}",
                f"{level['sagas_per_s']:.1f}",
                mark(_num(r["throughput"]), ok["throughput"]),
                f"{b['fresh_tail_fetch_ms']['p50']:.1f} / {b['grown_tail_fetch_ms']['p50']:.1f}",
                f"{_num(cpu['orchestrator'], '.1f')} / {_num(cpu['broker'], '.1f')}",
                f"{b['journal_full_read']['seconds']:.2f}",
            ]
        )
    return out


def table(report: dict[str, Any]) -> Table:
    """A column per level and a row per figure: a terminal fits a few levels, not twelve
    figures side by side (the markdown table has a row per level)."""
    levels = rows(report)
    t = Table(title="History growth", caption=LEGEND)
    t.add_column(COLUMNS[0])
    for level in levels:
        t.add_column(level[0], justify="right")
    for i, figure in enumerate(COLUMNS[1:], start=1):
        t.add_row(figure, *(level[i] for level in levels))
    return t


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    return "\n".join([*lines, "", LEGEND])
