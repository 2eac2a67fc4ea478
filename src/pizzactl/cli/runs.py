"""`pizzactl runs list|show`: the training runs on disk."""

from __future__ import annotations

import typer

from pizzactl.cli.base import JsonOpt, runs_app, settings
from pizzactl.console import print_json


@runs_app.command("list")
def runs_list(json_out: bool = JsonOpt) -> None:
    """All training runs, newest first."""
    from pizzactl.train.runs import list_runs, print_runs

    runs = list_runs(settings())
    if json_out:
        print_json(runs)
    else:
        print_runs(runs)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix) or a run directory."), json_out: bool = JsonOpt
) -> None:
    """One run's configuration and metrics."""
    from pizzactl.train.runs import print_run, show_run

    run = show_run(settings(), run_id)
    if json_out:
        print_json(run)
    else:
        print_run(run)
