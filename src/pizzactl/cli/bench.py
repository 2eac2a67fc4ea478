"""`pizzactl bench train|serve`: benchmarks that print side-by-side ratios."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import (
    DataOpt,
    JsonOpt,
    ModelsOpt,
    bench_app,
    settings,
)
from pizzactl.console import print_json

# --- bench -----------------------------------------------------------------------------


@bench_app.command("train")
def bench_train(
    backbone: str | None = typer.Option(
        None, "--backbone", help="Backbone (default: what `pizzactl train` trains, efficientnet_lite2)."
    ),
    epochs: int = typer.Option(20, "--epochs"),
    data: Path | None = DataOpt,
    weights: str | None = typer.Option(None, "--weights", help="imagenet | none | PATH"),
    limit: int | None = typer.Option(None, "--limit", help="Use at most this many images."),
    scale: str | None = typer.Option(
        None,
        "--scale",
        help="Instead: the whole `pizzactl train` on N photos each (e.g. 1571,5000,15000; re-crops past the data's own), cold: time and peak memory.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Plain model.fit over images vs the cached-feature path, side by side (or, with --scale, training cost vs photos)."""
    from pizzactl.bench import train as bench

    s = settings(data_dir=data, weights=weights)
    if scale:
        sizes = [int(n) for n in scale.split(",") if n.strip()]
        res = bench.bench_scaling(s, sizes, backbone=backbone)
        show = bench.print_scaling
    else:
        res = bench.bench_train(s, backbone=backbone, epochs=epochs, limit=limit)
        show = bench.print_bench
    if json_out:
        print_json(res)
    else:
        show(res)


@bench_app.command("serve")
def bench_serve(
    models: Path | None = ModelsOpt,
    concurrency: int = typer.Option(16, "--concurrency"),
    requests_: int = typer.Option(200, "--requests", help="Requests for the throughput phase."),
    data: Path | None = DataOpt,
    runtimes: str | None = typer.Option(
        None, "--runtimes", help="Comma-separated: tensorflow, litert, litert-int8 (default: every one the model has)."
    ),
    overload_seconds: float = typer.Option(
        30.0,
        "--overload-seconds",
        min=0,
        help="Seconds of open-loop load at 1x and at 2x the measured throughput, for p99 and the share shed (0: skip).",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """The model's best in-process throughput (thread and batch sweep) vs end to end, per runtime."""
    from pizzactl.bench.serve import bench_serve as bench
    from pizzactl.bench.serve import print_bench

    chosen = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    res = bench(
        settings(models_dir=models, data_dir=data),
        concurrency=concurrency,
        requests=requests_,
        runtimes=chosen,
        overload_seconds=overload_seconds,
    )
    if json_out:
        print_json(res)
    else:
        print_bench(res)
