"""Session fixtures for the serving tests: a real model server process and a real gateway.

Loaded as a plugin from conftest.py so that test_gateway, test_schemathesis and test_webpage
share ONE model server (TensorFlow starts once) and one gateway.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.processes import free_port


@dataclass
class ModelServerProcess:
    """`python -m pizzactl.serving.modelserver` in a subprocess we own (stopped by its pid)."""

    models: Path
    port: int
    args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ModelServerProcess:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
        self.log_path = self.log_path or Path(self.models).parent / f"modelserver-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server process writes it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pizzactl.serving.modelserver",
                "--models",
                str(self.models),
                "--port",
                str(self.port),
                "--poll-seconds",
                "0.5",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    def wait_available(self, version: str | None = None, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"model server exited: {self.log_path.read_text()[-3000:]}")
            try:
                last = httpx.get(f"{self.url}/v1/models/pizza", timeout=2)
                if last.status_code == 200:
                    states = {s["version"]: s["state"] for s in last.json()["model_version_status"]}
                    if (version is None and "AVAILABLE" in states.values()) or states.get(version) == "AVAILABLE":
                        return last.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(
            f"model server not AVAILABLE (last: {last and last.text}); log: {self.log_path.read_text()[-3000:]}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class LocalHTTPServer:
    """A `http.server` handler class served on a free loopback port in a daemon thread.

    With a listen backlog like a real server's (TF Serving's REST server, nginx, uvicorn: 511 or
    more, capped by the kernel's somaxconn), not socketserver's 5: a burst of connects beyond 5 would
    otherwise be dropped and time out, which no real server does.
    """

    def __init__(self, handler):
        import http.server

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 511

        self.server = Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(handler, status: int, obj) -> None:
    """Answer a `BaseHTTPRequestHandler` request with a JSON body."""
    import json

    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FakeTFServing(LocalHTTPServer):
    """tensorflow/serving's REST API for a three-class pizzactl export, as documented in
    https://www.tensorflow.org/tfx/serving/api_rest: status, metadata with only the
    `signature_def` (TF Serving serves nothing from assets.extra, so no class names), and
    row-format predictions with every output of the signature. `row` is each image's answer (a
    three-class one unless given); `predicts` counts the predict calls, which is what a request
    stopped at the gateway's door must not make.

    Several versions, as with a model config file (https://www.tensorflow.org/tfx/serving/serving_config,
    "Serving a Specific Version of a Model", "Assigning String Labels to Model Versions"):
    `versions` maps each loaded version to its answer row, `labels` names versions; the URLs
    `/versions/N` and `/labels/L` pick one (status, metadata, predict), none picks the highest. Like
    TF Serving, no answer says which version made it (no X-Model-Version header: a client asks the
    status of `/labels/L`); an unknown label is 404 "Unrecognized servable version label", and a
    version not loaded (put it in `unloaded` to take it away, as when its server dies) is 404
    "Servable not found for request: Specific(pizza, N)". `predicts_by_version` counts per version.

    A version's answer may depend on the image: give a function of the decoded instance (PIL
    image) instead of a row. A version in `broken` answers predict with TF Serving's error for
    a failing session run (500 `{"error": "..."}`, tensorflow_serving/model_servers/http_server.cc
    maps a non-OK status to its HTTP code: INTERNAL -> 500); one in `slow` takes that many
    seconds before it answers (a starved or stuck server); one in `gates` answers only once its
    `threading.Event` is set (a stuck server, released by the test).
    """

    def __init__(self, row: dict | None = None, versions: dict[int, Any] | None = None, labels: dict | None = None):
        import http.server
        import json
        import re

        default = row or {"label": "salad", "probabilities": [0.1, 0.2, 0.7], "probability": 0.7}
        rows = dict(versions or {1: default})
        self.predicts = 0
        self.predicts_by_version: dict[int, int] = {}
        self.unloaded: set[int] = set()
        self.broken: set[int] = set()
        self.slow: dict[int, float] = {}
        self.gates: dict[int, threading.Event] = {}
        fake = self
        route = re.compile(r"^/v1/models/pizza(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata|:predict)?$")

        def pick(handler) -> int | None:
            match = route.match(handler.path)
            if not match:
                send_json(handler, 404, {"error": "Malformed request: " + handler.path})
                return None
            number, label = match.group(1), match.group(2)
            if label is not None and label not in (labels or {}):
                send_json(handler, 404, {"error": f"Unrecognized servable version label: {label}"})
                return None
            loaded = sorted(set(rows) - fake.unloaded)
            version = int(number) if number else labels[label] if label else (loaded[-1] if loaded else 0)
            if version not in loaded:
                send_json(handler, 404, {"error": f"Servable not found for request: Specific(pizza, {version})"})
                return None
            return version

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's REST server (libevent's evhttp) does
            # headers and body leave in one segment there; here they are two writes, which Nagle's
            # algorithm with the client's delayed ACK would hold ~40 ms on a kept-alive connection
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                version = pick(self)
                if version is None:
                    return
                if self.path.endswith("/metadata"):
                    spec = {"name": "pizza", "version": str(version)}
                    send_json(self, 200, {"model_spec": spec, "metadata": {"signature_def": {}}})
                    return
                status = {"error_code": "OK", "error_message": ""}
                wanted = [version] if ("/versions/" in self.path or "/labels/" in self.path) else sorted(rows)
                entries = [
                    {"version": str(v), "state": "AVAILABLE", "status": status}
                    for v in sorted(wanted, reverse=True)
                    if v not in fake.unloaded
                ]
                send_json(self, 200, {"model_version_status": entries})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                version = pick(self)
                if version is None:
                    return
                fake.predicts += 1
                fake.predicts_by_version[version] = fake.predicts_by_version.get(version, 0) + 1
                if version in fake.slow:
                    time.sleep(fake.slow[version])
                if version in fake.gates:
                    fake.gates[version].wait(60)
                if version in fake.broken:
                    send_json(self, 500, {"error": "Internal: the session run failed"})
                    return
                instances = json.loads(body)["instances"]
                answer = rows[version]
                if callable(answer):
                    from PIL import Image

                    images = [Image.open(io.BytesIO(base64.b64decode(i["b64"]))).convert("RGB") for i in instances]
                    predictions = [answer(image) for image in images]
                else:
                    predictions = [answer] * len(instances)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up on a slow answer
                    send_json(self, 200, {"predictions": predictions})

        super().__init__(Handler)


class UvicornThread:
    """An ASGI app served by uvicorn in a background thread, on a free port."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def serving_models(tiny_model) -> Path:
    """The tiny real exported model (MODELS/pizza/1), shared read-only by the session server."""
    return Path(tiny_model)


