"""`sagakit orchestrator run` and `sagakit service run`: one component per OS process."""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from anyio import CancelScope
from anyio.abc import TaskStatus

from ._definition import Saga
from ._errors import SagaError
from ._orchestrator import Orchestrator
from .tracing import Tracing
from .transport.kafka import KafkaSettings, KafkaTransport

orchestrator_app = typer.Typer(help="Run a saga orchestrator.")
service_app = typer.Typer(help="Run a sample service (orders, payments, inventory, shipping).")

SERVICES = ("orders", "payments", "inventory", "shipping")


class Profile(StrEnum):
    kafka = "kafka"
    embedded = "embedded"


Bootstrap = Annotated[
    str, typer.Option(envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers.")
]
ProfileOpt = Annotated[
    Profile,
    typer.Option(
        envvar="SAGAKIT_PROFILE",
        help="Client settings: 'embedded' for the embedded broker (short fetch waits and "
        "sessions), 'kafka' for Apache Kafka.",
    ),
]
Namespace = Annotated[str, typer.Option(help="Prefix of every topic and group name.")]
Partitions = Annotated[int, typer.Option(min=1, help="Partitions of the topics created.")]


def settings(bootstrap: str, profile: Profile, client_id: str) -> KafkaSettings:
    if profile is Profile.embedded:
        return KafkaSettings.embedded(bootstrap, client_id=client_id)
    return KafkaSettings(bootstrap, client_id=client_id)


def load_saga(spec: str) -> Saga[Any]:
    """A saga definition named as ``package.module:attribute``."""
    module_name, _, attr = spec.partition(":")
    try:
        saga = getattr(importlib.import_module(module_name), attr or "saga")
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot load saga {spec!r}: {exc}") from exc
    if not isinstance(saga, Saga):
        raise typer.BadParameter(f"{spec!r} is {type(saga).__name__}, not a Saga")
    return saga


async def _stop_on_signals(scope: CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def serve(
    run: Callable[..., Coroutine[Any, Any, None]],
    ready: Callable[[], Awaitable[None]],
    transport: KafkaTransport,
    tracing: Tracing,
) -> None:
    """Run one component until SIGTERM/SIGINT; print READY on stdout once it is ready."""

    async def main() -> None:
        async with transport, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, tg.cancel_scope)
            await tg.start(run)
            await ready()
            print("READY", flush=True)

    try:
        anyio.run(main)
    except SagaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    finally:
        tracing.shutdown()  # flush the spans still queued


@orchestrator_app.command("run")
def orchestrator_run(
    bootstrap: Bootstrap,
    saga: Annotated[
        str, typer.Option(help="The saga definition, as module:attribute.")
    ] = "services.orders.saga:place_order",
    profile: ProfileOpt = Profile.kafka,
    namespace: Namespace = "",
    partitions: Partitions = 8,
    group_id: Annotated[str | None, typer.Option(help="Consumer group (default per saga).")] = None,
) -> None:
    """Run an orchestrator for one saga definition until SIGTERM or Ctrl-C.

    Start several for the same saga to share the partitions; each restores the
    journal of the partitions it gets.
    """
    from .cli import configure_logging

    configure_logging(False)
    definition = load_saga(saga)
    transport = KafkaTransport(settings(bootstrap, profile, f"{definition.name}-orchestrator"))
    tracing = Tracing.from_env("saga-orchestrator")
    orchestrator = Orchestrator(
        definition,
        transport,
        partitions=partitions,
        group_id=group_id,
        namespace=namespace,
        tracing=tracing,
    )
    serve(orchestrator.run, orchestrator.wait_ready, transport, tracing)


@service_app.command("run")
def service_run(
    name: Annotated[str, typer.Argument(help="orders, payments, inventory or shipping")],
    bootstrap: Bootstrap,
    db: Annotated[
        Path | None, typer.Option(help="The service's SQLite file (default: ./NAME.sqlite3).")
    ] = None,
    style: Annotated[
        str, typer.Option(help="orchestration (commands and replies) or choreography (events).")
    ] = "orchestration",
    profile: ProfileOpt = Profile.kafka,
    namespace: Namespace = "",
    partitions: Partitions = 8,
    order_deadline: Annotated[
        float, typer.Option(help="Choreography, orders: expire orders with no outcome after this.")
    ] = 60.0,
) -> None:
    """Run one sample service until SIGTERM or Ctrl-C."""
    from services.outcome import STYLES
    from services.system import build_app

    from .cli import configure_logging

    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    if style not in STYLES:
        raise typer.BadParameter(f"unknown style {style!r}; one of {', '.join(STYLES)}")
    configure_logging(False)
    tracing = Tracing.from_env(name)
    service, orders = build_app(
        name,
        db or Path(f"{name}.sqlite3"),
        partitions=partitions,
        namespace=namespace,
        style=style,
        tracing=tracing,
    )
    transport = KafkaTransport(settings(bootstrap, profile, f"{name}-service"))

    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            if orders is not None and style == "choreography":
                await tg.start(
                    lambda task_status: orders.run_deadlines(
                        transport, order_deadline, task_status=task_status
                    )
                )
            await tg.start(lambda task_status: service.run(transport, task_status=task_status))
            task_status.started()

    serve(run, service.wait_assigned, transport, tracing)


def chaos(
    orders: Annotated[int, typer.Option(min=1, help="How many orders to push.")] = 200,
    kill_every: Annotated[
        float, typer.Option(min=0.5, help="Seconds between two SIGKILLs of a random process.")
    ] = 5.0,
    seed: Annotated[int, typer.Option(help="Seed of the orders and of the victims.")] = 7,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers; default: the embedded broker.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every saga.")] = 300.0,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Run the sample system as processes (2 orchestrators, 4 services), SIGKILL one at
    random every KILL_EVERY seconds and restart it, then check the invariants.

    Exit status 0 only if every order ended, the business state is consistent, no effect
    was applied twice, the journal has no gap, and nothing is unhandled outside a DLQ.
    """
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from services.chaos import run_chaos

    from .cli import configure_logging

    configure_logging(False)
    err = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]chaos[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=json_output,
    )
    task = bar.add_task("", total=orders)
    with bar:
        result = anyio.run(
            lambda: run_chaos(
                orders=orders,
                kill_every_s=kill_every,
                seed=seed,
                bootstrap=bootstrap,
                timeout_s=timeout,
                progress=lambda what, done, total: bar.update(
                    task, description=what, completed=done
                ),
            )
        )
    if json_output:
        print(json.dumps(result.to_json()))
    else:
        out = Console()
        out.print(
            f"{result.orders} orders, {result.kills} kills {result.killed}: "
            f"outcomes {result.outcomes}, unfinished {result.unfinished}, "
            f"duplicated effects {result.duplicated_effects}, "
            f"journal anomalies {result.journal_anomalies}, dead letters {result.dlq or 'none'}"
        )
        if result.ok:
            out.print("[green]all invariants hold[/green]")
        else:
            out.print(f"[red]{len(result.violations)} violation(s)[/red]")
            for v in result.violations[:20]:
                out.print(f"  - {v}")
    raise typer.Exit(0 if result.ok else 1)
