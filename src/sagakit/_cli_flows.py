"""`sagakit demo` and `sagakit compare`: the sample flow in one or both styles."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._errors import SagaError
from ._logging import configure_logging
from ._loop import run as run_loop
from .broker import EmbeddedBroker
from .transport.kafka import KafkaSettings, KafkaTransport

err = Console(stderr=True)
out = Console()


class StyleChoice(StrEnum):
    orchestration = "orchestration"
    choreography = "choreography"
    both = "both"

    @property
    def styles(self) -> tuple[Any, ...]:
        if self is StyleChoice.both:
            return ("orchestration", "choreography")
        return (self.value,)


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not show,
    )


def demo(
    orders: Annotated[int, typer.Option(min=1, help="How many orders to place.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the order mix.")] = 7,
    style: Annotated[
        StyleChoice, typer.Option(help="Coordination style to run (both: one after the other).")
    ] = StyleChoice.both,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap servers; default: start the embedded broker."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every saga to end.")] = 120.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    """Run ORDERS orders through the place-order flow and check the outcome.

    Exit status 0 only if every order ended and the business state is consistent. With
    --json and one style, one object; with both, {"orchestration": .., "choreography": ..}.
    """
    configure_logging(verbose)
    try:
        results = run_loop(_demo, orders, seed, style.styles, bootstrap, timeout, not json_output)
    except SagaError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if json_output:
        if len(results) == 1:
            print(json.dumps(results[0].to_json()))
        else:
            print(json.dumps({r.style: r.to_json() for r in results}))
    else:
        for result in results:
            _print_demo(result)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


async def _demo(
    orders: int,
    seed: int,
    styles: tuple[Any, ...],
    bootstrap: str | None,
    timeout: float,
    show: bool,
) -> list[Any]:
    import uuid

    run = uuid.uuid4().hex[:8]
    results = []
    options = {"orders": orders, "seed": seed, "timeout_s": timeout}
    for style in styles:
        progress = _progress(show)
        task = progress.add_task(f"place-order, {style}", total=orders)
        with progress:
            report = _reporter(progress, task)
            if bootstrap:
                settings, namespace = KafkaSettings(bootstrap), f"{style}-{run}."
                results.append(await _one(settings, namespace, style, report, **options))
            else:
                async with EmbeddedBroker() as embedded:
                    settings = KafkaSettings.embedded(embedded.bootstrap_servers)
                    results.append(await _one(settings, "", style, report, **options))
    return results


def _reporter(progress: Progress, task: Any) -> Callable[[int, int], None]:
    return lambda done, _total: progress.update(task, completed=done)


async def _one(
    settings: KafkaSettings,
    namespace: str,
    style: Any,
    report: Callable[[int, int], None],
    **options: Any,
) -> Any:
    from services.demo import TracingFromEnv, run_flow

    tracing = TracingFromEnv()  # honours OTEL_*; off (no overhead) when unset
    try:
        async with KafkaTransport(settings) as transport:
            return await run_flow(
                transport,
                style=style,
                namespace=namespace,
                progress=report,
                tracing=tracing,
                **options,
            )
    finally:
        tracing.shutdown()


def _print_demo(result: Any) -> None:
    table = Table(title=f"place-order, {result.style}: {result.orders} orders")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    for status, n in result.outcomes.items():
        table.add_row(status, str(n))
    table.add_row(
        "unfinished", str(result.unfinished), style="red" if result.unfinished else "green"
    )
    out.print(table)
    lat = result.latency_ms
    out.print(
        f"latency: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms "
        f"(all orders in {result.duration_s:.2f} s)"
    )
    if result.consistent:
        out.print("[green]consistent[/green]: credit, stock and shipments match the orders\n")
    else:
        out.print(f"[red]inconsistent[/red]: {len(result.violations)} violation(s)")
        for v in result.violations[:20]:
            out.print(f"  - {v}")
        if len(result.violations) > 20:
            out.print(f"  ... and {len(result.violations) - 20} more")


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("completed (approved)", lambda r: str(r["outcomes"].get("APPROVED", 0))),
    ("compensated (rejected)", lambda r: str(r["outcomes"].get("REJECTED", 0))),
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
    ("outcome digest", lambda r: r["outcomes_by_order_digest"]),
]


def compare(
    orders: Annotated[int, typer.Option(min=1, help="How many orders per style.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the orders.")] = 7,
    failure_mix: Annotated[
        str, typer.Option(help="Share of orders failing on credit, stock and shipping.")
    ] = "credit=0.1,stock=0.1,shipping=0.05",
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Orders in flight at once (default: all).")
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="A real Kafka; default: a fresh embedded broker per style.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait per style.")] = 600.0,
) -> None:
    """Run the same seeded orders through both styles and report them side by side."""
    from services.compare import parse_mix, run_compare

    configure_logging(False)
    try:
        mix = parse_mix(failure_mix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    progress = _progress(not json_output)
    tasks: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = progress.add_task(what, total=total)
        progress.update(tasks[what], completed=done)

    try:
        with progress:
            results = run_loop(
                lambda: run_compare(
                    orders=orders,
                    seed=seed,
                    failure_mix=mix,
                    concurrency=concurrency,
                    bootstrap=bootstrap,
                    timeout_s=timeout,
                    progress=report,
                )
            )
    except (SagaError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if json_output:
        print(json.dumps(results))
    elif markdown:
        print(to_markdown(results))
    else:
        table = Table(title=f"place-order, {orders} orders, seed {seed}, mix {failure_mix}")
        table.add_column("")
        for style in results:
            table.add_column(style)
        for label, cell in ROWS:
            table.add_row(label, *(cell(r) for r in results.values()))
        out.print(table)
    ok = all(r["unfinished"] == 0 and r["consistent"] for r in results.values())
    raise typer.Exit(0 if ok else 1)


def to_markdown(results: dict[str, dict[str, Any]]) -> str:
    styles = list(results)
    lines = [
        "| | " + " | ".join(styles) + " |",
        "|---|" + "---|" * len(styles),
    ]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(results[s]) for s in styles) + " |")
    return "\n".join(lines)