@pytest.fixture(scope="session")
def model_server(serving_models, tmp_path_factory):
    """A real model server process on a free port serving the tiny model."""
    server = ModelServerProcess(
        serving_models, free_port(), log_path=tmp_path_factory.mktemp("logs") / "modelserver.log"
    )
    server.start()
    try:
        server.wait_available()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def grpc_model_server(serving_models, tmp_path_factory):
    """A model server of its own with --grpc-port (the session one serves REST only):
    (the server, its gRPC host:port)."""
    port = free_port()
    server = ModelServerProcess(
        serving_models,
        free_port(),
        args=("--grpc-port", str(port)),
        log_path=tmp_path_factory.mktemp("grpc") / "modelserver.log",
    ).start()
    try:
        server.wait_available()
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway(model_server):
    """The real gateway (uvicorn in a thread) in front of the session model server."""
    from pizzactl.serving.gateway import create_app

    with UvicornThread(create_app(model_server.url, allow_private_urls=False)) as running:
        yield running


@pytest.fixture(scope="session")
def pizza_jpeg(shared_photos) -> bytes:
    return shared_photos["pizza"][0].read_bytes()


@pytest.fixture(scope="session")
def photo_server(synthetic_photos, tmp_path_factory):
    """A local http.server serving two synthetic photos, a page and redirects (for URL fetching)."""
    import http.server

    root = tmp_path_factory.mktemp("www")
    shutil.copy(synthetic_photos.photos["pizza"][0], root / "pizza.jpg")
    shutil.copy(synthetic_photos.photos["not_pizza"][0], root / "not_pizza.jpg")
    (root / "page.html").write_text("<html><body>not an image</body></html>")
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PNG")
    (root / "green.png").write_bytes(buf.getvalue())
    redirects: dict[str, str] = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/big.jpg":  # streams past any cap without a Content-Length
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                try:
                    for _ in range(64):
                        self.wfile.write(b"\xff" * 256 * 1024)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
            if self.path == "/slow.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                with contextlib.suppress(Exception):
                    time.sleep(10)
                return
            return super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    ns = type("PhotoServer", (), {})()
    ns.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    ns.redirects = redirects
    ns.root = root
    try:
        yield ns
    finally:
        httpd.shutdown()
        httpd.server_close()
