"""Admission instead of timeouts (issue 27): a bounded queue sized from measured throughput in the
gateway and the model server; what fits is answered however long the queue, what does not is
refused at once with 429/503 and Retry-After; load on a shared CPU is not turned into errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.processes import free_port
from support.serving_fixtures import LocalHTTPServer, UvicornThread, send_json


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the queue's arithmetic (no servers) ------------------------------------------------------


def test_throughput_counts_busy_seconds_only_and_follows_a_changing_machine():
    from pizzactl.serving.admission import Throughput

    clock = Clock()
    meter = Throughput(half_life=30.0, clock=clock)
    assert meter.rate is None  # nothing measured: the bound falls back to its floor
    meter.started()
    clock.now = 2.0
    meter.finished(20)
    assert meter.rate == pytest.approx(10.0)
    clock.now = 100.0  # idle: capacity is what the server does while busy, not the load it got
    meter.started()
    clock.now = 101.0
    meter.finished(10)
    assert meter.rate == pytest.approx(10.0)
    for _ in range(20):  # the machine got twice as slow: the rate follows within a few half-lives
        meter.started()
        clock.now += 10.0
        meter.finished(50)
    assert meter.rate == pytest.approx(5.0, rel=0.05)


def test_the_bound_is_the_measured_rate_times_the_queue_seconds_or_the_override():
    from pizzactl.serving.admission import Admission, Throughput

    clock = Clock()
    meter = Throughput(clock=clock)
    admission = Admission(queue_seconds=5.0, meter=meter, min_queue=8)
    assert admission.bound() == 8  # cold: two batches
    meter.started()
    clock.now = 1.0
    meter.finished(40)  # 40 images/s
    assert admission.bound() == 200
    assert Admission(queue_seconds=5.0, max_queue=12, meter=meter).bound() == 12
    slow = Throughput(clock=clock)
    slow.started()
    clock.now = 2.0
    slow.finished(1)
    assert Admission(queue_seconds=5.0, meter=slow, min_queue=8).bound() == 8  # never below the floor


def test_what_does_not_fit_is_refused_at_once_429_for_the_greedy_client_503_for_the_others():
    from pizzactl.errors import ClientQueueFullError, QueueFullError
    from pizzactl.serving.admission import Admission, Throughput

    clock = Clock()
    meter = Throughput(clock=clock)
    meter.started()
    clock.now = 1.0
    meter.finished(2)  # 2 images/s: a full queue of 4 drains in 2 s
    shed: list[str] = []
    admission = Admission(queue_seconds=2.0, meter=meter, min_queue=1)
    admission.on_shed = shed.append
    assert admission.bound() == 4
    with contextlib.ExitStack() as held:
        for _ in range(3):
            held.enter_context(admission.admit(1, "greedy"))
        held.enter_context(admission.admit(1, "polite"))
        with pytest.raises(ClientQueueFullError) as greedy:
            held.enter_context(admission.admit(1, "greedy"))
        with pytest.raises(QueueFullError) as other:
            held.enter_context(admission.admit(1, "newcomer"))
        assert type(other.value) is QueueFullError
        assert (greedy.value.http_status, other.value.http_status) == (429, 503)
        assert greedy.value.retry_after == other.value.retry_after == 2
        assert admission.held == 4
    assert admission.held == 0 and not admission.clients  # places are given back, errors included
    assert shed == ["client_share", "queue_full"]
    with admission.admit(40, "batch"):  # an empty queue takes a request larger than the bound
        pass


# --- the gateway refuses at once with the error map's JSON ------------------------------------


@contextlib.contextmanager
def silent_model_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a stuck model server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_full_gateway_queue_answers_429_with_retry_after_at_once_and_the_stuck_call_still_ends():
    from pizzactl.serving.gateway import create_app

    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    with (
        silent_model_server() as port,
        UvicornThread(create_app(f"http://127.0.0.1:{port}", model_timeout=3.0, max_queue=1)) as gw,
    ):

        async def go():
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                held = asyncio.ensure_future(client.post("/predict", json={"image_b64": png}))
                await asyncio.sleep(0.5)  # it holds the only place, waiting on the stuck server
                started = time.monotonic()
                refused = await client.post("/predict", json={"image_b64": png})
                refused_after = time.monotonic() - started
                metrics = (await client.get("/metrics")).text
                return await held, refused, refused_after, metrics

        stuck, refused, refused_after, metrics = asyncio.run(go())
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused_after < 2.0  # at once, not after the model timeout (3 s)
    assert 'pizzactl_gateway_shed_requests_total{reason="client_share"} 1.0' in metrics
    assert "pizzactl_gateway_queue_bound_images 1.0" in metrics
    # the stuck model server is still a 503 within its timeout: no progress, no patience
    assert stuck.status_code == 503 and stuck.json()["error"]["code"] == "model_unavailable"


class BusyTFServing(LocalHTTPServer):
    """tensorflow/serving busy with a long batch: status answered at once, `:predict` after `delay`
    seconds. TF Serving's REST status and metadata calls are served by its HTTP threads without
    going through the batching queue (https://www.tensorflow.org/tfx/serving/api_rest; batching:
    tensorflow_serving/batching/README.md), so a model server running a long batch still answers them."""

    def __init__(self, delay: float):
        import http.server
        import json

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.endswith("/metadata"):
                    send_json(self, 200, {"model_spec": {"name": "pizza", "version": "1"}, "metadata": {}})
                else:
                    status = {"error_code": "OK", "error_message": ""}
                    send_json(
                        self, 200, {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": status}]}
                    )

            def do_POST(self):
                count = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"])
                time.sleep(delay)
                send_json(self, 200, {"predictions": [{"label": "pizza", "probability": 0.9}] * count})

        super().__init__(Handler)
        self.server.daemon_threads = True


def test_a_model_server_busy_longer_than_the_timeout_is_waited_for_not_a_503():
    from pizzactl.serving.gateway import create_app

    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    busy = BusyTFServing(delay=2.5)
    try:
        with UvicornThread(create_app(busy.url, model_timeout=0.5, classes="not_pizza,pizza")) as gw:
            response = httpx.post(gw.url + "/predict", json={"image_b64": png}, timeout=30)
    finally:
        busy.close()
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "pizza"


# --- real servers, real model, a shared CPU ---------------------------------------------------


@contextlib.contextmanager
def busy_cpu() -> Iterator[None]:
    """A process spinning on one CPU beside the servers, as another job on the machine would."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait(10)


