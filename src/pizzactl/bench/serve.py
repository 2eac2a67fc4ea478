"""`pizzactl bench serve`: what the model can do alone vs what clients get through the stack.

One run measures, on real photos:

1. the limit: the exported SavedModel's `serving_default` in this process, on batches of the
   very JPEG bytes the gateway would send (each photo validated and shrunk by
   `serving.images.prepare_image`), images/s at batch size = concurrency, and its batch-1 p50;
2. end to end: a model server and a gateway started as subprocesses (as `pizzactl serve`
   does), photos uploaded as `pizzactl predict` does, images/s at `concurrency` requests in
   flight and p50/p95/p99 latency one request at a time;
   (1 and 2 alternate in 3 rounds, so that on a shared machine both see the same CPU);
3. the wire: bytes per image in the model server request (JSON with base64, as the gateway's
   client sends it).

To tell where the overhead goes it also reports the model server's own p50 (the gateway's
request sent to it directly), the difference to the end-to-end p50 (the gateway's share) and
the mean batch size the model server formed under load (from its Prometheus metrics), and
the CPU milliseconds per image each process spent in the throughput runs (the model alone,
model server, gateway and the load client, which shares the machine and so is kept lean).

ratio = e2e / model throughput (goal >= 0.8); overhead = e2e p50 - model batch-1 p50 (goal
<= 15 ms); wire bytes per image (goal <= 60000).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pizzactl.config import MODEL_NAME
from pizzactl.console import err, log, out
from pizzactl.errors import DataError, DeployError

GOALS = {
    "ratio": (">=", 0.8),
    "overhead_p50_ms": ("<=", 15.0),
    "wire_bytes_per_image": ("<=", 60000),
}
SHARED_DATA = Path("..") / "shared" / "data" / "pizza_not_pizza"
MAX_PHOTOS = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _data_dir(settings) -> Path:
    """--data, else ../shared/data/pizza_not_pizza if it exists, else the downloaded dataset."""
    if settings.data_dir is not None:
        return Path(settings.data_dir).expanduser()
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    from pizzactl.data.download import resolve_data_dir

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


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def wire_body(jpeg: bytes) -> bytes:
    """The model server request for one image, as the gateway's client builds it."""
    return json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode("ascii")}]}).encode()


# --- the model alone, in this process ----------------------------------------------------------


