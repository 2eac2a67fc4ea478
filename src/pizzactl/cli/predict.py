"""`pizzactl predict`: ask the deployed model about photos, files or URLs."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import JsonOpt, app, settings
from pizzactl.console import print_json
from pizzactl.errors import EXIT_FAILURE


@app.command()
def predict(
    sources: list[str] = typer.Argument(..., help="Image files, directories or http(s) URLs."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Gateway URL (default: what deploy recorded)."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="API key to send, for a gateway that requires one (env PIZZACTL_API_KEY is safer)."
    ),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the results to this CSV."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight."),
    explain: Path | None = typer.Option(
        None, "--explain", help="Write a Grad-CAM overlay PNG per image here (needs [train])."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Ask the deployed model: is this a pizza?"""
    from pizzactl.predict import predict as predict_
    from pizzactl.predict import print_predictions

    results = predict_(
        settings(endpoint=endpoint, api_key=api_key),
        sources,
        concurrency=concurrency,
        csv_path=csv,
        explain_dir=explain,
        progress=not json_out,
    )
    if json_out:
        print_json(results)
    else:
        print_predictions(results)
    if any("error" in r for r in results):
        raise typer.Exit(EXIT_FAILURE)
