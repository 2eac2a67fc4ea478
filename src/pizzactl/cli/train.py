"""`pizzactl train`: train here, in Docker or as a Kubernetes Job, and export the best."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from pizzactl.cli.base import DataOpt, JsonOpt, app, settings
from pizzactl.console import out, print_json
from pizzactl.results import SCHEMA
from pizzactl.train import remote
from pizzactl.train.results import TrainResult


# Long only in its signature: typer needs every option there; the body is one settings call
# and one library call (`remote.train_on`, which runs `pizzactl.train.train` for --on local).
@app.command()
def train(
    data: Path | None = DataOpt,
    backbone: str | None = typer.Option(None, "--backbone", help="Backbone name, or several: a,b,c."),
    weights: str | None = typer.Option(None, "--weights", help="imagenet | none | PATH to a weights file."),
    epochs: int | None = typer.Option(None, "--epochs", help="Head epochs (on cached features)."),
    fine_tune_epochs: int | None = typer.Option(
        None,
        "--fine-tune-epochs",
        help="Epochs with the top of the backbone unfrozen (default: the backbone's recipe, 6 for efficientnet_lite0/1, else 0; 0 turns it off).",
    ),
    augmented_views: int | None = typer.Option(
        None,
        "--augmented-views",
        min=0,
        help="Cached augmented views per photo, besides it and its mirror (default: the recipe's, 8 for efficientnet_lite0/1, else 4). Fewer: faster, see docs/train.md.",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="The model's input size (default: the recipe's; training may use a smaller one, see docs/train.md, FixRes).",
    ),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    augment: bool | None = typer.Option(None, "--augment/--no-augment", help="Random flips/crops/colour."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for the split and the training."),
    output: Path | None = typer.Option(None, "--output", help="Models directory to export into."),
    on: str = typer.Option("local", "--on", help="Where: local, docker, kind, or a kube context (a Job)."),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="GPUs for the trainer (the CUDA image)."),
    cpu: str | None = typer.Option(None, "--cpu", help="CPU request of the training pod (default 2)."),
    memory: str | None = typer.Option(None, "--memory", help="Memory request and limit (default 4Gi)."),
    node_selector: list[str] | None = typer.Option(None, "--node-selector", help="KEY=VALUE (repeatable)."),
    toleration: list[str] | None = typer.Option(None, "--toleration", help="KEY[=VALUE]:EFFECT (repeatable)."),
    backoff_limit: int | None = typer.Option(None, "--backoff-limit", min=0, help="Failed pods retried (default 2)."),
    deadline: int | None = typer.Option(None, "--deadline", min=1, help="Seconds before the Job is stopped."),
    cluster: str | None = typer.Option(None, "--cluster", help="kind cluster name (default pizzactl)."),
    registry: str | None = typer.Option(None, "--registry", help="Registry for the trainer (--on CONTEXT)."),
    pull_secret: str | None = typer.Option(None, "--pull-secret", help="Image pull secret for --registry."),
    platform: str | None = typer.Option(None, "--platform", help="linux/amd64 or linux/arm64 (default: the nodes')."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds the training pod may wait to start."),
    attach: bool = typer.Option(False, "--attach", help="Follow the last Job again and collect its result."),
    deploy: bool | None = typer.Option(None, "--deploy/--no-deploy", help="Roll the new version out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the Job's objects; touch nothing."),
    json_out: bool = JsonOpt,
) -> None:
    """Train one or several backbones, print a leaderboard and export the best (here, in Docker or as a Job)."""
    s = settings(
        data_dir=data,
        backbone=backbone,
        weights=weights,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        augmented_views=augmented_views,
        image_size=image_size,
        batch_size=batch_size,
        augment=augment,
        seed=seed,
        models_dir=output,
        gpus=gpus,
        train_cpu=cpu,
        train_memory=memory,
        node_selector=",".join(node_selector) if node_selector else None,
        tolerations=",".join(toleration) if toleration else None,
        backoff_limit=backoff_limit,
        train_deadline=deadline,
        cluster=cluster,
        registry=registry,
        pull_secret=pull_secret,
        platform=platform,
    )
    if dry_run:
        sys.stdout.write(remote.dry_run(s, on))
        return
    result = remote.train_on(s, on, attach=attach, timeout=timeout, deploy=deploy)
    if json_out:
        print_json({"schema": SCHEMA, **result})  # the trainer's own --json already has it: same value
    else:
        print_result(result)


# --- printers (rich, stdout) ---------------------------------------------------------


def print_result(result: TrainResult | dict[str, Any]) -> None:
    """The leaderboard and where the version landed; from a TrainResult or its dict (what
    `train --on docker|kind|CONTEXT` brings home as the trainer's `--json` answer)."""
    data = result.as_dict() if isinstance(result, TrainResult) else result
    macro = len(data.get("classes") or ()) > 2  # F1 and ROC AUC are then macro averages over the classes
    table = Table(
        "#",
        "backbone",
        "val acc",
        "macro f1" if macro else "f1",
        "macro auc" if macro else "roc auc",
        "val loss",
        "seconds",
        Column("run", no_wrap=True),
    )
    for i, run in enumerate(data.get("leaderboard") or [], 1):
        table.add_row(
            str(i),
            str(run.get("backbone")),
            _number(run.get("val_accuracy")),
            _number(run.get("val_f1")),
            _number(run.get("val_roc_auc")),
            _number(run.get("val_loss")),
            f"{run.get('train_seconds') or 0:.1f}",
            str(run.get("run_id")),
        )
    out.print(table)
    where = (data.get("trained_on") or {}).get("on")
    if data.get("model_dir"):
        trained_on = f", trained on {where}" if where else ""
        out.print(
            f"Exported {data.get('backbone')} ({_number(data.get('val_accuracy'))} val accuracy{trained_on}) "
            f"to {data['model_dir']}"
        )
    if data.get("deployed"):
        out.print(f"Rolled out to {data['deployed'].get('target')}: {data['deployed'].get('url')}")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
