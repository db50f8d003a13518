"""`sagakit demo` and `sagakit compare`: a scenario's app, in this process, measured."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._flows import FlowResult, app_of, run_flow
from .._flows import compare as compare_styles
from .._loader import LoadError, load_scenario
from .._logging import configure_logging
from ..broker import EmbeddedBroker
from ..scenario import Scenario
from ..tracing import ComponentTracings
from ..transport.kafka import KafkaSettings, KafkaTransport
from ._common import AppDir, JsonOpt, err, fail, out, print_json, print_table, run_async

ScenarioArg = Annotated[
    str,
    typer.Argument(
        metavar="MODULE:ATTR",
        help="The scenario (a Scenario, or a function or class that makes one), e.g. "
        "services.scenario:place_order.",
    ),
]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="An argument for the scenario's factory (repeatable).",
    ),
]
Count = Annotated[int, typer.Option("--count", "-n", min=1, help="How many sagas to start.")]
Seed = Annotated[int, typer.Option(help="Seed of the start requests.")]
Bootstrap = Annotated[
    str | None,
    typer.Option(
        envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers; default: an embedded broker."
    ),
]


class StyleChoice(StrEnum):
    orchestration = "orchestration"
    choreography = "choreography"
    both = "both"

    @property
    def styles(self) -> tuple[Any, ...]:
        if self is StyleChoice.both:
            return ("orchestration", "choreography")
        return (self.value,)


def parse_options(options: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--option {item!r} is not KEY=VALUE")
        parsed[key.strip().replace("-", "_")] = value
    return parsed


def scenario_of(spec: str, options: list[str] | None, app_dir: str | None) -> Scenario:
    try:
        scenario: Scenario = load_scenario(spec, parse_options(options), directory=app_dir)
    except (LoadError, ValueError) as exc:
        raise fail(str(exc)) from None
    return scenario


def progress_bar(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not show,
    )


@asynccontextmanager
async def connection(bootstrap: str | None, client_id: str) -> AsyncIterator[KafkaTransport]:
    """A transport on `bootstrap`, or on a fresh embedded broker."""
    if bootstrap:
        async with KafkaTransport(
            KafkaSettings.from_env(bootstrap, client_id=client_id)
        ) as transport:
            yield transport
        return
    async with EmbeddedBroker() as broker:
        settings = KafkaSettings.embedded(broker.bootstrap_servers, client_id=client_id)
        async with KafkaTransport(settings) as transport:
            yield transport


def demo(
    scenario_spec: ScenarioArg,
    count: Count = 100,
    seed: Seed = 7,
    style: Annotated[
        StyleChoice | None,
        typer.Option(
            help="Coordination style to run (both: one after the other). Default: both when "
            "the scenario has a choreography app, else orchestration."
        ),
    ] = None,
    option: Options = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Sagas in flight at once (default: all).")
    ] = None,
    json_output: JsonOpt = False,
    bootstrap: Bootstrap = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every saga to end.")] = 120.0,
    app_dir: AppDir = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    """Run COUNT sagas of a scenario through its app (all in this process) and check them.

    Exit status 0 only if every saga ended and the scenario's check found nothing. With
    --json and one style, one object; with both, {"orchestration": .., "choreography": ..}.
    """
    configure_logging(verbose)
    scenario = scenario_of(scenario_spec, option, app_dir)
    if style is None:
        style = StyleChoice.both if scenario.choreography is not None else StyleChoice.orchestration
    for s in style.styles:
        try:
            app_of(scenario, s)
        except ValueError as exc:
            raise fail(str(exc)) from None

    async def main() -> list[FlowResult]:
        results = []
        run = uuid.uuid4().hex[:8]
        assert style is not None
        for s in style.styles:
            progress = progress_bar(not json_output)
            task = progress.add_task(f"{type(scenario).__name__}, {s}", total=count)
            tracings = ComponentTracings()  # honours OTEL_*; off (no overhead) when unset
            with progress:
                async with connection(bootstrap, "sagakit-demo") as transport:
                    results.append(
                        await run_flow(
                            scenario,
                            transport,
                            style=s,
                            count=count,
                            seed=seed,
                            run=run,
                            concurrency=concurrency,
                            timeout_s=timeout,
                            progress=_updater(progress, task),
                            tracing=tracings,
                        )
                    )
            tracings.shutdown()
        return results

    results = run_async(main)
    if json_output:
        if len(results) == 1:
            print_json(results[0].to_json())
        else:
            print_json({r.style: r.to_json() for r in results})
    else:
        for result in results:
            _print_result(result)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def _updater(bar: Progress, task: Any) -> Callable[[int, int], None]:
    return lambda done, _total: bar.update(task, completed=done)


def _print_result(result: FlowResult) -> None:
    rows = [[status, str(n)] for status, n in result.outcomes.items()]
    rows.append(["unfinished", str(result.unfinished)])
    print_table(
        ["outcome", "sagas"], rows, title=f"{result.scenario}, {result.style}: {result.count} sagas"
    )
    lat = result.latency_ms
    out.print(
        f"latency: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms "
        f"(all sagas in {result.duration_s:.2f} s)"
    )
    if result.consistent:
        out.print("[green]consistent[/green]: the scenario's check found nothing wrong\n")
    else:
        out.print(f"[red]inconsistent[/red]: {len(result.violations)} violation(s)")
        for v in result.violations[:20]:
            out.print(f"  - {v}")
        if len(result.violations) > 20:
            out.print(f"  ... and {len(result.violations) - 20} more")


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    *(
        (f"ended {status}", lambda r, s=status: str(r["outcomes"].get(s, 0)))
        for status in ("APPROVED", "REJECTED", "COMPLETED", "COMPENSATED")
    ),
    ("unfinished", lambda r: str(r["unfinished"])),
    ("throughput (sagas/s)", lambda r: f"{r['throughput_per_s']:.1f}"),
    ("latency p50 (ms)", lambda r: f"{r['latency_ms']['p50']:.0f}"),
    ("latency p95 (ms)", lambda r: f"{r['latency_ms']['p95']:.0f}"),
    ("latency p99 (ms)", lambda r: f"{r['latency_ms']['p99']:.0f}"),
    ("messages per saga", lambda r: f"{r['messages_per_saga']:.1f}"),
    ("bytes per saga", lambda r: f"{r['bytes_per_saga']:.0f}"),
    (
        "messages by topic kind",
        lambda r: ", ".join(f"{k} {v}" for k, v in r["messages_by_topic_kind"].items()),
    ),
    ("consistent", lambda r: "yes" if r["consistent"] else f"NO ({len(r['violations'])})"),
    (
        "topics read / written, per component",
        lambda r: ", ".join(
            f"{n} {len(c['reads'])}/{len(c['writes'])}" for n, c in r["coupling"].items()
        ),
    ),
    (
        "services each component must know",
        lambda r: ", ".join(f"{n} {len(c['knows'])}" for n, c in r["coupling"].items()),
    ),
    ("outcome digest", lambda r: r["outcomes_digest"]),
]


def _rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The rows that say something: outcome rows only for outcomes some style has."""
    seen = {k for r in results.values() for k in r["outcomes"]}
    return [
        (label, cell)
        for label, cell in ROWS
        if not label.startswith("ended ") or label.removeprefix("ended ") in seen
    ]


