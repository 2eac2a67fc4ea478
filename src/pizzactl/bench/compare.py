"""Model server settings side by side: what one change buys end to end, measured in alternating rounds.

Every variant (model server flags, e.g. `--runtime tensorflow` against `--runtime litert-int8`)
gets its own model server and gateway, all started at once; then each round sends the same
uploads to each pair in turn, in an order that rotates every round, so on a shared machine every
variant sees the same CPU. Idle pairs cost nothing but a version poll every few seconds.

    python benchmarks/serve_ab.py --models MODELS "tf=--runtime tensorflow" "int8=--runtime litert-int8"
"""

from __future__ import annotations

import contextlib
import os
import shlex
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pizzactl.bench.load import batch_stats, cpu_snapshot, percentile, run_async, upload_load
from pizzactl.bench.serve import served_runtime, servers
from pizzactl.console import log


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME=FLAGS` (or just FLAGS, named after them) -> (name, model server argv)."""
    name, sep, flags = text.partition("=")
    if not sep or name.startswith("-"):
        name, flags = text.strip() or "defaults", text
    return name.strip(), shlex.split(flags)


def compare_servers(
    version_dir: Path,
    variants: Sequence[tuple[str, Sequence[str]]],
    photos: Sequence[tuple[str, bytes]],
    *,
    rounds: int = 5,
    concurrency: int = 16,
    requests: int = 160,
    sequential: int = 30,
) -> dict[str, Any]:
    """Images/s at `concurrency`, p50 one at a time and CPU per image of each variant, rounds alternating."""

    load_before = os.getloadavg()
    started_at = time.time()
    samples: dict[str, dict[str, list[float]]] = {name: {"img_per_s": [], "latency_ms": []} for name, _ in variants}
    errors = dict.fromkeys(samples, 0)
    cpu: dict[str, dict[str, float]] = {name: {} for name, _ in variants}
    batches: dict[str, list[float]] = {name: [0.0, 0.0] for name, _ in variants}
    served: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="pizzactl-compare-") as tmp, contextlib.ExitStack() as stack:
        pairs = {}
        for name, flags in variants:
            log(f"{name}: starting a model server ({' '.join(flags) or 'defaults'}) and a gateway ...")
            pairs[name] = stack.enter_context(servers(version_dir, Path(tmp), name.replace("/", "_"), flags))
            served[name] = served_runtime(pairs[name].model_url)
        for pair in pairs.values():
            run_async(upload_load(pair.url, photos, 2 * concurrency, concurrency))  # warm up
        names = [name for name, _ in variants]
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            log(f"round {r + 1}/{rounds}: {', '.join(order)}")
            for name in order:
                pair = pairs[name]
                before, cpu_before = batch_stats(pair.model_url), cpu_snapshot(pair.pids)
                seconds, _, failed = run_async(upload_load(pair.url, photos, requests, concurrency))
                after, cpu_after = batch_stats(pair.model_url), cpu_snapshot(pair.pids)
                errors[name] += failed
                samples[name]["img_per_s"].append((requests - failed) / seconds)  # answers, not errors
                for proc_name, value in cpu_after.items():
                    start = cpu_before.get(proc_name)
                    if value is not None and start is not None:
                        cpu[name][proc_name] = cpu[name].get(proc_name, 0.0) + value - start
                if before and after:
                    batches[name][0] += after[0] - before[0]
                    batches[name][1] += after[1] - before[1]
                _, latencies, failed = run_async(upload_load(pair.url, photos, sequential, 1))
                samples[name]["latency_ms"].extend(latencies)
                errors[name] += failed
    base = statistics.median(samples[names[0]]["img_per_s"])
    results = {}
    for name, flags in variants:
        tp = samples[name]["img_per_s"]
        count, images = batches[name]
        results[name] = {
            "flags": list(flags),
            "served_by": served[name],
            "img_per_s": round(statistics.median(tp), 2),
            "img_per_s_rounds": [round(x, 2) for x in tp],
            "vs_first": round(statistics.median(tp) / base, 3) if base else None,
            "p50_ms": round(percentile(samples[name]["latency_ms"], 50), 2),
            "p95_ms": round(percentile(samples[name]["latency_ms"], 95), 2),
            "server_mean_batch": round(images / count, 2) if count else None,
            "cpu_ms_per_image": {k: round(v * 1000 / (rounds * requests), 2) for k, v in cpu[name].items()},
            "errors": errors[name],
        }
    return {
        "variants": results,
        "model_dir": str(version_dir),
        "rounds": rounds,
        "concurrency": concurrency,
        "requests_per_round": requests,
        "photos": len(photos),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.time() - started_at, 1),
    }
