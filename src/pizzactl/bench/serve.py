"""`pizzactl bench serve`: the best this machine can do with the model alone vs what clients get.

For each runtime the version can run on (TensorFlow, and the LiteRT artefacts export checked):

1. the limit: the model server's own runtime code in a fresh process per thread setting
   (TensorFlow: intra-op x inter-op threads, by default 0/1/2; LiteRT: 1 thread, or 2 with a
   batch split over 2 one-thread interpreters as the model server runs it) and batch size
   (16, 32), on the very JPEG bytes the gateway would send; the best of that table is the
   baseline (`bench.inprocess`);
2. end to end: a model server on that runtime (with its own default settings) and a gateway
   started as `pizzactl serve` does, photos uploaded as `pizzactl predict` does, images/s at
   `concurrency` requests in flight and p50/p95/p99 one request at a time;
   the best setting's worker and the servers alternate in 3 rounds, so on a shared machine both
   see the same CPU;
3. the wire: bytes per image in the model server request (JSON with base64, as the gateway sends it);
4. overload: uploads offered at 1x and 2x the end-to-end throughput just measured, in an open
   loop (clients that do not wait for each other): p50/p99 of the answered requests and the
   share refused at once by the servers' bounded queues (429/503 with Retry-After), and how
   fast those refusals came (`load_levels`).

It also reports the model server's own p50 (the gateway's request sent to it directly), the
mean batch the server formed under load, the CPU milliseconds per image of each process, and
the load average before and after (other work on the machine shows there).

ratio = e2e / best in-process (goal >= 0.8); overhead = e2e p50 - in-process batch-1 p50 (goal
<= 15 ms); wire bytes per image (goal <= 60000). The top-level figures are those of the runtime
the model server picks by default (`auto`).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pizzactl import httpclient
from pizzactl.bench.inprocess import THREADS, Setting, Worker, side_by_side, sweep, write_jpegs
from pizzactl.bench.load import (
    batch_stats,
    cpu_snapshot,
    direct_latencies,
    is_shed,
    open_load,
    percentile,
    run_async,
    upload_load,
    wire_body,
)
from pizzactl.config import MODEL_NAME
from pizzactl.console import log
from pizzactl.data.download import resolve_data_dir
from pizzactl.errors import DataError, DeployError
from pizzactl.model.card import ModelCard
from pizzactl.model.runtimes import require_runtimes, runtime_candidates, usable_cpus
from pizzactl.model.store import latest_version_dir
from pizzactl.serving import processes as proc

if TYPE_CHECKING:
    from pizzactl.serving.processes import Started

GOALS = {
    "ratio": (">=", 0.8),
    "overhead_p50_ms": ("<=", 15.0),
    "wire_bytes_per_image": ("<=", 60000),
}
SHARED_DATA = Path("..") / "shared" / "data" / "pizza_not_pizza"
MAX_PHOTOS = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
ROUNDS = 3
LOAD_LEVELS = (1, 2)  # offered load, in multiples of the measured end-to-end throughput
OVERLOAD_SECONDS = 30.0  # per level: several times the queue's 5 s, so a full queue shows


def data_dir(settings) -> Path:
    """--data, else ../shared/data/pizza_not_pizza if it exists, else the downloaded dataset."""
    if settings.data_dir is not None:
        return Path(settings.data_dir).expanduser()
    if SHARED_DATA.is_dir():
        return SHARED_DATA

    return resolve_data_dir(settings)


def pick_photos(root: Path, n: int = MAX_PHOTOS) -> list[Path]:
    """Up to n photos, alternating between the class folders (deterministic)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} does not exist.", hint="Pass --data DIR with the photos to benchmark on.")
    groups = [
        sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    ]
    groups = [g for g in groups if g] or [sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)]
    photos: list[Path] = []
    i = 0
    while len(photos) < n and any(i < len(g) for g in groups):
        photos.extend(g[i] for g in groups if i < len(g))
        i += 1
    if not photos:
        raise DataError(f"No JPEG/PNG photos under {root}.", hint="Pass --data DIR with photos in it.")
    return photos[:n]


