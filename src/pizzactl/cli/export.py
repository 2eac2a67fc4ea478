"""`pizzactl export`: a run's model again as a new SavedModel version."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import JsonOpt, alias, app, deprecated, option, settings
from pizzactl.console import out, print_json
from pizzactl.train.reexport import export_run


@app.command()
def export(
    run: str = typer.Argument(..., help="Run id (or a unique prefix) or a run directory."),
    models: Path | None = option("models_dir"),
    to: Path | None = alias("models_dir", "--to"),
    json_out: bool = JsonOpt,
) -> None:
    """Export a run's model again as a new SavedModel version."""
    version_dir = export_run(settings(models_dir=deprecated(models, to, "models_dir", "--to")), run)
    if json_out:
        print_json({"model_dir": str(version_dir), "version": int(version_dir.name)})
    else:
        out.print(str(version_dir))
