"""The load side of `bench serve`: clients that cost little, and where each process spent its CPU.

The load client shares the machine with the servers, so it must cost as little as possible (in
production clients run elsewhere): request bodies are encoded once, and aiohttp on uvloop costs
a fraction of a synchronous client's CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pizzactl import httpclient
from pizzactl.config import MODEL_NAME
from pizzactl.console import log
from pizzactl.serving.modelserver.rest import binary_instances


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
    return binary_instances([jpeg])


# --- through the servers ---------------------------------------------------------------------


_BODIES: dict[tuple[str, int], list[tuple[bytes, dict[str, str]]]] = {}


def _multipart_bodies(url: str, photos: Sequence[tuple[str, bytes]]) -> list[tuple[bytes, dict[str, str]]]:
    """Each photo as the multipart upload `pizzactl predict` sends (field `file`), built by requests once."""
    import requests

    key = (url, id(photos))
    if key not in _BODIES:
        out = []
        for name, data in photos:
            request = requests.Request("POST", url + "/predict", files={"file": (name, data, "image/jpeg")}).prepare()
            assert isinstance(request.body, bytes)
            out.append((request.body, {"content-type": request.headers["content-type"]}))
        _BODIES[key] = out
    return _BODIES[key]


async def upload_load(
    url: str, photos: Sequence[tuple[str, bytes]], n_requests: int, concurrency: int
) -> tuple[float, list[float], int]:
    """Upload photos to url/predict with `concurrency` in flight: (seconds, latencies ms, errors).

    The load client shares the CPU with the servers, so it must cost as little as possible (in
    production clients run elsewhere): bodies are encoded once, and aiohttp on uvloop costs a
    fraction of a synchronous client's CPU per request.
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


SHED_CODES = ("overloaded", "too_many_requests")  # 429/503 from a full queue (serving/admission.py)


def is_shed(status: int, body: bytes) -> bool:
    """A request refused at once by a full queue (not a failure of the servers)."""
    if status not in (429, 503):
        return False
    try:
        return json.loads(body)["error"]["code"] in SHED_CODES
    except (ValueError, KeyError, TypeError):
        return False


async def open_load(
    url: str, photos: Sequence[tuple[str, bytes]], rate: float, seconds: float
) -> list[tuple[int, float, bytes]]:
    """Uploads to url/predict at `rate` per second for `seconds`, whatever the answers (an open
    loop: clients that do not wait for each other, as real ones do), so offered load can exceed
    capacity: (status, latency ms, body) per request; status 0 for a request that got no answer."""
    import aiohttp

    bodies = _multipart_bodies(url, photos)
    n = max(1, round(rate * seconds))
    results: list[tuple[int, float, bytes]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60.0)) as client:

        async def one(i: int) -> None:
            content, headers = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                async with client.post(url + "/predict", data=content, headers=headers) as response:
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, body = 0, repr(exc).encode()
            results.append((status, (time.perf_counter() - t0) * 1000, body))

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return results


def run_async(coro):
    """asyncio.run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def direct_latencies(client, model_url: str, jpegs: Sequence[bytes], n: int, offset: int = 0) -> list[float]:
    """The model server alone: the gateway's request for each image, sent directly, one at a time."""
    out = []
    for i in range(n):
        body = wire_body(jpegs[(offset + i) % len(jpegs)])
        t0 = time.perf_counter()
        client.post(
            f"{model_url}/v1/models/{MODEL_NAME}:predict",
            data=body,
            headers={"content-type": "application/json"},
            timeout=60.0,
        )
        out.append((time.perf_counter() - t0) * 1000)
    return out


def batch_stats(model_url: str) -> tuple[float, float] | None:
    """(batches, images) the model server has run so far, from its Prometheus metrics."""
    response = httpclient.get(model_url + "/monitoring/prometheus/metrics", timeout=5)
    if response is None:
        return None
    text = response.text
    count = metric_sum(text, "pizzactl_model_batch_size_count")
    total = metric_sum(text, "pizzactl_model_batch_size_sum")
    return (count, total) if count is not None and total is not None else None


def cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc (None elsewhere)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_snapshot(pids: Mapping[str, int | None]) -> dict[str, float | None]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def metric_sum(metrics_text: str, name: str) -> float | None:
    total = None
    for line in metrics_text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total
