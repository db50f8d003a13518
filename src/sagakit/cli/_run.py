"""`sagakit run MODULE:ATTR`: the components of an app, in this process, until SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from aiohttp import web

from .._app import App, AppRunner
from .._console import Console
from .._console._auth import Role, Token
from .._console._server import new_admin_token
from .._http import DEFAULT_HTTP_PORT, HttpEndpoints, Route
from .._logging import configure_logging
from .._readstore import open_read_model
from .._snapshots import History
from ..broker import EmbeddedBroker
from ..tracing import ComponentTracings
from ..transport._base import Transport
from ..transport.kafka import KafkaTransport
from ._common import (
    AppDir,
    LogFormat,
    LogFormatOpt,
    Namespace,
    Profile,
    ProfileOpt,
    fail,
    load_app,
    run_async,
    settings,
)
from ._console import CONSOLE, settings_from_env

HttpPort = Annotated[
    int,
    typer.Option(
        envvar="SAGAKIT_HTTP_PORT",
        help="Port of /healthz, /readyz and /metrics (0: no HTTP server).",
    ),
]


def run(
    app_spec: Annotated[
        str, typer.Argument(metavar="MODULE:ATTR", help="The app, e.g. myapp:app.")
    ],
    component: Annotated[
        list[str] | None,
        typer.Option(
            "--component",
            "-c",
            envvar="SAGAKIT_COMPONENTS",
            metavar="KIND:NAME",
            help="What this process runs: orchestrator:SAGA, service:NAME or console (the web "
            "console, see `sagakit console`) (repeatable; orchestrator or service alone: all "
            "of that kind). Default: every orchestrator and service.",
        ),
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers."),
    ] = None,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            help="Start an embedded broker for this process (others join with the "
            "--bootstrap it prints).",
        ),
    ] = False,
    profile: ProfileOpt = Profile.kafka,
    namespace: Namespace = None,
    partitions: Annotated[
        int | None,
        typer.Option(envvar="SAGAKIT_PARTITIONS", min=1, help="Partitions of the topics created."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="SAGAKIT_DATA_DIR",
            help="Where stores with a relative path keep their files (default: the cwd).",
        ),
    ] = None,
    app_dir: AppDir = None,
    http_port: HttpPort = DEFAULT_HTTP_PORT,
    security_protocol: Annotated[
        str | None,
        typer.Option(
            envvar="SAGAKIT_SECURITY_PROTOCOL",
            help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default: from the TLS and SASL "
            "settings). TLS and SASL also from SAGAKIT_SSL_CA_FILE, SAGAKIT_SSL_CERT_FILE, "
            "SAGAKIT_SSL_KEY_FILE, SAGAKIT_SSL_CHECK_HOSTNAME, SAGAKIT_SASL_MECHANISM, "
            "SAGAKIT_SASL_USERNAME and SAGAKIT_SASL_PASSWORD.",
        ),
    ] = None,
    ssl_ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="SAGAKIT_SSL_CA_FILE", help="The CA that signed the brokers' certificates."
        ),
    ] = None,
    sasl_mechanism: Annotated[
        str | None,
        typer.Option(
            envvar="SAGAKIT_SASL_MECHANISM",
            help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (the password: SAGAKIT_SASL_PASSWORD).",
        ),
    ] = None,
    sasl_username: Annotated[
        str | None, typer.Option(envvar="SAGAKIT_SASL_USERNAME", help="The SASL user.")
    ] = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds a batch in hand may take to finish on SIGTERM."),
    ] = 30.0,
    service_concurrency: Annotated[
        int | None,
        typer.Option(
            envvar="SAGAKIT_SERVICE_CONCURRENCY",
            min=1,
            help="Records each service handles at once (overrides the app's; 1: serially).",
        ),
    ] = None,
    simulated_io_ms: Annotated[
        float,
        typer.Option(
            envvar="SAGAKIT_SIMULATED_IO_MS",
            min=0.0,
            hidden=True,
            help="Benchmarks: each service record first waits this long (simulated I/O).",
        ),
    ] = 0.0,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Run the components of an app until SIGTERM or Ctrl-C (each batch in hand finishes).

    Prints READY on stdout once every component is ready (orchestrators have restored
    their partitions, services have partitions assigned).
    """
    import os

    configure_logging(False, log_format.value)
    for var, value in (
        ("SAGAKIT_SECURITY_PROTOCOL", security_protocol),
        ("SAGAKIT_SSL_CA_FILE", str(ssl_ca_file) if ssl_ca_file else None),
        ("SAGAKIT_SASL_MECHANISM", sasl_mechanism),
        ("SAGAKIT_SASL_USERNAME", sasl_username),
    ):
        if value:
            os.environ[var] = value  # what every client of this process reads
    if data_dir is not None:
        os.environ["SAGAKIT_DATA_DIR"] = str(data_dir.resolve())
    app = load_app(app_spec, app_dir)
    wants_console = component is not None and CONSOLE in component
    try:
        chosen = app.select(
            [c for c in component if c != CONSOLE] if component is not None else None
        )
    except Exception as exc:
        raise fail(str(exc)) from None
    console_settings = settings_from_env() if wants_console else None
    if embedded == (bootstrap is not None):
        raise fail("say where Kafka is: --bootstrap HOST:PORT, or --embedded for a broker here")
    tracings = ComponentTracings(shared=len(chosen) > 1)

    async def main() -> None:
        if embedded:
            async with EmbeddedBroker() as broker:
                print(f"embedded broker listening on {broker.bootstrap_servers} (memory only)")
                print(f"use it with: --bootstrap {broker.bootstrap_servers}", flush=True)
                await serve(app, chosen, broker.bootstrap_servers, Profile.embedded)
        else:
            assert bootstrap is not None
            await serve(app, chosen, bootstrap, profile)

    try:  # SAGAKIT_SNAPSHOT_EVERY, SAGAKIT_DEDUPE_WINDOW_S, ... (see sagakit.History)
        history = History.from_env()
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def serve(app: App, chosen: tuple[str, ...], where: str, prof: Profile) -> None:
        transport = KafkaTransport(settings(where, prof, f"{app.name}-{_client(chosen)}"))
        runner = app.runner(
            transport,
            components=chosen,
            namespace=namespace,
            partitions=partitions,
            tracing=tracings,
            shutdown_grace_s=shutdown_grace,
            service_concurrency=service_concurrency,
            simulated_io_s=simulated_io_ms / 1000,
            history=history,
        )
        console = None
        if console_settings is not None:
            console = Console(
                app,
                transport,
                open_read_model(console_settings.read_model),
                console_settings,
                namespace=namespace,
                metrics=runner.metrics,
            )
        async with transport, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, tg.cancel_scope)
            routes = _routes(runner, transport) + (console.routes() if console else [])
            http = HttpEndpoints(
                port=http_port,
                ready=lambda: (runner.ready or not chosen) and (console is None or console.ready),
                metrics=[runner.metrics],
                routes=routes,
            )
            if http_port:
                await tg.start(http.run)
            if chosen:
                await tg.start(runner.run)
                await runner.wait_ready()
            if console is not None:
                await tg.start(console.run)
                _announce(console, http.bound_port or http_port)
            print("READY", flush=True)

    try:
        run_async(main)
    finally:
        tracings.shutdown()  # flush the spans still queued
        sys.stdout.flush()


def _client(chosen: tuple[str, ...]) -> str:
    if not chosen:
        return CONSOLE
    return chosen[0].replace(":", "-") if len(chosen) == 1 else "all"


def _announce(console: Console, port: int) -> None:
    """Say where the console is; without tokens or a proxy, make an admin token up."""
    auth = console.settings.auth
    if not auth.configured:
        token = new_admin_token()
        auth.tokens.append(Token("admin", Role.admin, token))
        print(
            "console: no tokens file, SAGAKIT_CONSOLE_TOKENS or proxy header given; "
            "made up an admin token for this run",
            flush=True,
        )
        print(f"console: sign in at http://localhost:{port}/login?token={token}", flush=True)
    else:
        print(f"console: http://localhost:{port}/ (read model {console.store.url})", flush=True)


def _routes(runner: AppRunner, transport: Transport) -> list[Route]:
    routes: list[Route] = []
    for service in runner.services.values():
        for method, path, handler in service.routes:
            routes.append((method, path, _bound(handler, transport)))
    return routes


def _bound(handler: Any, transport: Transport) -> Any:
    async def serve(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request, transport)
        return response

    return serve


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return
