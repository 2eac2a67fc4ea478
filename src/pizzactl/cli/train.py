"""`pizzactl train`: train here, in Docker or as a Kubernetes Job, and export the best."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from pizzactl.cli.base import JsonOpt, alias, app, deprecated, option, settings
from pizzactl.console import out, print_json
from pizzactl.results import SCHEMA
from pizzactl.train import remote
from pizzactl.train.results import TrainResult


# Long only in its signature: typer needs every option there; the body is one settings call
# and one library call (`remote.train_on`, which runs `pizzactl.train.train` for --on local), whose
# new version `after_training.roll_out` rolls out where pizzactl deploys to that cluster.
@app.command()
def train(
    data: Path | None = option("data_dir"),
    backbone: str | None = option("backbone"),
    weights: str | None = option("weights"),
    epochs: int | None = option("epochs"),
    fine_tune_epochs: int | None = option("fine_tune_epochs"),
    augmented_views: int | None = option("augmented_views"),
    image_size: int | None = option("image_size"),
    batch_size: int | None = option("batch_size"),
    augment: bool | None = option("augment"),
    seed: int | None = option("seed"),
    models: Path | None = option("models_dir"),
    output: Path | None = alias("models_dir", "--output"),
    on: str = typer.Option("local", "--on", help="Where: local, docker, kind, or a kube context (a Job)."),
    gpus: int | None = option("gpus"),
    cpu: str | None = option("train_cpu"),
    memory: str | None = option("train_memory"),
    node_selector: list[str] | None = option("node_selector"),
    toleration: list[str] | None = option("tolerations"),
    backoff_limit: int | None = option("backoff_limit"),
    deadline: int | None = option("train_deadline"),
    cluster: str | None = option("cluster"),
    registry: str | None = option("registry"),
    pull_secret: str | None = option("pull_secret"),
    platform: str | None = option("platform"),
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
        models_dir=deprecated(models, output, "models_dir", "--output"),
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
    from pizzactl.deploy.after_training import roll_out

    if dry_run:
        sys.stdout.write(remote.dry_run(s, on))
        return
    result = roll_out(s, remote.train_on(s, on, attach=attach, timeout=timeout), deploy)
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
