"""`pizzactl up`: the one command a newcomer runs (train if needed, deploy, predict)."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import JsonOpt, app, option, settings
from pizzactl.console import out, print_json
from pizzactl.predict import label_probability
from pizzactl.up import UpResult
from pizzactl.up import up as up_


@app.command()
def up(
    data: Path | None = option("data_dir"),
    target: str | None = option("target"),
    models: Path | None = option("models_dir"),
    port: int | None = option("port"),
    sample: Path | None = typer.Option(
        None, "--sample", help="Photo to predict once deployed (default: one from the training data)."
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
    json_out: bool = JsonOpt,
) -> None:
    """Train if there is no model yet, deploy it where this machine allows, predict a sample photo."""
    result = up_(settings(data_dir=data, target=target, models_dir=models, port=port), sample=sample, timeout=timeout)
    if json_out:
        print_json(result.to_json())
    else:
        print_up(result)


# --- printers (rich, stdout) ---------------------------------------------------------


def print_up(result: UpResult) -> None:
    sample = result.sample
    lines = [f"Deployed model version {result.model_version} to {result.target}."]
    if sample is not None and sample.ok:
        label = sample.label
        lines.append(f"Sample  {sample.source}: {label} (P({label}) {label_probability(sample):.3f})")
    elif sample is not None:
        lines.append(f"Sample  {sample.source}: error {sample.error}")
    lines += [
        f"Endpoint  POST {result.predict_endpoint}",
        f"Web page  {result.web_page}",
        "Predict   pizzactl predict PHOTO_OR_URL",
        "Stop      pizzactl teardown",
    ]
    for line in lines:
        out.print(line, highlight=False, markup=False)
