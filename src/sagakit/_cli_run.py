"""`sagakit orchestrator run` and `sagakit service run`: one component per OS process."""

from __future__ import annotations

import importlib
import logging
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
from ._http import DEFAULT_HTTP_PORT, HttpEndpoints
from ._logging import configure_logging
from ._loop import run as run_loop
from ._metrics import Metrics
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
HttpPort = Annotated[
    int,
    typer.Option(
        envvar="SAGAKIT_HTTP_PORT",
        help="Port of /healthz, /readyz and /metrics (0: no HTTP server).",
    ),
]


class LogFormat(StrEnum):
    text = "text"
    json = "json"


LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        envvar="SAGAKIT_LOG_FORMAT",
        help="text, or json: one object a line with saga_id, correlation_id, trace_id.",
    ),
]
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
    http: HttpEndpoints | None,
) -> None:
    """Run one component until SIGTERM/SIGINT; print READY on stdout once it is ready."""

    async def main() -> None:
        async with transport, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, tg.cancel_scope)
            if http is not None:
                await tg.start(http.run)
            await tg.start(run)
            await ready()
            print("READY", flush=True)

    try:
        run_loop(main)
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
    http_port: HttpPort = DEFAULT_HTTP_PORT,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Run an orchestrator for one saga definition until SIGTERM or Ctrl-C.

    Start several for the same saga to share the partitions; each restores the
    journal of the partitions it gets.
    """
    configure_logging(False, log_format.value)
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
        metrics=Metrics("saga-orchestrator"),
    )
    http = (
        HttpEndpoints(
            port=http_port, ready=lambda: orchestrator.ready, metrics=[orchestrator.metrics]
        )
        if http_port
        else None
    )
    serve(orchestrator.run, orchestrator.wait_ready, transport, tracing, http)


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
    demo_data: Annotated[
        bool, typer.Option(help="Seed the demo's reference data (customers, products, regions).")
    ] = False,
    http_port: HttpPort = DEFAULT_HTTP_PORT,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Run one sample service until SIGTERM or Ctrl-C."""
    from services.orders.http import orders_routes
    from services.outcome import STYLES
    from services.system import build_app

    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    if style not in STYLES:
        raise typer.BadParameter(f"unknown style {style!r}; one of {', '.join(STYLES)}")
    configure_logging(False, log_format.value)
    tracing = Tracing.from_env(name)
    service, orders = build_app(
        name,
        db or Path(f"{name}.sqlite3"),
        partitions=partitions,
        namespace=namespace,
        style=style,
        tracing=tracing,
        demo_data=demo_data,
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

    http = None
    if http_port:
        routes = orders_routes(orders, transport) if orders is not None else []
        http = HttpEndpoints(
            port=http_port,
            ready=lambda: bool(service.assignment),
            metrics=[service.metrics],
            routes=routes,
        )
    serve(run, service.wait_assigned, transport, tracing, http)


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
        result = run_loop(
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
        for reason, n in result.reasons.items():
            out.print(f"  {n:>7}  {reason}")
        if result.unsettled_in_journal:
            out.print(
                f"[red]{result.unsettled_in_journal} saga(s) not settled in the journal[/red]"
            )
        if result.ok:
            out.print("[green]all invariants hold[/green]")
        else:
            out.print(f"[red]{len(result.violations)} violation(s)[/red]")
            for v in result.violations[:20]:
                out.print(f"  - {v}")
    raise typer.Exit(0 if result.ok else 1)


def load(
    orders_url: Annotated[
        str, typer.Option(envvar="SAGAKIT_ORDERS_URL", help="The orders service's POST /orders.")
    ] = "http://localhost:8080/orders",
    rate: Annotated[float, typer.Option(min=0.1, help="Orders per second.")] = 5.0,
    count: Annotated[int, typer.Option(min=0, help="Orders in all (0: until stopped).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the order mix.")] = 7,
    failure_mix: Annotated[
        str, typer.Option(help="Share of orders failing on credit, stock and shipping.")
    ] = "credit=0.1,stock=0.1,shipping=0.05",
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Place sample orders at RATE per second through the orders service's HTTP API.

    The orders use the demo's reference data, which `sagakit service run --demo-data`
    seeds in each service.
    """
    import uuid
    from dataclasses import asdict

    import aiohttp

    from services.compare import parse_mix
    from services.system import DEMO_RUN, make_orders

    configure_logging(True, log_format.value)
    log = logging.getLogger("sagakit.load")
    mix = parse_mix(failure_mix)
    session_id = uuid.uuid4().hex[:6]

    async def main() -> None:
        tick = 0.2
        placed = 0
        carry = 0.0
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, tg.cancel_scope)
            while count == 0 or placed < count:
                carry += rate * tick
                n = int(carry)
                carry -= n
                if count:
                    n = min(n, count - placed)
                if n:
                    batch = make_orders(n, seed=seed + placed, run=DEMO_RUN, mix=mix, start=placed)
                    body = {
                        "orders": [
                            {**asdict(o), "order_id": f"{DEMO_RUN}-{session_id}-{placed + i}"}
                            for i, o in enumerate(batch)
                        ]
                    }
                    try:
                        async with http.post(orders_url, json=body) as response:
                            if response.status != 202:
                                log.warning(
                                    "POST %s: %s %s",
                                    orders_url,
                                    response.status,
                                    await response.text(),
                                )
                            else:
                                placed += n
                    except aiohttp.ClientError as exc:
                        log.warning("POST %s failed: %s (retrying)", orders_url, exc)
                await anyio.sleep(tick)
            log.info("placed %d orders", placed)
            tg.cancel_scope.cancel()

    run_loop(main)
