"""The `sagakit` command line: every command is registered when this package is imported."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from .._errors import SagaError
from ..broker import EmbeddedBroker
from ._bench import bench
from ._bench_growth import bench_growth
from ._chaos import chaos
from ._common import err, out
from ._console import console
from ._describe import describe
from ._flows import compare, demo
from ._ops import dlq_app, sagas_app
from ._run import run

app = typer.Typer(
    name="sagakit",
    help="Sagas over Kafka: run your app's orchestrators and services, look into and act on "
    "running sagas, and drive an app through a scenario (demo, compare, chaos, bench).",
    no_args_is_help=True,
    add_completion=False,
)


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


app.command()(run)
app.add_typer(sagas_app, name="sagas")
app.add_typer(dlq_app, name="dlq")
app.command()(describe)
app.command()(demo)
app.command()(compare)
app.command()(chaos)
app.command()(bench)
app.command("bench-growth")(bench_growth)
app.command()(console)


def main() -> None:
    app()


__all__ = ["app", "main"]