def measure(
    model: Worker,
    batch: int,
    url: str,
    model_url: str,
    photos,
    jpegs,
    concurrency: int,
    requests: int,
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Alternate the best in-process setting and the servers in ROUNDS rounds, so both see the same machine.

    On a shared machine the available CPU drifts; measuring A then B would compare different
    machines. Throughput: the median of each side over the rounds. Latency: samples pooled
    over the rounds.
    """
    per_round = max(concurrency, -(-requests // ROUNDS))
    n_seq = max(10, min(requests, 100) // ROUNDS)
    run_async(upload_load(url, photos, 2 * concurrency, concurrency))  # warm up both servers
    model_tp, e2e_tp, seq, direct, alone = [], [], [], [], []
    errors = 0
    batches = images = 0.0  # server-side batches formed during the throughput runs
    watched: dict[str, int | None] = {**(pids or {}), "load client": None}
    cpu: dict[str, float | None] = {name: 0.0 for name in watched}  # CPU seconds in the throughput runs
    model_cpu = 0.0
    with httpclient.session() as client:
        direct_latencies(client, model_url, jpegs, 3)
        for r in range(ROUNDS):
            answer = model.ask(throughput=per_round, batch=batch)
            model_tp.append(answer["img_per_s"])
            model_cpu += answer["cpu_s"] / answer["images"]
            before = batch_stats(model_url)
            cpu_before = cpu_snapshot(watched)
            seconds, _, errs = run_async(upload_load(url, photos, per_round, concurrency))
            cpu_after = cpu_snapshot(watched)
            after = batch_stats(model_url)
            for name in cpu:
                b, a, total = cpu_before[name], cpu_after[name], cpu[name]
                cpu[name] = None if a is None or b is None or total is None else total + a - b
            if before and after:
                batches, images = batches + after[0] - before[0], images + after[1] - before[1]
            e2e_tp.append((per_round - errs) / seconds)  # answers: a fast 503 is not throughput
            errors += errs
            alone.extend(model.latencies(n_seq))
            _, lat, errs = run_async(upload_load(url, photos, n_seq, 1))
            seq.extend(lat)
            errors += errs
            direct.extend(direct_latencies(client, model_url, jpegs, n_seq, offset=r * n_seq))
    if errors >= ROUNDS * (per_round + n_seq):
        raise DeployError(
            "Every request through the gateway failed.", hint="See the error logged above and the server logs."
        )
    return {
        "model_img_per_s": statistics.median(model_tp),
        "e2e_img_per_s": statistics.median(e2e_tp),
        "model_p50_ms": percentile(alone, 50),
        "p50_ms": percentile(seq, 50),
        "p95_ms": percentile(seq, 95),
        "p99_ms": percentile(seq, 99),
        "modelserver_p50_ms": percentile(direct, 50),
        "server_mean_batch": images / batches if batches else None,
        "model_cpu_ms_per_image": round(model_cpu * 1000 / ROUNDS, 2),
        "cpu_ms_per_image": {
            name: None if seconds is None else round(seconds * 1000 / (ROUNDS * per_round), 2)
            for name, seconds in cpu.items()
        },
        "errors": errors,
        "requests": per_round * ROUNDS,
    }


@contextlib.contextmanager
def servers(
    version_dir: Path, logs_dir: Path, tag: str, modelserver_args: Sequence[str] = (), model_protocol: str = "rest"
) -> Iterator[Started]:
    """A model server (with `modelserver_args`) and a gateway for the version, as `pizzactl serve`
    starts them (the gateway calling it over `model_protocol`), ready; stopped on exit. Their
    logs go to `logs_dir`."""

    port = proc.free_port()
    model_port = proc.pick_model_port("127.0.0.1", proc.free_port(), avoid=[port])
    logs = {
        proc.MODELSERVER: str(logs_dir / f"modelserver-{tag}.log"),
        proc.GATEWAY: str(logs_dir / f"gateway-{tag}.log"),
    }
    with open(logs[proc.MODELSERVER], "wb") as ms_log, open(logs[proc.GATEWAY], "wb") as gw_log:
        started = proc.start_pair(
            version_dir.parent.parent,
            host="127.0.0.1",
            port=port,
            model_port=model_port,
            allow_private_urls=False,
            attached=True,
            logs={proc.MODELSERVER: ms_log, proc.GATEWAY: gw_log},
            modelserver_args=modelserver_args,
            # the load client is one address standing for many users: the per-address connection
            # cap (meant for one greedy client) would refuse its open-loop load, not measure it
            env={"PIZZACTL_MAX_CONNECTIONS_PER_CLIENT": "0"},
            model_protocol=model_protocol,
        )
    try:
        proc.wait_ready(
            started.url, {"model server": started.modelserver, "gateway": started.gateway}, 300.0, logs=logs
        )
        yield started
    finally:
        started.stop(grace=10.0)


def load_levels(url: str, photos, capacity: float, seconds: float) -> dict[str, dict[str, Any]]:
    """p99 and the share shed at each of LOAD_LEVELS x `capacity` (images/s), offered for `seconds` each."""
    levels = {}
    for multiple in LOAD_LEVELS:
        rate = multiple * capacity
        log(f"  {multiple}x the throughput ({rate:.1f} uploads/s) for {seconds:g}s ...")
        results = run_async(open_load(url, photos, rate, seconds))
        answered = [ms for status, ms, _ in results if status == 200]
        shed = [ms for status, ms, body in results if is_shed(status, body)]
        levels[f"{multiple}x"] = {
            "offered_per_s": round(rate, 2),
            "requests": len(results),
            "answered": len(answered),
            "shed": len(shed),
            "errors": len(results) - len(answered) - len(shed),
            "shed_share": round(len(shed) / len(results), 4),
            "p50_ms": round(percentile(answered, 50), 2) if answered else None,
            "p99_ms": round(percentile(answered, 99), 2) if answered else None,
            "shed_p50_ms": round(percentile(shed, 50), 2) if shed else None,
            "shed_p99_ms": round(percentile(shed, 99), 2) if shed else None,
            "first_errors": [
                f"{status}: {body[:200].decode(errors='replace')}"
                for status, _, body in results
                if status != 200 and not is_shed(status, body)
            ][:3],
        }
    return levels


def bench_runtime(
    runtime: str,
    version_dir: Path,
    jpegs_file: Path,
    raw,
    jpegs,
    concurrency: int,
    requests: int,
    tmp: Path,
    overload_seconds: float = OVERLOAD_SECONDS,
    threads: Sequence[int] = THREADS,
) -> dict[str, Any]:
    """The sweep, then the best setting side by side with the servers, for one runtime."""
    log(f"{runtime}: the model alone in a fresh process per setting ...")
    table = sweep(version_dir, jpegs_file, runtime, max(2 * concurrency, requests // ROUNDS), ROUNDS, threads)
    best = max(table, key=lambda row: row["img_per_s"])
    worker = Worker(version_dir, jpegs_file, Setting(runtime, best["intra"], best["inter"]))
    try:
        with servers(version_dir, tmp, runtime, ("--runtime", runtime)) as started:
            served_by = served_runtime(started.model_url)
            log(
                f"{runtime}: {ROUNDS} rounds of the best setting ({best['batch']} a batch) and the servers (served by {served_by}) ..."
            )
            m = measure(
                worker, best["batch"], started.url, started.model_url, raw, jpegs, concurrency, requests, started.pids
            )
            worker.close()  # its process would take CPU from the servers
            levels = load_levels(started.url, raw, m["e2e_img_per_s"], overload_seconds) if overload_seconds else {}
    finally:
        worker.close()
    return {**m, "sweep": table, "best": best, "served_by": served_by, "load_levels": levels}


def served_runtime(model_url: str) -> str | None:

    body = httpclient.json_or_none(f"{model_url}/v1/models/{MODEL_NAME}/metadata", timeout=5)
    try:
        return body["metadata"].get("runtime")
    except (KeyError, TypeError, AttributeError):
        return None


def significant(x: float, digits: int = 3) -> float:
    """A ratio to `digits` significant figures: round(x, 3) would leave a slow e2e's 0.0384 as
    0.038, 1% off what the reported throughputs say."""
    return float(f"{x:.{digits}g}")


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    """The figures of one runtime, rounded, with the derived ratios."""
    r = {
        "model_img_per_s": round(m["model_img_per_s"], 2),
        "best_in_process_img_per_s": m["best"]["img_per_s"],
        "e2e_img_per_s": round(m["e2e_img_per_s"], 2),
        "ratio": significant(m["e2e_img_per_s"] / m["model_img_per_s"]),
        "p50_ms": round(m["p50_ms"], 2),
        "p95_ms": round(m["p95_ms"], 2),
        "p99_ms": round(m["p99_ms"], 2),
        "model_p50_ms": round(m["model_p50_ms"], 2),
        "overhead_p50_ms": round(m["p50_ms"] - m["model_p50_ms"], 2),
        "modelserver_p50_ms": round(m["modelserver_p50_ms"], 2),
        "gateway_p50_ms": round(m["p50_ms"] - m["modelserver_p50_ms"], 2),
        "server_mean_batch": None if m["server_mean_batch"] is None else round(m["server_mean_batch"], 2),
        "model_cpu_ms_per_image": m["model_cpu_ms_per_image"],
        "cpu_ms_per_image": m["cpu_ms_per_image"],
        "errors": m["errors"],
        "requests": m["requests"],
        "best": m["best"],
        "served_by": m["served_by"],
        "sweep": m["sweep"],
        "load_levels": m["load_levels"],
    }
    return r


def bench_serve(
    settings,
    concurrency: int = 16,
    requests: int = 200,
    runtimes: Sequence[str] | None = None,
    overload_seconds: float = OVERLOAD_SECONDS,
    threads: Sequence[int] = THREADS,
) -> dict[str, Any]:
    """Every runtime's sweep (over `threads`), best and end to end; the top level is the default runtime's."""
    from pizzactl.serving import prepare

    concurrency, requests = max(1, int(concurrency)), max(1, int(requests))
    version_dir = latest_version_dir(settings.models_dir)
    card = ModelCard.load(version_dir)
    size = int(card.image_size or 0)
    chosen = require_runtimes(version_dir, runtimes or runtime_candidates("auto", card))
    photos = pick_photos(data_dir(settings))
    raw = [(p.name, p.read_bytes()) for p in photos]
    jpegs = [prepare.prepare_image(data, size) for _, data in raw]
    log(f"{len(photos)} photos from {photos[0].parent.parent}; model {version_dir} ({card.backbone}, {size}px)")
    load_before = os.getloadavg()
    started = time.time()
    per_runtime = {}
    with tempfile.TemporaryDirectory(prefix="pizzactl-bench-") as tmp:
        jpegs_file = Path(tmp) / "jpegs.bin"
        write_jpegs(jpegs_file, jpegs)
        for runtime in chosen:
            per_runtime[runtime] = _summary(
                bench_runtime(
                    runtime,
                    version_dir,
                    jpegs_file,
                    raw,
                    jpegs,
                    concurrency,
                    requests,
                    Path(tmp),
                    overload_seconds,
                    threads,
                )
            )
        rounds_ = {}
        if "tensorflow" in per_runtime and len(per_runtime) > 1:
            log(f"every runtime's best setting alone, {ROUNDS} alternating rounds ...")
            best = {name: r["best"] for name, r in per_runtime.items()}
            rounds_ = side_by_side(version_dir, jpegs_file, best, max(2 * concurrency, requests // ROUNDS), ROUNDS)
    default = runtime_candidates("auto", card)[0]
    top = default if default in per_runtime else chosen[0]
    primary = per_runtime[top]
    result: dict[str, Any] = {
        **{k: v for k, v in primary.items() if k not in ("sweep", "best")},
        "runtime": top,
        "default_runtime": default,
        "runtimes": per_runtime,
        "wire_bytes_per_image": round(statistics.mean(len(wire_body(j)) for j in jpegs)),
        "jpeg_bytes_per_image": round(statistics.mean(len(j) for j in jpegs)),
        "upload_bytes_per_image": round(statistics.mean(len(d) for _, d in raw)),
        "concurrency": concurrency,
        "rounds": ROUNDS,
        "threads": list(threads),
        "photos": len(photos),
        "data_dir": str(photos[0].parent.parent),
        "model_dir": str(version_dir),
        "backbone": card.backbone,
        "image_size": size,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.time() - started, 1),
        "cpus": usable_cpus(),
    }
    if "tensorflow" in per_runtime and len(per_runtime) > 1:
        result["side_by_side"] = rounds_
        tf_best = statistics.median(rounds_["tensorflow"])
        result["speedup_vs_tensorflow"] = {
            name: significant(statistics.median(rounds_[name]) / tf_best) for name in per_runtime
        }
    result["goals"] = {
        key: {"goal": f"{op} {target}", "ok": (result[key] >= target if op == ">=" else result[key] <= target)}
        for key, (op, target) in GOALS.items()
    }
    return result
