"""`pizzactl evaluate`: the exported model on raw image bytes, as serving runs it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from pizzactl.cli.base import JsonOpt, app, option, settings
from pizzactl.config import ModelRuntime
from pizzactl.console import err, out, print_json
from pizzactl.evaluate import Evaluation
from pizzactl.evaluate import evaluate as evaluate_


@app.command()
def evaluate(
    model_dir: Path | None = typer.Argument(None, help="Exported version directory (default: the latest)."),
    data: Path | None = option("data_dir"),
    models: Path | None = option("models_dir"),
    errors: Path | None = typer.Option(None, "--errors", help="Write misclassified images to this CSV."),
    confusion_png: Path | None = typer.Option(
        None, "--confusion-matrix", help="Draw the confusion matrix to this PNG (needs [train])."
    ),
    runtime: ModelRuntime | None = option("model_runtime"),
    json_out: bool = JsonOpt,
) -> None:
    """Run the exported model on raw image bytes, as serving will, and report metrics."""
    metrics = evaluate_(
        settings(data_dir=data, models_dir=models, model_runtime=runtime),
        model_dir=model_dir,
        errors_csv=errors,
        confusion_png=confusion_png,
    )
    if json_out:
        print_json(metrics.to_json())
    else:
        print_metrics(metrics)


# --- printers (rich, stdout) ---------------------------------------------------------


def print_metrics(metrics: Evaluation) -> None:
    """Metrics, per-class figures and the confusion matrix as rich tables (stdout)."""
    classes = metrics.classes
    binary = len(classes) == 2
    title = f"{metrics.model_dir} ({metrics.runtime}) on {metrics.n} images of {metrics.data_dir}"
    table = Table("metric", "value", title=title, title_justify="left")
    rows = (
        [(name, name) for name in ("accuracy", "precision", "recall", "f1", "roc_auc")]
        if binary
        else [
            ("accuracy", "accuracy"),
            ("macro precision", "precision"),
            ("macro recall", "recall"),
            ("macro f1", "macro_f1"),
            ("roc_auc (macro, one-vs-rest)", "roc_auc"),
        ]
    )
    for label, key in rows:
        value = getattr(metrics, key)
        table.add_row(label, "n/a (one class only)" if value is None else f"{value:.4f}")
    if binary:
        table.add_row("threshold", f"{metrics.threshold:g} (positive class: {metrics.positive_class})")
    out.print(table)
    per = Table("class", "precision", "recall", "f1", "roc auc", "images", title="per class", title_justify="left")
    for name, row in metrics.per_class.items():
        auc = row.get("roc_auc")
        per.add_row(
            name,
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            "-" if auc is None else f"{auc:.4f}",
            str(row["support"]),
        )
    out.print(per)
    cm = Table("true \\ predicted", *classes, title="confusion matrix", title_justify="left")
    for name, counts in zip(classes, metrics.confusion_matrix, strict=True):
        cm.add_row(name, *(str(v) for v in counts))
    out.print(cm)
    if metrics.confusion_matrix_png:
        out.print(f"Confusion matrix drawn to {metrics.confusion_matrix_png}")
    if metrics.errors_csv:
        out.print(f"{metrics.misclassified} misclassified images written to {metrics.errors_csv}")
    if metrics.failed:
        out.print(f"[yellow]{len(metrics.failed)} image(s) could not be decoded and were skipped.[/]")
    if metrics.training_data:
        err.print(
            "[yellow]Note:[/] this is the dataset the model was trained on (training and validation images); expect optimistic numbers."
        )