@contextlib.contextmanager
def servers(models: Path, logs: Path, env: dict[str, str]) -> Iterator[tuple[str, str, dict[str, int]]]:
    """The model server and the gateway as `pizzactl serve` starts them (separate processes), with
    PIZZACTL_* settings from `env`: (gateway url, model server url, pids)."""
    from pizzactl.serving import processes as proc

    port, model_port = free_port(), free_port()
    model_url = f"http://127.0.0.1:{model_port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    base.update(env, CUDA_VISIBLE_DEVICES="-1")
    paths = {proc.MODELSERVER: str(logs / "modelserver.log"), proc.GATEWAY: str(logs / "gateway.log")}
    with open(paths[proc.MODELSERVER], "wb") as ms_log, open(paths[proc.GATEWAY], "wb") as gw_log:
        modelserver = proc.spawn(proc.modelserver_command(models, model_port), stdout=ms_log, attached=True, env=base)
        gateway = proc.spawn(proc.gateway_command(model_url, port), stdout=gw_log, attached=True, env=base)
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_ready(url, {"model server": modelserver, "gateway": gateway}, 180.0, logs=paths)
        yield url, model_url, {"modelserver": modelserver.pid, "gateway": gateway.pid}
    finally:
        proc.stop_all([gateway.pid, modelserver.pid], 10.0)
        for child in (gateway, modelserver):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)


