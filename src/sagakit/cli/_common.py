"""What every command shares: connection options, loading ``MODULE:ATTR``, and output
that is a table on a terminal, plain tab-separated lines elsewhere, JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .._app import App
from .._errors import SagaError
from .._loader import LoadError, load_as
from .._loop import run as run_loop
from ..transport.kafka import KafkaSettings, KafkaTransport

T = TypeVar("T")

# off a terminal nothing is wrapped at 80 columns: a line a record, whole
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Profile(StrEnum):
    kafka = "kafka"
    embedded = "embedded"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


Bootstrap = Annotated[
    str,
    typer.Option(
        envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers (or set SAGAKIT_BOOTSTRAP)."
    ),
]
ProfileOpt = Annotated[
    Profile,
    typer.Option(
        envvar="SAGAKIT_PROFILE",
        help="Client settings: 'embedded' for the embedded broker (short fetch waits and "
        "sessions), 'kafka' for Apache Kafka.",
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        envvar="SAGAKIT_NAMESPACE",
        help="Prefix of every topic and group name (default: the app's, or none).",
    ),
]
AppSpec = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar="SAGAKIT_APP",
        metavar="MODULE:ATTR",
        help="The app (an App), to read only its sagas' journals and know its topics.",
    ),
]
AppDir = Annotated[
    str | None,
    typer.Option(
        envvar="SAGAKIT_APP_DIR", help="Directory MODULE is imported from (default: the cwd)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout, for scripts.")]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        envvar="SAGAKIT_LOG_FORMAT",
        help="text, or json: one object a line with saga_id, correlation_id, trace_id.",
    ),
]


def settings(bootstrap: str, profile: Profile, client_id: str) -> KafkaSettings:
    """Client settings: the profile's, with TLS and SASL from SAGAKIT_SSL_* and
    SAGAKIT_SASL_* (see `KafkaSettings.from_env`)."""
    try:
        return KafkaSettings.from_env(
            bootstrap, embedded=profile is Profile.embedded, client_id=client_id
        )
    except SagaError as exc:
        raise fail(str(exc)) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def load_app(spec: str, app_dir: str | None = None) -> App:
    try:
        return load_as(spec, App, directory=app_dir)
    except LoadError as exc:
        raise fail(str(exc)) from None


def maybe_app(spec: str | None, app_dir: str | None = None) -> App | None:
    return None if spec is None else load_app(spec, app_dir)


def namespace_of(app: App | None, namespace: str | None) -> str:
    if namespace is not None:
        return namespace
    return app.namespace if app is not None else ""


def run_store(action: Callable[[], Awaitable[T]]) -> T:
    """Run `action` (on a read model); a SagaError ends the command with exit 2."""
    try:
        return run_loop(action)
    except SagaError as exc:
        raise fail(str(exc)) from None


def run_with(bootstrap: str, action: Callable[[KafkaTransport], Awaitable[T]]) -> T:
    """Run `action` on a started transport; a SagaError ends the command with exit 2."""

    async def main() -> T:
        async with KafkaTransport(settings(bootstrap, Profile.kafka, "sagakit-cli")) as t:
            return await action(t)

    try:
        return run_loop(main)
    except SagaError as exc:
        raise fail(str(exc)) from None


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run `fn`; a SagaError (also one raised in a task group) ends the command with its
    message and exit 2, not a traceback."""
    try:
        return run_loop(fn)
    except SagaError as exc:
        raise fail(str(exc)) from None
    except BaseExceptionGroup as group:
        errors, rest = group.split(SagaError)
        if errors is None or rest is not None:
            raise
        first: BaseException = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise fail(str(first)) from None


def print_json(data: Any) -> None:
    print(json.dumps(data, default=str))


def print_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None
) -> None:
    """A table on a terminal; elsewhere a header line and one tab-separated line per row,
    never truncated nor wrapped."""
    if sys.stdout.isatty():
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    if title:
        print(f"# {title}")
    print("\t".join(columns))
    for row in rows:
        print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))
