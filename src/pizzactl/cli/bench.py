"""`pizzactl bench train|serve`: benchmarks that print side-by-side ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from pizzactl.bench import serve as serve_bench
from pizzactl.bench import train as train_bench
from pizzactl.bench.inprocess import BATCHES, THREADS, Setting, parse_threads
from pizzactl.cli.base import JsonOpt, bench_app, option, settings
from pizzactl.console import err, out, print_json

# --- bench -----------------------------------------------------------------------------


@bench_app.command("train")
def bench_train(
    backbone: str | None = option("backbone"),
    epochs: int = typer.Option(20, "--epochs"),
    data: Path | None = option("data_dir"),
    weights: str | None = option("weights"),
    limit: int | None = typer.Option(None, "--limit", help="Use at most this many images."),
    scale: str | None = typer.Option(
        None,
        "--scale",
        help="Instead: the whole `pizzactl train` on N photos each (e.g. 1571,5000,15000; re-crops past the data's own), cold: time and peak memory.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Plain model.fit over images vs the cached-feature path, side by side (or, with --scale, training cost vs photos)."""
    s = settings(data_dir=data, weights=weights)
    if scale:
        sizes = [int(n) for n in scale.split(",") if n.strip()]
        res = train_bench.bench_scaling(s, sizes, backbone=backbone)
        show = print_scaling
    else:
        res = train_bench.bench_train(s, backbone=backbone, epochs=epochs, limit=limit)
        show = print_train_bench
    if json_out:
        print_json(res)
    else:
        show(res)