def compare(
    scenario_spec: ScenarioArg,
    count: Count = 200,
    seed: Seed = 7,
    option: Options = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Sagas in flight at once (default: all).")
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            envvar="SAGAKIT_BOOTSTRAP",
            help="A real Kafka; default: a fresh embedded broker per style.",
        ),
    ] = None,
    json_output: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait per style.")] = 600.0,
    app_dir: AppDir = None,
) -> None:
    """Run the same seeded sagas through both styles of a scenario and report them side
    by side: outcomes, throughput, latency, traffic, consistency, coupling."""
    configure_logging(False)
    scenario = scenario_of(scenario_spec, option, app_dir)
    if scenario.choreography is None:
        raise fail(f"{type(scenario).__name__} has no choreography app to compare with")
    progress = progress_bar(not json_output)
    tasks: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = progress.add_task(what, total=total)
        progress.update(tasks[what], completed=done)

    with progress:
        results = run_async(
            lambda: compare_styles(
                scenario,
                lambda _style: connection(bootstrap, "sagakit-compare"),
                count=count,
                seed=seed,
                concurrency=concurrency,
                timeout_s=timeout,
                progress=report,
                tracing=ComponentTracings,
            )
        )
    if json_output:
        print_json(results)
    elif markdown:
        print(to_markdown(results))
    else:
        rows = [[label, *(cell(r) for r in results.values())] for label, cell in _rows(results)]
        print_table(
            ["", *results],
            rows,
            title=f"{type(scenario).__name__}, {count} sagas, seed {seed}",
        )
    ok = all(r["unfinished"] == 0 and r["consistent"] for r in results.values())
    raise typer.Exit(0 if ok else 1)


def to_markdown(results: dict[str, dict[str, Any]]) -> str:
    styles = list(results)
    lines = [
        "| | " + " | ".join(styles) + " |",
        "|---|" + "---|" * len(styles),
    ]
    for label, cell in _rows(results):
        lines.append(f"| {label} | " + " | ".join(cell(results[s]) for s in styles) + " |")
    return "\n".join(lines)
