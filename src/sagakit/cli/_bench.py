"""`sagakit bench MODULE:ATTR`: throughput, latency and CPU of a scenario's sagas, as ratios
to a raw aiokafka baseline measured on the same broker in the same run."""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .._loader import LoadError, spec_of
from ._common import AppDir, fail
from ._flows import Options, ScenarioArg, scenario_of
from ._progress import run_with_progress


class BenchMode(StrEnum):
    closed = "closed"
    open = "open"


class BenchStyle(StrEnum):
    orchestration = "orchestration"
    choreography = "choreography"
    both = "both"


class BenchTransport(StrEnum):
    kafka = "kafka"
    memory = "memory"


def bench(
    scenario_spec: ScenarioArg,
    mode: Annotated[
        BenchMode,
        typer.Option(
            help="closed: a fixed number of sagas in flight (without --concurrency, step it "
            "up to the peak); open: a fixed arrival rate (without --rate, a sweep of "
            "fractions of the closed-loop peak, for where p99 crosses 75 ms)."
        ),
    ] = BenchMode.closed,
    style: Annotated[BenchStyle, typer.Option(help="Coordination style(s) to measure.")] = (
        BenchStyle.both
    ),
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Closed loop: sagas in flight (default: search).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.1, help="Open loop: sagas started per second.")
    ] = None,
    duration: Annotated[
        float, typer.Option(min=0.5, help="Seconds measured per measurement.")
    ] = 10.0,
    warmup: Annotated[
        float, typer.Option(min=0.0, help="Seconds of load before each measured window.")
    ] = 2.0,
    trace_sample: Annotated[
        list[float] | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of sagas traced (OTLP to a local sink); repeat to compare, "
            "e.g. --trace-sample 0 --trace-sample 0.1. 0: tracing off.",
        ),
    ] = None,
    transport: Annotated[
        BenchTransport,
        typer.Option(
            help="kafka: components as OS processes on a broker; memory: all in one "
            "process on MemoryTransport (the framework's own CPU cost)."
        ),
    ] = BenchTransport.kafka,
    orchestrators: Annotated[int, typer.Option(min=1, help="Orchestrator processes.")] = 1,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of every topic.")] = 8,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="A running Kafka; default: a fresh embedded broker per measurement."),
    ] = None,
    participant_latency_ms: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Each record a service handles first waits this long, as if its handler "
            "called another system (simulated I/O; see docs/benchmarks.md).",
        ),
    ] = 0.0,
    compare_serial: Annotated[
        bool,
        typer.Option(
            "--compare-serial",
            help="Also measure the closed-loop peak with every service handling one record "
            "at a time, and report concurrent ÷ serial.",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object with every figure on stdout.")
    ] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown tables.")] = False,
    uvloop: Annotated[
        bool, typer.Option("--uvloop", help="Run every process on uvloop's event loop.")
    ] = False,
    option: Options = None,
    app_dir: AppDir = None,
) -> None:
    """Measure sagas/s, steps/s, latency percentiles, CPU per step of every process and
    messages per saga, next to raw aiokafka figures measured on the same broker."""
    from .._bench.measure import Plan, Target
    from .._bench.report import print_report, to_markdown
    from .._bench.run import Options as BenchOptions
    from .._bench.run import run_bench

    scenario = scenario_of(scenario_spec, option, app_dir)
    apps = {"orchestration": scenario.app, "choreography": scenario.choreography}
    if style is BenchStyle.both and scenario.choreography is None:
        style = BenchStyle.orchestration  # nothing else to measure
    try:
        target = Target(
            scenario,
            {s: spec_of(a, near=scenario_spec) for s, a in apps.items() if a is not None},
            Path(app_dir).resolve() if app_dir else Path.cwd(),
        )
    except LoadError as exc:
        raise fail(str(exc)) from None
    if style is BenchStyle.choreography and scenario.choreography is None:
        raise fail(f"{type(scenario).__name__} has no choreography app")

    if uvloop:
        os.environ["SAGAKIT_UVLOOP"] = "1"  # this process and every component it starts
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if mode is BenchMode.closed and rate is not None:
        raise typer.BadParameter("--rate is for --mode open")
    styles: tuple[Any, ...] = (
        ("orchestration", "choreography") if style is BenchStyle.both else (style.value,)
    )
    options = BenchOptions(
        mode="open" if mode is BenchMode.open else "closed",
        styles=styles,
        concurrency=concurrency,
        rate=rate,
        trace_samples=tuple(trace_sample or (0.0,)),
        compare_serial=compare_serial,
        plan=Plan(
            transport="memory" if transport is BenchTransport.memory else "kafka",
            orchestrators=orchestrators,
            partitions=partitions,
            duration_s=duration,
            warmup_s=warmup,
            bootstrap=bootstrap,
            participant_latency_ms=participant_latency_ms,
        ),
    )
    report = run_with_progress("bench", lambda progress: run_bench(options, target, progress))
    if json_output:
        print(json.dumps(report))
    elif markdown:
        print(to_markdown(report))
    else:
        print_report(report, Console())
