"""`pizzactl build`: the gateway and model server images, or the trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import JsonOpt, ModelsOpt, app, settings
from pizzactl.console import print_json


@app.command()
def build(
    models: Path | None = ModelsOpt,
    model_server: str | None = typer.Option(
        None, "--model-server", help="tfserving | builtin (default: tfserving on amd64, builtin on arm64)"
    ),
    base_image: str | None = typer.Option(None, "--base-image", help="Base image of the Python images."),
    push: str | None = typer.Option(None, "--push", help="Push the images to this registry."),
    platform: str | None = typer.Option(
        None, "--platform", help="Build for linux/amd64 or linux/arm64 (default: the Docker daemon's)."
    ),
    trainer: bool = typer.Option(False, "--trainer", help="Build the trainer image (`train --on`) instead."),
    gpu: bool = typer.Option(False, "--gpu", help="With --trainer: the CUDA variant (tensorflow[and-cuda])."),
    json_out: bool = JsonOpt,
) -> None:
    """Build the gateway and model server images, or the trainer (tags from content, never :latest)."""
    from pizzactl.deploy.images import build as build_
    from pizzactl.deploy.images import build_trainer, print_images

    s = settings(models_dir=models, model_server=model_server, base_image=base_image, registry=push, platform=platform)
    images = build_trainer(s, gpu=gpu, push=push is not None) if trainer else build_(s, push=push is not None)
    if json_out:
        print_json(images.as_dict())
    else:
        print_images(images)
