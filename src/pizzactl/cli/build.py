"""`pizzactl build`: the gateway and model server images, or the trainer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from pizzactl.cli.base import JsonOpt, app, option, settings
from pizzactl.console import out, print_json
from pizzactl.kube.images import Images, TrainerImage, build_trainer
from pizzactl.kube.images import build as build_


@app.command()
def build(
    models: Path | None = option("models_dir"),
    model_server: str | None = option("model_server"),
    base_image: str | None = option("base_image"),
    push: str | None = typer.Option(None, "--push", help="Push the images to this registry."),
    platform: str | None = option("platform"),
    trainer: bool = typer.Option(False, "--trainer", help="Build the trainer image (`train --on`) instead."),
    gpu: bool = typer.Option(False, "--gpu", help="With --trainer: the CUDA variant (tensorflow[and-cuda])."),
    json_out: bool = JsonOpt,
) -> None:
    """Build the gateway and model server images, or the trainer (tags from content, never :latest)."""
    s = settings(models_dir=models, model_server=model_server, base_image=base_image, registry=push, platform=platform)
    images = build_trainer(s, gpu=gpu, push=push is not None) if trainer else build_(s, push=push is not None)
    if json_out:
        print_json(images.as_dict())
    else:
        print_images(images)


# --- printers (rich, stdout) ---------------------------------------------------------


def print_images(images: Images | TrainerImage) -> None:
    table = Table("image", "reference", "size")
    if isinstance(images, TrainerImage):
        table.add_row(
            f"trainer ({'CUDA' if images.gpu else 'CPU'}, {images.platform})", images.image, human_size(images.size)
        )
    else:
        table.add_row("gateway", images.gateway_image, human_size(images.gateway_size))
        table.add_row(
            f"model ({images.model_server}, v{images.model_version})", images.model_image, human_size(images.model_size)
        )
    out.print(table)


def human_size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n else "?"
