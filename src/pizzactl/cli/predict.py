"""`pizzactl predict`: ask the deployed model about photos, files or URLs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from pizzactl.cli.base import JsonOpt, app, option, settings
from pizzactl.console import out, print_json
from pizzactl.errors import EXIT_FAILURE
from pizzactl.predict import Prediction, label_probability, top_classes
from pizzactl.predict import predict as predict_


@app.command()
def predict(
    sources: list[str] = typer.Argument(..., help="Image files, directories or http(s) URLs."),
    endpoint: str | None = option("endpoint"),
    api_key: str | None = option("api_key"),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the results to this CSV."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight."),
    explain: Path | None = typer.Option(
        None, "--explain", help="Write a Grad-CAM overlay PNG per image here (needs [train])."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Ask the deployed model: is this a pizza?"""
    results = predict_(
        settings(endpoint=endpoint, api_key=api_key),
        sources,
        concurrency=concurrency,
        csv_path=csv,
        explain_dir=explain,
        progress=not json_out,
    )
    if json_out:
        print_json([r.to_json() for r in results])
    else:
        print_predictions(results)
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAILURE)


# --- printers (rich, stdout) ---------------------------------------------------------


MAX_ROWS = 200


def print_predictions(results: Sequence[Prediction]) -> None:
    """A table (up to MAX_ROWS rows) and, for more than one image, a summary line."""
    table = Table("source", "label", "P(label)", "probabilities", "version")
    table.columns[0].overflow = "fold"
    for r in results[:MAX_ROWS]:
        if r.error is not None:
            table.add_row(escape(r.source), f"[red]error:[/] {escape(r.error)}", "", "", "")
        else:
            table.add_row(
                escape(r.source),
                f"[bold]{escape(str(r.label))}[/]",
                f"{label_probability(r):.3f}",
                escape(top_classes(dict(r.probabilities or {}))),
                "" if r.model_version is None else str(r.model_version),
            )
    out.print(table)
    if len(results) > MAX_ROWS:
        out.print(f"... and {len(results) - MAX_ROWS} more (use --json or --csv FILE for all of them).")
    if len(results) > 1:
        counts: dict[str, int] = {}
        for r in results:
            key = "failed" if r.error is not None else str(r.label)
            counts[key] = counts.get(key, 0) + 1
        out.print(f"{len(results)} images: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