class InProcessModel:
    """serving_default loaded here: the limit the servers are measured against.

    Throughput is the best of batch sizes `batch_size` and `batch_size // 2` (the server forms
    batches of up to `concurrency`, and on a small CPU a mid-size batch can be the faster one),
    so the limit is the model's best, not a handicapped baseline.
    """

    def __init__(self, version_dir: Path, jpegs: Sequence[bytes], batch_size: int):
        from pizzactl.serving.modelserver.runtimes import configure_tf_threads

        self.threads = configure_tf_threads()  # the model server's TensorFlow settings: same engine on both sides
        import tensorflow as tf

        self.fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
        n = len(jpegs)
        self.batch_size = batch_size
        self.sizes = sorted({batch_size, max(1, batch_size // 2)}, reverse=True)
        self.batches = {
            size: [tf.constant([jpegs[(i + j) % n] for j in range(size)]) for i in range(0, n, size)]
            for size in self.sizes
        }
        self.singles = [tf.constant([j]) for j in jpegs]
        for batches in self.batches.values():  # trace and warm up
            for batch in (batches[0], batches[-1]):
                self.fn(image_bytes=batch)["probability"].numpy()
        self.fn(image_bytes=self.singles[0])["probability"].numpy()

    def throughput(self, images: int) -> float:
        """Images/s over at least `images` images, the best of the batch sizes."""
        best = 0.0
        for size in self.sizes:
            batches = self.batches[size]
            done, started = 0, time.perf_counter()
            while done < images:
                self.fn(image_bytes=batches[(done // size) % len(batches)])["probability"].numpy()
                done += size
            best = max(best, done / (time.perf_counter() - started))
        return best

    def latencies(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            self.fn(image_bytes=self.singles[i % len(self.singles)])["probability"].numpy()
            out.append((time.perf_counter() - t0) * 1000)
        return out


# --- through the servers -----------------------------------------------------------------------


_BODIES: dict[tuple[str, int], list[tuple[bytes, dict[str, str]]]] = {}


def _multipart_bodies(url: str, photos: Sequence[tuple[str, bytes]]) -> list[tuple[bytes, dict[str, str]]]:
    """Each photo as the multipart upload `pizzactl predict` sends (field `file`), built by httpx once."""
    import httpx

    key = (url, id(photos))
    if key not in _BODIES:
        out = []
        for name, data in photos:
            request = httpx.Request("POST", url + "/predict", files={"file": (name, data, "image/jpeg")})
            out.append((request.read(), {"content-type": request.headers["content-type"]}))
        _BODIES[key] = out
    return _BODIES[key]


async def _load(
    url: str, photos: Sequence[tuple[str, bytes]], n_requests: int, concurrency: int
) -> tuple[float, list[float], int]:
    """Upload photos to url/predict with `concurrency` in flight: (seconds, latencies ms, errors).

    The load client shares the CPU with the servers, so it must cost as little as possible (in
    production clients run elsewhere): bodies are encoded once, and aiohttp on uvloop costs a
    fraction of httpx's CPU per request.
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    next_index = 0

    bodies = _multipart_bodies(url, photos)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60.0)) as client:

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < n_requests:
                i = next_index
                next_index += 1
                content, headers = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                async with client.post(url + "/predict", data=content, headers=headers) as response:
                    body = await response.read()
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status != 200:
                    errors += 1
                    if errors == 1:
                        log(f"first error: {response.status} {body[:300]!r}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


def _run(coro):
    """asyncio.run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _direct_latencies(client, model_url: str, jpegs: Sequence[bytes], n: int, offset: int = 0) -> list[float]:
    """The model server alone: the gateway's request for each image, sent directly, one at a time."""
    out = []
    for i in range(n):
        body = wire_body(jpegs[(offset + i) % len(jpegs)])
        t0 = time.perf_counter()
        client.post(
            f"{model_url}/v1/models/{MODEL_NAME}:predict", content=body, headers={"content-type": "application/json"}
        )
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _batch_stats(model_url: str) -> tuple[float, float] | None:
    """(batches, images) the model server has run so far, from its Prometheus metrics."""
    import httpx

    try:
        text = httpx.get(model_url + "/monitoring/prometheus/metrics", timeout=5, trust_env=False).text
    except httpx.HTTPError:
        return None
    count = _metric_sum(text, "pizzactl_model_batch_size_count")
    total = _metric_sum(text, "pizzactl_model_batch_size_sum")
    return (count, total) if count is not None and total is not None else None


ROUNDS = 3


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc (None elsewhere)."""
    import os

    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float | None]:
    return {name: _cpu_seconds(pid) for name, pid in pids.items()}


def measure(
    model: InProcessModel,
    url: str,
    model_url: str,
    photos,
    jpegs,
    concurrency: int,
    requests: int,
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Alternate the in-process model and the servers in ROUNDS rounds, so both see the same machine.

    On a shared machine the available CPU drifts; measuring A then B would compare different
    machines. Throughput: the median of each side over the rounds. Latency: samples pooled
    over the rounds.
    """
    import httpx

    per_round = max(concurrency, -(-requests // ROUNDS))
    n_seq = max(10, min(requests, 100) // ROUNDS)
    _run(_load(url, photos, 2 * concurrency, concurrency))  # warm up both servers
    model_tp, e2e_tp, seq, direct, alone = [], [], [], [], []
    errors = 0
    batches = images = 0.0  # server-side batches formed during the throughput runs
    watched: dict[str, int | None] = {**(pids or {}), "load client": None}
    cpu: dict[str, float | None] = dict.fromkeys(watched, 0.0)  # CPU seconds each process spent under load
    model_cpu = 0.0
    with httpx.Client(timeout=60.0, trust_env=False) as client:
        _direct_latencies(client, model_url, jpegs, 3)
        for r in range(ROUNDS):
            c0 = time.process_time()
            model_tp.append(model.throughput(per_round))
            model_cpu += time.process_time() - c0
            before = _batch_stats(model_url)
            cpu_before = _cpu_snapshot(watched)
            seconds, _, errs = _run(_load(url, photos, per_round, concurrency))
            cpu_after = _cpu_snapshot(watched)
            after = _batch_stats(model_url)
            for name in cpu:
                b, a, so_far = cpu_before[name], cpu_after[name], cpu[name]
                cpu[name] = None if a is None or b is None or so_far is None else so_far + a - b
            if before and after:
                batches, images = batches + after[0] - before[0], images + after[1] - before[1]
            e2e_tp.append(per_round / seconds)
            errors += errs
            alone.extend(model.latencies(n_seq))
            _, lat, errs = _run(_load(url, photos, n_seq, 1))
            seq.extend(lat)
            errors += errs
            direct.extend(_direct_latencies(client, model_url, jpegs, n_seq, offset=r * n_seq))
    if errors >= ROUNDS * (per_round + n_seq):
        raise DeployError(
            "Every request through the gateway failed.", hint="See the error logged above and the server logs."
        )
    mean_batch = images / batches if batches else None
    return {
        "model_img_per_s": statistics.median(model_tp),
        "e2e_img_per_s": statistics.median(e2e_tp),
        "model_p50_ms": percentile(alone, 50),
        "p50_ms": percentile(seq, 50),
        "p95_ms": percentile(seq, 95),
        "p99_ms": percentile(seq, 99),
        "modelserver_p50_ms": percentile(direct, 50),
        "server_mean_batch": mean_batch,
        "model_cpu_ms_per_image": round(model_cpu * 1000 / (ROUNDS * per_round * len(model.sizes)), 2),
        "cpu_ms_per_image": {
            name: None if seconds is None else round(seconds * 1000 / (ROUNDS * per_round), 2)
            for name, seconds in cpu.items()
        },
        "errors": errors,
        "rounds": ROUNDS,
        "requests_per_round": per_round,
    }


def _metric_sum(metrics_text: str, name: str) -> float | None:
    total = None
    for line in metrics_text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def bench_serve(settings, concurrency: int = 16, requests: int = 200) -> dict[str, Any]:
    """Run all three measurements and compare them with the goals."""
    from pizzactl.model_store import latest_version_dir, read_metadata
    from pizzactl.serving import prepare
    from pizzactl.serving import processes as proc

    concurrency, requests = max(1, int(concurrency)), max(1, int(requests))
    version_dir = latest_version_dir(settings.models_dir)
    meta = read_metadata(version_dir)
    size = int(meta["image_size"])
    photos = pick_photos(_data_dir(settings))
    raw = [(p.name, p.read_bytes()) for p in photos]
    jpegs = [prepare.prepare_image(data, size) for _, data in raw]
    wire = statistics.mean(len(wire_body(j)) for j in jpegs)
    log(f"{len(photos)} photos from {photos[0].parent.parent}; model {version_dir} ({meta.get('backbone')}, {size}px)")

    port = proc.free_port()
    model_port = proc.pick_model_port("127.0.0.1", proc.free_port(), avoid=[port])
    with tempfile.TemporaryDirectory(prefix="pizzactl-bench-") as tmp:
        logs = {proc.MODELSERVER: str(Path(tmp) / "modelserver.log"), proc.GATEWAY: str(Path(tmp) / "gateway.log")}
        with open(logs[proc.MODELSERVER], "wb") as ms_log, open(logs[proc.GATEWAY], "wb") as gw_log:
            started = proc.start_pair(
                version_dir.parent.parent,
                host="127.0.0.1",
                port=port,
                model_port=model_port,
                allow_private_urls=False,
                attached=True,
                logs={proc.MODELSERVER: ms_log, proc.GATEWAY: gw_log},
            )
        try:
            log("Loading the model here and in the model server ...")
            model = InProcessModel(version_dir, jpegs, batch_size=concurrency)
            proc.wait_ready(
                started.url, {"model server": started.modelserver, "gateway": started.gateway}, 300.0, logs=logs
            )
            log(
                f"{ROUNDS} rounds of: the model alone (batches of {concurrency}), {requests // ROUNDS}+ uploads through "
                f"gateway and model server at concurrency {concurrency}, then one request at a time ..."
            )
            m = measure(model, started.url, started.model_url, raw, jpegs, concurrency, requests, pids=started.pids)
        finally:
            started.stop(grace=10.0)

    result: dict[str, Any] = {
        "model_img_per_s": round(m["model_img_per_s"], 2),
        "e2e_img_per_s": round(m["e2e_img_per_s"], 2),
        "ratio": round(m["e2e_img_per_s"] / m["model_img_per_s"], 3),
        "p50_ms": round(m["p50_ms"], 2),
        "p95_ms": round(m["p95_ms"], 2),
        "p99_ms": round(m["p99_ms"], 2),
        "model_p50_ms": round(m["model_p50_ms"], 2),
        "overhead_p50_ms": round(m["p50_ms"] - m["model_p50_ms"], 2),
        "wire_bytes_per_image": round(wire),
        "modelserver_p50_ms": round(m["modelserver_p50_ms"], 2),
        "gateway_p50_ms": round(m["p50_ms"] - m["modelserver_p50_ms"], 2),
        "server_mean_batch": None if m["server_mean_batch"] is None else round(m["server_mean_batch"], 2),
        "model_cpu_ms_per_image": m["model_cpu_ms_per_image"],
        "cpu_ms_per_image": m["cpu_ms_per_image"],
        "tf_threads": {"intra_op": model.threads[0], "inter_op": model.threads[1]},
        "jpeg_bytes_per_image": round(statistics.mean(len(j) for j in jpegs)),
        "upload_bytes_per_image": round(statistics.mean(len(d) for _, d in raw)),
        "concurrency": concurrency,
        "requests": m["requests_per_round"] * m["rounds"],
        "batch_size": concurrency,
        "model_batch_sizes": model.sizes,
        "errors": m["errors"],
        "rounds": m["rounds"],
        "photos": len(photos),
        "data_dir": str(photos[0].parent.parent),
        "model_dir": str(version_dir),
        "backbone": meta.get("backbone"),
        "image_size": size,
    }
    result["goals"] = {
        key: {"goal": f"{op} {target}", "ok": (result[key] >= target if op == ">=" else result[key] <= target)}
        for key, (op, target) in GOALS.items()
    }
    return result


def print_bench(res: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        "measure",
        "value",
        "goal",
        title=f"pizzactl bench serve: {res['backbone']} {res['image_size']}px, {res['photos']} real photos",
    )
    rows = [
        (
            "model alone, images/s (best of batch {})".format(
                " or ".join(map(str, res.get("model_batch_sizes") or [res["batch_size"]]))
            ),
            "model_img_per_s",
        ),
        (f"end to end, images/s (concurrency {res['concurrency']})", "e2e_img_per_s"),
        ("ratio e2e / model", "ratio"),
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
    for label, key in rows:
        goal = res["goals"].get(key)
        mark = (
            "" if goal is None else (f"[green]{goal['goal']} ok[/]" if goal["ok"] else f"[red]{goal['goal']} missed[/]")
        )
        value = res.get(key)
        table.add_row(label, "n/a" if value is None else f"{value:,}", mark)
    cpu = res.get("cpu_ms_per_image") or {}
    parts = [f"model alone {res.get('model_cpu_ms_per_image')}"] + [f"{name} {ms}" for name, ms in cpu.items()]
    table.add_row("CPU ms per image under load", ", ".join(parts), "")
    out.print(table)
    if res.get("errors"):
        err.print(f"[yellow]{res['errors']} request(s) failed during the run.[/]")
