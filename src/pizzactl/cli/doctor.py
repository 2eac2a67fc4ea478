"""`pizzactl doctor`: what this machine can do, and what is missing."""

from __future__ import annotations

import typer

from pizzactl.cli.base import JsonOpt, app, settings
from pizzactl.console import print_json
from pizzactl.errors import EXIT_FAILURE


@app.command()
def doctor(json_out: bool = JsonOpt) -> None:
    """Check the machine: Python, TensorFlow, Docker, architecture, kind, kubectl, Kaggle, ports, disk."""
    from pizzactl.doctor import doctor as doctor_
    from pizzactl.doctor import print_checks

    checks = doctor_(settings())
    if json_out:
        print_json([c.as_dict() for c in checks])
    else:
        print_checks(checks)
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(EXIT_FAILURE)
