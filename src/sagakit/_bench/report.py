"""The report of a run as tables: rich on a terminal, or Markdown (for docs/benchmarks.md).

Every table is built once as headers and rows of strings, then rendered either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

SERVICES = ("orders", "payments", "inventory", "shipping")


@dataclass(frozen=True, slots=True)
class Grid:
    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    notes: Sequence[str] = ()


def _f(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cpu(m: dict[str, Any], name: str) -> str:
    return _f(m["cpu_us_per_step"].get(name))


def baseline_grid(report: dict[str, Any]) -> Grid | None:
    b = report.get("baseline")
    if not b:
        return None
    spread = report.get("baseline_spread") or {}
    rt = b["round_trip_ms"]

    def rng(key: str, digits: int = 0) -> str:
        lo_hi = spread.get(key)
        return f"{_f(lo_hi[0], digits)} to {_f(lo_hi[1], digits)}" if lo_hi else ""

    return Grid(
        "raw aiokafka baseline (same broker, sagakit's client settings)",
        ["figure", "first measurement", "range over the run"],
        [
            ["two-hop round trip p50 (ms)", _f(rt["p50"], 1), rng("round_trip_p50_ms", 1)],
            ["two-hop round trip p99 (ms)", _f(rt["p99"], 1), rng("round_trip_p99_ms", 1)],
            ["produce, batched (msgs/s)", _f(b["produce_msgs_per_s"]), rng("produce_msgs_per_s")],
            ["consume, batched (msgs/s)", _f(b["consume_msgs_per_s"]), rng("consume_msgs_per_s")],
        ],
        [f"records of {b['record_bytes']} B (key, value, 8 headers), {b['messages']:,} messages"],
    )


def _series_title(entry: dict[str, Any]) -> str:
    parts = [entry["style"], entry["transport"]]
    if entry["style"] == "orchestration":
        parts.append(f"{entry['orchestrators']} orchestrator(s)")
    parts.append(f"{entry['partitions']} partitions")
    parts.append(f"trace sample {entry['trace_sample']:g}")
    if entry.get("participant_latency_ms"):
        parts.append(f"handlers +{entry['participant_latency_ms']:g} ms")
    return ", ".join(parts)


def _cpu_columns(points: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for p in points:
        for name in p["cpu_us_per_step"]:
            if name not in names and not name.startswith("orchestrator-"):
                names.append(name)
    order = ["orchestrator", *SERVICES, "broker", "driver", "process", "total"]
    return [n for n in order if n in names]


LoadCell = Callable[[dict[str, Any]], str]


def _points_grids(
    title: str, first: tuple[str, LoadCell], points: Sequence[dict[str, Any]]
) -> tuple[Grid, Grid]:
    """(throughput, latency and ratios to the baseline; CPU per step and traffic)."""
    speed = []
    for p in points:
        lat, r = p["latency_ms"], p.get("ratios") or {}
        speed.append(
            [
                first[1](p),
                _f(p["sagas_per_s"], 1),
                _f(p["steps_per_s"]),
                _f(lat["p50"], 1),
                _f(lat["p95"], 1),
                _f(lat["p99"], 1),
                _f(lat["max"], 1),
                _f(r.get("sagas_per_raw_msg"), 4),
                _f(r.get("msg_rate_per_raw_msg_rate"), 2),
                _f(r.get("latency_p50_per_round_trip_p50"), 1),
                _f(r.get("latency_p99_per_round_trip_p99"), 1),
            ]
        )
    cpu = _cpu_columns(points)
    cost = [
        [
            first[1](p),
            *(_cpu(p, n) for n in cpu),
            _f(p["messages_per_saga"], 1),
            _f(p["bytes_per_saga"]),
        ]
        for p in points
    ]
    return (
        Grid(
            title,
            [
                first[0],
                "sagas/s",
                "steps/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
                "sagas/s ÷ raw msgs/s",
                "saga msgs/s ÷ raw msgs/s",
                "p50 ÷ raw RT p50",
                "p99 ÷ raw RT p99",
            ],
            speed,
        ),
        Grid(
            f"{title}: CPU µs per saga step, traffic per saga",
            [first[0], *cpu, "msgs/saga", "bytes/saga"],
            cost,
        ),
    )


def hops_grid(title: str, point: dict[str, Any]) -> Grid | None:
    hops = point.get("hops") or []
    if not hops:
        return None
    return Grid(
        f"{title}: where the time goes, per hop (record timestamps)",
        ["hop (cause → message)", "sent by", "count", "p50 ms", "p99 ms", "at ms (p50)"],
        [
            [h["hop"], h["by"], str(h["count"]), _f(h["p50_ms"]), _f(h["p99_ms"]), _f(h["at_ms"])]
            for h in hops
        ],
        [
            "a hop is the time from a message's cause being sent to the message being sent: "
            "the consumer's fetch wait, the handling and the produce"
        ],
    )


def series_grids(entry: dict[str, Any]) -> list[Grid]:
    grids = []
    title = _series_title(entry)
    closed = entry.get("closed")
    if closed:
        speed, cost = _points_grids(
            f"closed loop: {title}",
            ("in flight", lambda p: str(p["plan"]["concurrency"])),
            closed["points"],
        )
        peak = closed["peak"]
        note = (
            f"peak {_f(peak['sagas_per_s'], 1)} sagas/s at {peak['plan']['concurrency']} in flight "
            f"(p99 {_f(peak['latency_ms']['p99'], 1)} ms)"
        )
        grids += [Grid(speed.title, speed.headers, speed.rows, [note]), cost]
        hops = hops_grid(f"closed loop at the peak: {title}", peak)
        grids += [hops] if hops else []
    serial = entry.get("serial")
    if serial:
        ratio = serial["ratio"]
        grids.append(
            Grid(
                f"concurrent against serial services: {title}",
                ["services", "in flight", "sagas/s", "p99 ms"],
                [
                    [
                        str(p["plan"].get("service_concurrency") or "app's setting"),
                        str(p["plan"]["concurrency"]),
                        _f(p["sagas_per_s"], 1),
                        _f(p["latency_ms"]["p99"], 1),
                    ]
                    for p in (closed["peak"] if closed else serial["point"], serial["point"])
                ],
                [
                    f"concurrent ÷ serial: {ratio:.2f} times"
                    if ratio is not None
                    else "with serial services no saga ended in the measured window "
                    "(a queue longer than the steps' timeouts: they time out and retry)"
                ],
            )
        )
    opened = entry.get("open")
    if opened:
        speed, cost = _points_grids(
            f"open loop: {title}",
            (
                "arrival rate/s (share of peak)",
                lambda p: (
                    f"{_f(p['plan']['rate'], 1)} ({p['fraction_of_peak']:.0%})"
                    if "fraction_of_peak" in p
                    else _f(p["plan"]["rate"], 1)
                ),
            ),
            opened["points"],
        )
        grids += [Grid(speed.title, speed.headers, speed.rows, open_notes(opened)), cost]
        kept = [p for p in opened["points"] if kept_up(p)]
        hops = (
            hops_grid(f"open loop at the highest rate kept up with: {title}", kept[-1])
            if kept
            else None
        )
        grids += [hops] if hops else []
    return grids


def kept_up(point: dict[str, Any]) -> bool:
    """The system finished what arrived (as `bench.sweep.kept_up`)."""
    return bool(point["censored"] == 0 and point["sagas_per_s"] >= 0.9 * point["arrival_per_s"])


def open_notes(opened: dict[str, Any]) -> list[str]:
    notes = []
    for p in opened["points"]:
        if kept_up(p):
            continue
        notes.append(
            f"at {_f(p['plan']['rate'], 1)}/s the system fell behind: "
            f"{_f(p['sagas_per_s'], 1)} sagas/s ended for {_f(p['arrival_per_s'], 1)}/s arriving"
            + (f", {p['censored']} still unfinished after the drain" if p["censored"] else "")
        )
    c = opened.get("p99_crossing")
    if c is None:
        return notes
    if c.get("rate") is not None:
        notes.append(
            f"p99 crosses {opened['target_p99_ms']:.0f} ms at about {_f(c['rate'], 1)} sagas/s "
            f"({c['fraction_of_peak']:.0%} of the closed-loop peak)"
        )
    elif "below" in c:
        notes.append(
            f"p99 is over {opened['target_p99_ms']:.0f} ms already at the lowest rate measured, "
            f"{_f(c['below'], 1)} sagas/s ({_f(c['p99_ms_there'], 1)} ms)"
        )
    else:
        notes.append(
            f"p99 stays under {opened['target_p99_ms']:.0f} ms up to {_f(c['above'], 1)} sagas/s"
        )
    return notes


def tracing_grid(report: dict[str, Any]) -> Grid | None:
    cost = report.get("tracing_cost") or {}
    if not cost:
        return None
    rows = [
        [style, sample, f"{ratio:.3f}", f"{1 - ratio:+.1%}"]
        for style, by_sample in cost.items()
        for sample, ratio in by_sample.items()
    ]
    return Grid(
        "tracing: closed-loop peak with tracing ÷ peak without",
        ["style", "trace sample", "throughput ratio", "cost"],
        rows,
    )


def grids(report: dict[str, Any]) -> list[Grid]:
    out = [g for g in (baseline_grid(report),) if g is not None]
    for entry in report["series"]:
        out.extend(series_grids(entry))
    tracing = tracing_grid(report)
    if tracing is not None:
        out.append(tracing)
    return out


def to_markdown(report: dict[str, Any]) -> str:
    blocks = []
    for g in grids(report):
        lines = [f"**{g.title}**", "", "| " + " | ".join(g.headers) + " |"]
        lines.append("|" + "|".join("---" for _ in g.headers) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in g.rows)
        lines.extend(["", *(f"- {n}" for n in g.notes)] if g.notes else [])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def print_report(report: dict[str, Any], console: Console) -> None:
    for g in grids(report):
        table = Table(title=g.title, title_justify="left")
        for i, header in enumerate(g.headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in g.rows:
            table.add_row(*row)
        console.print(table)
        for note in g.notes:
            console.print(f"  {note}")
        console.print()