async def closed_loop(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    *,
    requests: int = 0,
    seconds: float = 0.0,
    pause_when_refused: float = 0.0,
) -> list[tuple[int, float, str | None, bytes]]:
    """`concurrency` clients, each sending its next request when the last is answered (after
    `pause_when_refused` seconds if it was not a 200), until `requests` were sent or `seconds`
    passed: (status, seconds, Retry-After, body) per request. A request not answered within the
    client's 60 s timeout raises: a hang fails the test."""
    import aiohttp

    results: list[tuple[int, float, str | None, bytes]] = []
    sent = 0
    stop_at = time.monotonic() + seconds if seconds else float("inf")
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def client() -> None:
            nonlocal sent
            while (not requests or sent < requests) and time.monotonic() < stop_at:
                sent += 1
                started = time.monotonic()
                async with session.post(url, data=body, headers=headers) as response:
                    content = await response.read()
                results.append(
                    (response.status, time.monotonic() - started, response.headers.get("retry-after"), content)
                )
                if response.status != 200:
                    await asyncio.sleep(pause_when_refused)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def upload(photo: Path) -> tuple[bytes, dict[str, str]]:
    """The multipart upload `pizzactl predict` sends."""
    request = httpx.Request("POST", "http://gw/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    return request.read(), {"content-type": request.headers["content-type"]}


def statuses(results) -> dict[int, int]:
    from collections import Counter

    return dict(Counter(status for status, *_ in results))


def first_errors(results, n: int = 3) -> list[str]:
    return [f"{status}: {content[:200]!r}" for status, _, _, content in results if status != 200][:n]


@pytest.fixture(scope="module")
def slow_model(shared_photos, tmp_path_factory) -> Path:
    """A real exported model with the tiny model's contract but ~50x its arithmetic (a 160 px input
    through full-resolution 3x3 convolutions, ~0.6 GMAC per image): tens of images/s on LiteRT on
    2 shared CPUs, within a few times of the default EfficientNet-Lite2, so 16 requests in flight
    queue for longer than a short model timeout, as in issue 27's soak. Untrained: the weights do
    not change what a request costs."""
    from support.tiers import import_tier

    keras = import_tier("keras", "slow")
    from pizzactl.model.export import export_model

    keras.utils.set_random_seed(3)
    size = 160
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs, name="slow_cnn")
    photos = [p.read_bytes() for p in shared_photos["not_pizza"][:2] + shared_photos["pizza"][:2]]
    metadata = {
        "backbone": "slow_cnn",
        "weights": "none",
        "image_size": size,
        "classes": ["not_pizza", "pizza"],
        "threshold": 0.5,
        "metrics": {},
        "data_hash": "0" * 64,
    }
    models = tmp_path_factory.mktemp("slow_models")
    export_model(model, models, metadata, photos, runtimes=("litert",))
    return models


# The scale model of issue 27's soak: there EfficientNet-Lite2 answered ~10 images/s, so 16
# requests in flight queued for ~1.6 s against a fixed 2 s model timeout that counted the queueing,
# and 3.2% of the requests became 503s. Here the model is a few times faster and the model
# timeout a few times shorter: still above any pause of a shared machine, below the queue.
SCALED_MODEL_TIMEOUT = "0.5"


SHED_WITHIN_SECONDS = 1.0  # issue 27 asks for 100 ms; generous here, the machine is shared and noisy


