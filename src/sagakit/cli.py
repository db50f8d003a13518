"""The `sagakit` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._errors import SagaError
from .broker import EmbeddedBroker

app = typer.Typer(
    name="sagakit",
    help="Sagas over Kafka: run the embedded broker and the sample place-order flow.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # aiokafka reports every rebalance and connection retry at WARNING/ERROR.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


@app.command()
def broker(
    port: Annotated[
        int, typer.Option(help="Loopback port to listen on (default: a free one).")
    ] = 0,
) -> None:
    """Run the embedded Kafka-compatible broker in the foreground (Ctrl-C stops it)."""
    try:
        b = EmbeddedBroker(port or None).start()
    except SagaError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print(f"embedded broker listening on [bold]{b.bootstrap_servers}[/bold] (memory only)")
    out.print(f"use it with: --bootstrap {b.bootstrap_servers}")

    def terminate(*_: object) -> None:
        # Unwind out of wait(); stopping from inside the handler would deadlock on the
        # lock Popen.wait() holds in the frame below.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    status = 0
    try:
        status = b.wait()
    except KeyboardInterrupt:
        status = 0
    finally:
        b.stop()
    raise typer.Exit(status)


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, help="How many orders to place.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the order mix.")] = 7,
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
    """Run ORDERS orders through the orchestrated place-order saga and check the outcome.

    Exit status 0 only if every saga ended and the business state is consistent.
    """
    configure_logging(verbose)
    try:
        result = anyio.run(_demo, orders, seed, bootstrap, timeout, not json_output)
    except SagaError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if json_output:
        print(json.dumps(result.to_json()))
    else:
        _print_demo(result)
    raise typer.Exit(0 if result.ok else 1)


async def _demo(orders: int, seed: int, bootstrap: str | None, timeout: float, show: bool) -> Any:
    from services.demo import run_orchestration

    from .transport.kafka import KafkaSettings, KafkaTransport

    async def run(settings: KafkaSettings) -> Any:
        progress = Progress(
            TextColumn("[bold]place-order sagas"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not show,
        )
        task = progress.add_task("sagas", total=orders)
        with progress:
            async with KafkaTransport(settings) as transport:
                return await run_orchestration(
                    transport,
                    orders=orders,
                    seed=seed,
                    timeout_s=timeout,
                    progress=lambda done, _total: progress.update(task, completed=done),
                )

    if bootstrap:
        return await run(KafkaSettings(bootstrap))
    if show:
        err.print("starting the embedded broker ...")
    async with EmbeddedBroker() as embedded:
        return await run(KafkaSettings.embedded(embedded.bootstrap_servers))


def _print_demo(result: Any) -> None:
    table = Table(title=f"place-order saga, {result.style}: {result.orders} orders")
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
        f"saga latency: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms "
        f"(all sagas in {result.duration_s:.2f} s)"
    )
    if result.consistent:
        out.print("[green]consistent[/green]: credit, stock and shipments match the orders")
    else:
        out.print(f"[red]inconsistent[/red]: {len(result.violations)} violation(s)")
        for v in result.violations[:20]:
            out.print(f"  - {v}")
        if len(result.violations) > 20:
            out.print(f"  ... and {len(result.violations) - 20} more")


def main() -> None:
    from ._cli_ops import dlq_app, sagas_app
    from ._cli_run import chaos, orchestrator_app, service_app

    app.add_typer(sagas_app, name="sagas")
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(orchestrator_app, name="orchestrator")
    app.add_typer(service_app, name="service")
    app.command()(chaos)
    app()


if __name__ == "__main__":
    main()
