"""`pizzactl evaluate`: the exported model on raw image bytes, as serving runs it."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import DataOpt, JsonOpt, ModelsOpt, app, settings
from pizzactl.config import ModelRuntime
from pizzactl.console import print_json


@app.command()
def evaluate(
    model_dir: Path | None = typer.Argument(None, help="Exported version directory (default: the latest)."),
    data: Path | None = DataOpt,
    models: Path | None = ModelsOpt,
    errors: Path | None = typer.Option(None, "--errors", help="Write misclassified images to this CSV."),
    confusion_png: Path | None = typer.Option(
        None, "--confusion-matrix", help="Draw the confusion matrix to this PNG (needs [train])."
    ),
    runtime: ModelRuntime | None = typer.Option(
        None,
        "--runtime",
        help="What runs the model; auto (default): what the builtin model server would run.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Run the exported model on raw image bytes, as serving will, and report metrics."""
    from pizzactl.evaluate import evaluate as evaluate_
    from pizzactl.evaluate import print_metrics

    metrics = evaluate_(
        settings(data_dir=data, models_dir=models, model_runtime=runtime),
        model_dir=model_dir,
        errors_csv=errors,
        confusion_png=confusion_png,
    )
    if json_out:
        print_json(metrics)
    else:
        print_metrics(metrics)