def shed_metric(text: str, prefix: str, reason: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(f'{prefix}_shed_requests_total{{reason="{reason}"}}'))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
def test_twice_what_the_queue_holds_is_refused_at_once_and_nothing_hangs(slow_model, shared_photos, tmp_path):
    """A queue of 8 images in both servers, 16 clients: what fits is answered 200, the rest gets
    429 (one client address holds the queue) with Retry-After and the error map's JSON at once;
    sent past the gateway, the model server's own full queue answers 503 with Retry-After."""
    import base64
    import json

    from pizzactl.serving.prepare import prepare_image

    photo = shared_photos["pizza"][0]
    body, headers = upload(photo)
    jpeg = base64.b64encode(prepare_image(photo.read_bytes(), 160)).decode()
    direct = json.dumps({"instances": [{"b64": jpeg}] * 4}).encode()  # 4 images: two requests fill it
    with servers(slow_model, tmp_path, {"PIZZACTL_MAX_QUEUE": "8"}) as (url, model_url, _):
        results = asyncio.run(closed_loop(url + "/predict", body, headers, 16, seconds=8.0, pause_when_refused=0.1))
        gateway_metrics = httpx.get(url + "/metrics").text
        predict_url = model_url + "/v1/models/pizza:predict"
        json_type = {"content-type": "application/json"}
        direct_results = asyncio.run(
            closed_loop(predict_url, direct, json_type, 8, seconds=4.0, pause_when_refused=0.1)
        )
        model_metrics = httpx.get(model_url + "/monitoring/prometheus/metrics").text
        from pizzactl.serving.gateway import create_app

        # a gateway with a larger queue than the model server's: the model server's 503 is passed on
        with UvicornThread(create_app(model_url, max_queue=64)) as wide:
            passed_on = asyncio.run(
                closed_loop(wide.url + "/predict", body, headers, 16, seconds=4.0, pause_when_refused=0.1)
            )
            wide_metrics = httpx.get(wide.url + "/metrics").text
    counts = statuses(results)
    assert set(counts) == {200, 429}, first_errors(results)
    assert counts[200] >= 16 and counts[429] >= 16
    shed = [r for r in results if r[0] == 429]
    for _, _, retry_after, content in shed:
        assert retry_after is not None and int(retry_after) >= 1
        assert json.loads(content)["error"]["code"] == "too_many_requests"
    shed_seconds = sorted(seconds for _, seconds, _, _ in shed)
    served_seconds = sorted(seconds for status, seconds, _, _ in results if status == 200)
    print(
        f"shed {len(shed)}/{len(results)}: p50 {shed_seconds[len(shed) // 2] * 1000:.1f} ms, "
        f"max {shed_seconds[-1] * 1000:.1f} ms; answered p50 {served_seconds[len(served_seconds) // 2]:.3f}s"
    )
    assert shed_seconds[-1] < SHED_WITHIN_SECONDS
    assert shed_metric(gateway_metrics, "pizzactl_gateway", "client_share") == len(shed)
    assert "pizzactl_gateway_queue_bound_images 8.0" in gateway_metrics

    direct_counts = statuses(direct_results)
    assert set(direct_counts) == {200, 503}, first_errors(direct_results)
    refused = [r for r in direct_results if r[0] == 503]
    for _, seconds, retry_after, content in refused:
        assert retry_after is not None and int(retry_after) >= 1
        assert json.loads(content)["error"].startswith("Queue full")  # TF Serving's {"error": "..."}
        assert seconds < SHED_WITHIN_SECONDS
    assert shed_metric(model_metrics, "pizzactl_model", "queue_full") == len(refused)

    assert set(statuses(passed_on)) == {200, 503}, first_errors(passed_on)
    full = [r for r in passed_on if r[0] == 503]
    for _, _, retry_after, content in full:
        assert retry_after is not None and int(retry_after) >= 1
        assert json.loads(content)["error"]["code"] == "overloaded"
    assert shed_metric(wide_metrics, "pizzactl_gateway", "model_server_full") == len(full)


SOAK_SECONDS = 60.0
WARM_UP_SECONDS = 15.0
RSS_GROWTH_MB = 32.0  # measured: under 1 MB in a minute


@pytest.mark.slow
def test_a_soak_of_16_clients_on_a_shared_cpu_is_answered_with_flat_memory(slow_model, shared_photos, tmp_path):
    """A minute of 16 clients in a closed loop on LiteRT, a busy loop on one of the CPUs: every request
    answered 200 (none turned into a timeout by queueing), and neither server's memory keeps growing."""
    body, headers = upload(shared_photos["pizza"][0])
    env = {"PIZZACTL_MODEL_TIMEOUT": SCALED_MODEL_TIMEOUT}
    with busy_cpu(), servers(slow_model, tmp_path, env) as (url, model_url, pids):
        assert httpx.get(model_url + "/v1/models/pizza/metadata").json()["metadata"]["runtime"] == "litert"

        async def soak():
            load = asyncio.ensure_future(closed_loop(url + "/predict", body, headers, 16, seconds=SOAK_SECONDS))
            await asyncio.sleep(WARM_UP_SECONDS)
            warm = {name: rss_mb(pid) for name, pid in pids.items()}
            results = await load
            return results, warm, {name: rss_mb(pid) for name, pid in pids.items()}

        results, warm, end = asyncio.run(soak())
    assert len(results) >= 100
    assert statuses(results) == {200: len(results)}, first_errors(results)
    latencies = sorted(seconds for _, seconds, _, _ in results)
    print(
        f"soak: {len(results)} requests, p50 {latencies[len(latencies) // 2]:.3f}s, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.3f}s, RSS MB {warm} -> {end}"
    )
    for name in pids:
        assert end[name] - warm[name] <= RSS_GROWTH_MB, (name, warm, end)
