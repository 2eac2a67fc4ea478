"""`pizzactl up`, `train`, `runs list|show`, `export`, `evaluate`: making and judging models.

`up` comes first: it is the one command a newcomer runs (train if needed, deploy, predict).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pizzactl.cli.base import (
    DataOpt,
    JsonOpt,
    ModelsOpt,
    app,
    runs_app,
    settings,
)
from pizzactl.config import ModelRuntime
from pizzactl.console import out, print_json

# --- up: the whole job ------------------------------------------------------------------


@app.command()
def up(
    data: Path | None = DataOpt,
    target: str | None = typer.Option(
        None, "--target", help="kind | docker | local (default: kind if kind and Docker are here, else local)."
    ),
    models: Path | None = ModelsOpt,
    port: int | None = typer.Option(None, "--port", help="Host port of the gateway (default 9696)."),
    sample: Path | None = typer.Option(
        None, "--sample", help="Photo to predict once deployed (default: one from the training data)."
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
    json_out: bool = JsonOpt,
) -> None:
    """Train if there is no model yet, deploy it where this machine allows, predict a sample photo."""
    from pizzactl.up import print_up
    from pizzactl.up import up as up_

    result = up_(settings(data_dir=data, target=target, models_dir=models, port=port), sample=sample, timeout=timeout)
    if json_out:
        print_json(result)
    else:
        print_up(result)


# --- train, runs, export, evaluate ----------------------------------------------------


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
    from pizzactl.train import print_result, remote

    if dry_run:
        sys.stdout.write(remote.dry_run(s, on))
        return
    result = remote.train_on(s, on, attach=attach, timeout=timeout, deploy=deploy)
    if json_out:
        print_json(result)
    else:
        print_result(result)


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


@app.command()
def export(
    run: str = typer.Argument(..., help="Run id (or a unique prefix) or a run directory."),
    to: Path | None = typer.Option(None, "--to", help="Models directory (default ./models)."),
    json_out: bool = JsonOpt,
) -> None:
    """Export a run's model again as a new SavedModel version."""
    from pizzactl.train.reexport import export_run

    version_dir = export_run(settings(models_dir=to), run)
    if json_out:
        print_json({"model_dir": str(version_dir), "version": int(version_dir.name)})
    else:
        out.print(str(version_dir))


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
