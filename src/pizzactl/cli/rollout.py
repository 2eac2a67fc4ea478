"""`pizzactl promote` and `pizzactl abort`: end the canary or shadow trial in flight; and the
printer of an `--auto` decision (its criteria, evidence and action), shared with `deploy --auto`
and `status`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from pizzactl.cli.base import JsonOpt, app, settings
from pizzactl.console import out, print_json
from pizzactl.deploy import trial
from pizzactl.deploy.trial import Outcome

TimeoutOpt = typer.Option(300.0, "--timeout", help="Seconds to wait for the redeployed servers.")


@app.command()
def promote(timeout: float = TimeoutOpt, json_out: bool = JsonOpt) -> None:
    """End the trial: the candidate serves every request, stable is unloaded."""
    print_outcome(trial.promote(settings(), timeout=timeout), json_out)


@app.command()
def abort(timeout: float = TimeoutOpt, json_out: bool = JsonOpt) -> None:
    """End the trial: the candidate is unloaded, stable serves every request."""
    print_outcome(trial.abort(settings(), timeout=timeout), json_out)


def print_outcome(outcome: Outcome, json_out: bool) -> None:
    if json_out:
        print_json(outcome.to_json())
        return
    if outcome.decision is not None and outcome.decided_by == "auto":
        print_decision(outcome.decision.as_dict())
    done = "Promoted" if outcome.action == "promote" else "Aborted"
    other = outcome.trial.stable if outcome.action == "promote" else outcome.trial.candidate
    out.print(
        f"{done} ({outcome.decided_by}): version {outcome.serving} serves every request at {outcome.url}; "
        f"version {other} is unloaded."
    )


def print_decision(decision: Mapping[str, Any], title: str = "--auto") -> None:
    """The criteria, what was measured against each, and the action with its reasons."""
    table = Table(title=f"{title}: {decision['action']}", title_justify="left")
    table.add_column("criterion")
    table.add_column("measured")
    table.add_column("required")
    table.add_column("")
    marks = {True: "[green]ok[/]", False: "[red]fails[/]", None: "[yellow]waiting[/]"}
    for check in decision.get("checks") or []:
        table.add_row(check["name"], escape(check["observed"]), escape(check["required"]), marks[check["ok"]])
    out.print(table)
    evidence = decision.get("evidence") or {}
    if evidence.get("kept"):
        out.print(f"{evidence['kept']} disagreements kept in {escape(str(evidence.get('kept_dir')))}")
    out.print(f"{decision['action']}: " + escape("; ".join(decision.get("reasons") or [])))
