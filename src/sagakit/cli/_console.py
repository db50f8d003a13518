"""`sagakit console MODULE:ATTR`: the web console (also `sagakit run --component console`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .._console import Auth, ConsoleSettings, Role, parse_role_map
from .._errors import SagaError
from .._http import DEFAULT_HTTP_PORT
from .._readstore import READ_MODEL_ENV
from ._common import AppDir, LogFormat, LogFormatOpt, Namespace, Profile, ProfileOpt, fail

CONSOLE = "console"
DEFAULT_READ_MODEL = "sqlite:///sagakit-console.db"

ENV = {
    "read_model": READ_MODEL_ENV,
    "tokens_file": "SAGAKIT_CONSOLE_TOKENS_FILE",
    "tokens": "SAGAKIT_CONSOLE_TOKENS",
    "jaeger_url": "SAGAKIT_JAEGER_URL",
    "proxy_user_header": "SAGAKIT_CONSOLE_PROXY_USER_HEADER",
    "proxy_groups_header": "SAGAKIT_CONSOLE_PROXY_GROUPS_HEADER",
    "proxy_roles": "SAGAKIT_CONSOLE_PROXY_ROLES",
    "proxy_default_role": "SAGAKIT_CONSOLE_PROXY_DEFAULT_ROLE",
    "trusted_proxies": "SAGAKIT_CONSOLE_TRUSTED_PROXIES",
    "secret": "SAGAKIT_CONSOLE_SECRET",
    "retention_days": "SAGAKIT_READ_MODEL_RETENTION_DAYS",
}


def read_model_url(url: str | None) -> str:
    """`url`, or the default SQLite file in SAGAKIT_DATA_DIR (or the working directory)."""
    if url:
        return url
    data_dir = os.environ.get("SAGAKIT_DATA_DIR")
    if data_dir:
        return f"sqlite:///{Path(data_dir) / 'sagakit-console.db'}"
    return DEFAULT_READ_MODEL


def settings_from_env() -> ConsoleSettings:
    """The console's settings from the environment (see `sagakit console --help`)."""
    env = {name: os.environ.get(var) or None for name, var in ENV.items()}
    try:
        default_role = env["proxy_default_role"]
        auth = Auth.from_sources(
            tokens_file=Path(env["tokens_file"]) if env["tokens_file"] else None,
            tokens=env["tokens"],
            proxy_user_header=env["proxy_user_header"],
            proxy_groups_header=env["proxy_groups_header"],
            proxy_roles=parse_role_map(
                r for r in (env["proxy_roles"] or "").split(",") if r.strip()
            ),
            proxy_default_role=Role[default_role] if default_role else None,
            **(
                {"trusted_proxies": [p.strip() for p in env["trusted_proxies"].split(",")]}
                if env["trusted_proxies"]
                else {}
            ),
        )
        retention = float(env["retention_days"]) if env["retention_days"] else 30.0
    except KeyError as exc:
        raise fail(f"{ENV['proxy_default_role']}: no role {exc}") from None
    except (SagaError, ValueError) as exc:
        raise fail(str(exc)) from None
    if env["secret"]:
        auth.secret = env["secret"].encode()
    return ConsoleSettings(
        read_model=read_model_url(env["read_model"]),
        jaeger_url=env["jaeger_url"],
        retention_days=retention,
        auth=auth,
    )


def console(
    app_spec: Annotated[
        str, typer.Argument(metavar="MODULE:ATTR", help="The app, e.g. myapp:app.")
    ],
    bootstrap: Annotated[
        str | None, typer.Option(envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers.")
    ] = None,
    read_model: Annotated[
        str | None,
        typer.Option(
            envvar=READ_MODEL_ENV,
            help="Where the read model lives: sqlite:///PATH (default: sagakit-console.db in "
            "SAGAKIT_DATA_DIR or here) or postgresql://USER:PASSWORD@HOST/DB.",
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            envvar=ENV["tokens_file"],
            help="Bearer tokens, one 'name:role:token' per line (role: viewer, operator or "
            "admin). Also SAGAKIT_CONSOLE_TOKENS (the same, ';'-separated). With neither (and "
            "no proxy), an admin token is made up and printed.",
        ),
    ] = None,
    jaeger_url: Annotated[
        str | None,
        typer.Option(envvar=ENV["jaeger_url"], help="Jaeger UI base URL, for trace links."),
    ] = None,
    proxy_user_header: Annotated[
        str | None,
        typer.Option(
            envvar=ENV["proxy_user_header"],
            help="Behind an identity-aware proxy: the header naming the user (e.g. "
            "X-Forwarded-User), trusted only from --trusted-proxy addresses.",
        ),
    ] = None,
    proxy_groups_header: Annotated[
        str | None,
        typer.Option(
            envvar=ENV["proxy_groups_header"],
            help="The proxy's header of the user's groups (comma-separated, e.g. "
            "X-Forwarded-Groups); a group named viewer, operator or admin gives that role.",
        ),
    ] = None,
    proxy_role: Annotated[
        list[str] | None,
        typer.Option(help="GROUP=ROLE: the role a proxy group gives (repeatable)."),
    ] = None,
    proxy_default_role: Annotated[
        str | None,
        typer.Option(
            envvar=ENV["proxy_default_role"],
            help="The role of a proxied user whose groups give none (default: refused).",
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(help="Address or network the proxy connects from (default: loopback)."),
    ] = None,
    retention_days: Annotated[
        float,
        typer.Option(
            envvar=ENV["retention_days"],
            help="Finished sagas older than this leave the read model (0: kept for ever).",
        ),
    ] = 30.0,
    http_port: Annotated[
        int, typer.Option(envvar="SAGAKIT_HTTP_PORT", help="Port of the console's pages.")
    ] = DEFAULT_HTTP_PORT,
    profile: ProfileOpt = Profile.kafka,
    namespace: Namespace = None,
    app_dir: AppDir = None,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """The web console: sagas with filters and live counts, each saga's timeline and
    definition, dead letters, and operator actions by role (viewer, operator, admin).

    It follows the journal and dead-letter topics into its read model; /healthz, /readyz
    and /metrics are served on the same port.
    """
    from ._run import run

    for name, value in (
        ("read_model", read_model),
        ("tokens_file", str(tokens_file) if tokens_file else None),
        ("jaeger_url", jaeger_url),
        ("proxy_user_header", proxy_user_header),
        ("proxy_groups_header", proxy_groups_header),
        ("proxy_roles", ",".join(proxy_role) if proxy_role else None),
        ("proxy_default_role", proxy_default_role),
        ("trusted_proxies", ",".join(trusted_proxy) if trusted_proxy else None),
        ("retention_days", str(retention_days)),
    ):
        if value:
            os.environ[ENV[name]] = value
    run(
        app_spec,
        component=[CONSOLE],
        bootstrap=bootstrap,
        profile=profile,
        namespace=namespace,
        app_dir=app_dir,
        http_port=http_port,
        log_format=log_format,
    )
