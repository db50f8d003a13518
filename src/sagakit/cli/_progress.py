"""The progress bar of long commands (bench, bench-growth): a live bar on a terminal, a
line per step when stderr is a file (counts inside a step do not make new lines)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from .._bench.baseline import ProgressFn
from .._errors import SagaError
from .._loop import run as run_loop

T = TypeVar("T")


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressFn]:
    err = Console(stderr=True)
    bar = Progress(
        TextColumn(f"[bold]{label}[/bold] {{task.description}}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("starting", total=1)
    last = ""

    def progress(what: str, done: float, total: float) -> None:
        nonlocal last
        bar.update(task, description=what, completed=done, total=total or 1)
        step = re.sub(r"[\d,.]+", "#", what)
        if not err.is_terminal and step != last:
            last = step
            err.print(f"{label} {what}", highlight=False)

    with bar:
        yield progress


def run_with_progress(label: str, work: Callable[[ProgressFn], Awaitable[T]]) -> T:
    """Run a long measurement under the progress bar; a SagaError ends the command (exit 2)."""
    try:
        with progress_bar(label) as progress:
            return run_loop(lambda: work(progress))
    except SagaError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
