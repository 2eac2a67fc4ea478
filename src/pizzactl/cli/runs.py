"""`pizzactl runs list|show`: the training runs on disk."""

from __future__ import annotations

import typer
from rich.table import Column, Table

from pizzactl.cli.base import JsonOpt, runs_app, settings
from pizzactl.console import out, print_json
from pizzactl.train.runs import list_runs, show_run


@runs_app.command("list")
def runs_list(json_out: bool = JsonOpt) -> None:
    """All training runs, newest first."""
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
    run = show_run(settings(), run_id)
    if json_out:
        print_json(run)
    else:
        print_run(run)


# --- printers (rich, stdout) ---------------------------------------------------------


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_runs(runs: list[dict]) -> None:
    if not runs:
        out.print("No training runs yet. Run `pizzactl train`.")
        return
    table = Table(
        Column("run", no_wrap=True),
        "weights",
        Column("val acc", no_wrap=True),
        "f1",
        "seconds",
        Column("exported", overflow="fold"),
    )
    for r in runs:
        table.add_row(
            r["run_id"],
            _fmt(r["weights"]),
            _fmt(r["val_accuracy"]) if r["status"] == "finished" else "[yellow]incomplete[/]",
            _fmt(r["val_f1"]),
            _fmt(r["train_seconds"], 1),
            _fmt(r["model_dir"]),
        )
    out.print(table)


def print_run(run: dict) -> None:
    out.print(f"[bold]{run['run_id']}[/]  {run['run_dir']}")
    table = Table("", "value", show_header=False)
    config, metrics = run["config"], run["metrics"]
    for key in (
        "backbone",
        "mode",
        "weights",
        "image_size",
        "epochs",
        "fine_tune_epochs",
        "batch_size",
        "augment",
        "seed",
        "data_dir",
        "n_train",
        "n_val",
    ):
        if key in config:
            table.add_row(key, _fmt(config[key]))
    for key in (
        "val_accuracy",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_macro_f1",
        "val_roc_auc",
        "val_loss",
        "train_seconds",
        "model_dir",
    ):
        if key in metrics:
            table.add_row(key, _fmt(metrics[key]))
    if "confusion_matrix" in metrics:
        matrix = metrics["confusion_matrix"]
        classes = config.get("classes") or [str(k) for k in range(len(matrix))]
        table.add_row(
            "confusion",
            "; ".join(
                f"true {name}: {row[k]} right, {sum(row) - row[k]} wrong"
                for k, (name, row) in enumerate(zip(classes, matrix, strict=False))
            ),
        )
    table.add_row("files", ", ".join(run["files"]))
    out.print(table)
