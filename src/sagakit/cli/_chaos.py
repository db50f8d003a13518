"""`sagakit chaos MODULE:ATTR`: fault injection on an app, driven by its scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .._chaos import run_chaos
from .._loader import LoadError, spec_of
from .._logging import configure_logging
from ._common import AppDir, JsonOpt, err, fail, out, print_json, run_async
from ._flows import Bootstrap, Count, Options, ScenarioArg, scenario_of


def chaos(
    scenario_spec: ScenarioArg,
    count: Count = 200,
    kill_every: Annotated[
        float, typer.Option(min=0.5, help="Seconds between two SIGKILLs of a random process.")
    ] = 5.0,
    max_kills: Annotated[
        int | None,
        typer.Option(min=0, help="Stop killing after this many SIGKILLs (default: until the end)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the start requests and of the victims.")] = 7,
    option: Options = None,
    orchestrators: Annotated[
        int, typer.Option(min=1, help="Orchestrator processes per saga type.")
    ] = 2,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of every topic.")] = 8,
    bootstrap: Bootstrap = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every saga.")] = 300.0,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Run the scenario's app as processes (orchestrators and every service), SIGKILL one
    at random every KILL_EVERY seconds and restart it (MAX_KILLS times at most), then
    check the invariants.

    Exit status 0 only if every saga ended, the journal shows them settled with no
    consumer lag left, the journal has no gap, every dead letter has a reason, and the
    scenario's check of the business state finds nothing.
    """
    configure_logging(False)
    scenario = scenario_of(scenario_spec, option, app_dir)
    try:
        app_spec = spec_of(scenario.app, near=scenario_spec)
    except LoadError as exc:
        raise fail(str(exc)) from None
    bar = Progress(
        TextColumn("[bold]chaos[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=json_output,
    )
    task = bar.add_task("", total=count)
    with bar:
        result = run_async(
            lambda: run_chaos(
                scenario,
                app_spec,
                count=count,
                kill_every_s=kill_every,
                max_kills=max_kills,
                seed=seed,
                bootstrap=bootstrap,
                timeout_s=timeout,
                partitions=partitions,
                orchestrators=orchestrators,
                app_dir=Path(app_dir).resolve() if app_dir else Path.cwd(),
                progress=lambda what, done, total: bar.update(
                    task, description=what, completed=done
                ),
            )
        )
    if json_output:
        print_json(result.to_json())
    else:
        out.print(
            f"{result.count} sagas, {result.kills} kills {result.killed}: "
            f"outcomes {result.outcomes}, unfinished {result.unfinished}, "
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
