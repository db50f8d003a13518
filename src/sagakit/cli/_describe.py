"""`sagakit describe MODULE:ATTR`: a saga definition (or every saga of an app), drawn."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .._app import App
from .._definition import Saga
from .._describe import render
from .._loader import LoadError, load_object
from ._common import AppDir, JsonOpt, fail, print_json


def describe(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="A saga definition (e.g. services.orders.saga:place_order) or an app "
            "(every saga of it).",
        ),
    ],
    mermaid: Annotated[
        bool,
        typer.Option(
            "--mermaid/--text", help="A Mermaid flowchart (paste it into Markdown), or text."
        ),
    ] = True,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Print a saga definition: its steps, failures, compensations, retries and pivot."""
    try:
        found = load_object(target, directory=app_dir, default_attr="app")
    except LoadError as exc:
        raise fail(str(exc)) from None
    sagas: list[Saga[Any]]
    if isinstance(found, Saga):
        sagas = [found]
    elif isinstance(found, App):
        sagas = list(found.sagas)
        if not sagas:
            raise fail(f"app {found.name!r} has no sagas (it is choreographed)")
    else:
        raise fail(f"{target!r} is a {type(found).__name__}, not a Saga or an App")
    if json_output:
        print_json(
            [
                {
                    "saga": s.name,
                    "version": s.version,
                    "steps": [r.name for r in s.resolved()],
                    "pivot": s.steps[s.pivot_index].name if s.pivot_index is not None else None,
                    "commands": sorted(s.command_topics()),
                    "diagram": render(s, as_mermaid=mermaid),
                }
                for s in sagas
            ]
        )
        return
    typer.echo("\n\n".join(render(s, as_mermaid=mermaid) for s in sagas))
