"""`pizzactl doctor`: what this machine can do, and what is missing."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from pizzactl.cli.base import JsonOpt, app, settings
from pizzactl.console import out, print_json
from pizzactl.doctor import Check
from pizzactl.doctor import doctor as doctor_
from pizzactl.errors import EXIT_FAILURE


@app.command()
def doctor(json_out: bool = JsonOpt) -> None:
    """Check the machine: Python, TensorFlow, Docker, architecture, kind, kubectl, Kaggle, ports, disk."""
    checks = doctor_(settings())
    if json_out:
        print_json([c.as_dict() for c in checks])
    else:
        print_checks(checks)
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(EXIT_FAILURE)


# --- printers (rich, stdout) ---------------------------------------------------------


def print_checks(checks: list[Check]) -> None:
    table = Table("", "check", "result", "fix")
    for c in checks:
        mark = "[green]✓[/]" if c.ok else ("[red]✗[/]" if c.required else "[yellow]![/]")
        table.add_row(mark, escape(c.name), escape(c.detail), escape(c.fix))
    out.print(table)
    failed = [c.name for c in checks if c.required and not c.ok]
    if failed:
        out.print(f"[red]Not ready:[/] fix {', '.join(failed)} (commands above).")
    else:
        out.print("[green]Ready[/] for train -> build -> deploy.")