@bench_app.command("serve")
def bench_serve(
    models: Path | None = option("models_dir"),
    concurrency: int = typer.Option(16, "--concurrency"),
    requests_: int = typer.Option(200, "--requests", help="Requests for the throughput phase."),
    data: Path | None = option("data_dir"),
    runtimes: str | None = typer.Option(
        None, "--runtimes", help="Comma-separated: tensorflow, litert, litert-int8 (default: every one the model has)."
    ),
    overload_seconds: float = typer.Option(
        30.0,
        "--overload-seconds",
        min=0,
        help="Seconds of open-loop load at 1x and at 2x the measured throughput, for p99 and the share shed (0: skip).",
    ),
    threads: str = typer.Option(
        ",".join(map(str, THREADS)),
        "--threads",
        help="Thread counts the sweep tries: TensorFlow every intra-op x inter-op pair (0: its default), LiteRT each count.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """The model's best in-process throughput (thread and batch sweep) vs end to end, per runtime."""
    counts = parse_threads(threads)
    chosen = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    res = serve_bench.bench_serve(
        settings(models_dir=models, data_dir=data),
        concurrency=concurrency,
        requests=requests_,
        runtimes=chosen,
        overload_seconds=overload_seconds,
        threads=counts,
    )
    if json_out:
        print_json(res)
    else:
        print_serve_bench(res)


# --- printers (rich, stdout) ---------------------------------------------------------


def print_train_bench(res: dict) -> None:
    table = Table(
        "",
        "seconds",
        title=f"bench train: {res['backbone']} ({res['weights']} weights, {res['image_size']}px), {res['n_images']} images x {res['epochs']} epochs",
    )
    table.add_row("plain model.fit over images", f"{res['plain_seconds']:.1f}")
    table.add_row("cached features + head", f"{res['cached_seconds']:.1f}")
    table.add_row("  of which one forward pass", f"{res['forward_pass_seconds']:.1f}")
    out.print(table)
    out.print(f"speedup {res['speedup']:.1f}x   cached / forward pass {res['cached_over_forward']:.2f}")
    for goal, ok in res["goals"].items():
        out.print(f"  {'[green]met[/]' if ok else '[red]missed[/]'}  {goal}")


def print_scaling(res: dict) -> None:
    table = Table(
        "photos",
        "wall s",
        "CPU s",
        "peak RSS MB",
        "features s",
        "heads s",
        "fine-tune s",
        "wall s per photo vs first",
        title=f"bench train --scale: pizzactl train ({res['backbone']}), cold cache, one process per size",
    )
    for r in res["rows"]:
        table.add_row(
            str(r["photos"]),
            f"{r['wall_seconds']:.0f}",
            f"{r['cpu_seconds']:.0f}",
            str(r["peak_rss_mb"]),
            *("-" if r[k] is None else f"{r[k]:.0f}" for k in ("feature_seconds", "head_seconds", "fine_tune_seconds")),
            f"{r['time_per_photo_ratio']:.2f}",
        )
    out.print(table)


def print_serve_bench(res: dict[str, Any]) -> None:
    """The sweep of each runtime, one line per runtime, then the default runtime's detail."""
    for name, r in res["runtimes"].items():
        sweep_table = Table("setting", *(f"batch {b}, images/s" for b in BATCHES), title=f"{name}: the model alone")
        rows: dict[tuple[int, int], dict[int, float]] = {}
        for row in r["sweep"]:
            rows.setdefault((row["intra"], row["inter"]), {})[row["batch"]] = row["img_per_s"]
        for (intra, inter), by_batch in rows.items():
            cells = [
                f"[bold]{by_batch[b]:,}[/]"
                if (intra, inter, b) == (r["best"]["intra"], r["best"]["inter"], r["best"]["batch"])
                else f"{by_batch.get(b, 0):,}"
                for b in BATCHES
            ]
            sweep_table.add_row(Setting(name, intra, inter).label(), *cells)
        out.print(sweep_table)
    summary = Table(
        "runtime", "best setting alone, img/s", f"end to end (c={res['concurrency']}), img/s", "e2e / best", "p50 ms",
        "overhead p50 ms", "vs TensorFlow",
        title=f"pizzactl bench serve: {res['backbone']} {res['image_size']}px, {res['photos']} real photos",
    )  # fmt: skip
    for name, r in res["runtimes"].items():
        speedup = (res.get("speedup_vs_tensorflow") or {}).get(name)
        summary.add_row(
            name if r["served_by"] in (None, name) else f"{name} (served by {r['served_by']})",
            f"{r['model_img_per_s']:,}",
            f"{r['e2e_img_per_s']:,}",
            f"{r['ratio']}",
            f"{r['p50_ms']}",
            f"{r['overhead_p50_ms']}",
            "n/a" if speedup is None else f"{speedup}x",
        )
    out.print(summary)
    default = " (the model server's default)" if res["runtime"] == res["default_runtime"] else ""
    table = Table("measure", "value", "goal", title=f"{res['runtime']}{default}")
    rows_ = [
        ("best in-process images/s, alternating with the servers", "model_img_per_s"),
        (f"end to end, images/s (concurrency {res['concurrency']})", "e2e_img_per_s"),
        ("ratio e2e / best in-process", "ratio"),
        ("end to end p50 ms (concurrency 1)", "p50_ms"),
        ("end to end p95 ms", "p95_ms"),
        ("end to end p99 ms", "p99_ms"),
        ("model alone p50 ms (batch 1)", "model_p50_ms"),
        ("gateway + HTTP overhead p50 ms", "overhead_p50_ms"),
        ("  model server called directly, p50 ms", "modelserver_p50_ms"),
        ("  gateway's share of the p50, ms", "gateway_p50_ms"),
        (f"mean server-side batch at concurrency {res['concurrency']}", "server_mean_batch"),
        ("bytes per image to the model server", "wire_bytes_per_image"),
    ]
    for label, key in rows_:
        goal = res["goals"].get(key)
        mark = (
            "" if goal is None else (f"[green]{goal['goal']} ok[/]" if goal["ok"] else f"[red]{goal['goal']} missed[/]")
        )
        value = res.get(key)
        table.add_row(label, "n/a" if value is None else f"{value:,}", mark)
    cpu = res.get("cpu_ms_per_image") or {}
    parts = [f"model alone {res.get('model_cpu_ms_per_image')}"] + [f"{name} {ms}" for name, ms in cpu.items()]
    table.add_row("CPU ms per image under load", ", ".join(parts), "")
    load = res["load_average"]
    table.add_row("load average before / after", f"{load['before'][0]} / {load['after'][0]}", "")
    out.print(table)
    if res.get("load_levels"):
        levels = Table(
            "offered load", "uploads/s", "answered", "p50 ms", "p99 ms", "shed share", "shed p99 ms", "errors",
            title=f"{res['runtime']}: offered at 1x and 2x the end-to-end throughput (open loop)",
        )  # fmt: skip
        for name, level in res["load_levels"].items():
            levels.add_row(
                name,
                f"{level['offered_per_s']:,}",
                f"{level['answered']:,}",
                "n/a" if level["p50_ms"] is None else f"{level['p50_ms']:,}",
                "n/a" if level["p99_ms"] is None else f"{level['p99_ms']:,}",
                f"{level['shed_share']:.1%}",
                "n/a" if level["shed_p99_ms"] is None else f"{level['shed_p99_ms']:,}",
                f"{level['errors']:,}",
            )
        out.print(levels)
    if res.get("errors"):
        err.print(f"[yellow]{res['errors']} request(s) failed during the run.[/]")
