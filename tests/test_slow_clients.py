"""Slow and greedy clients against the real servers (`python -m ...` processes, as deployed):
slowloris headers, trickled bodies, connection caps and idle keep-alive (serving/connections.py).

The servers run with short timeouts (1 s) set through PIZZACTL_* variables; the bounds the
tests assert are several times those, and far below what a client that is never cut off gets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.processes import free_port

TRICKLE_FOR = 15.0  # seconds a slow client keeps trickling if nobody cuts it off
CUT_OFF_WITHIN = 8.0  # what the tests accept for a 1 s timeout (the figure is ~1 s, see the report)


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.log.read_text(errors="replace")


def start(kind: str, tmp_path: Path, ready_path: str, **settings) -> Server:
    """`python -m pizzactl.serving.<kind>` on a free port with PIZZACTL_<setting> variables."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update({f"PIZZACTL_{k.upper()}": str(v) for k, v in settings.items()})
    env["PIZZACTL_CONFIG"] = str(tmp_path / "none.toml")
    if kind == "gateway":
        args = ["--model-url", f"http://127.0.0.1:{free_port()}", "--port", str(port)]  # no model server needed
    else:
        (tmp_path / "models").mkdir(exist_ok=True)
        args = ["--models", str(tmp_path / "models"), "--port", str(port)]
    log = tmp_path / f"{kind}-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"pizzactl.serving.{kind}", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log.read_text()}")
        try:
            httpx.get(server.url + ready_path, timeout=2)
            return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"{kind} did not start: {log.read_text()}")


@pytest.fixture(scope="module", params=["gateway", pytest.param("modelserver", marks=pytest.mark.slow)])
def short_timeouts(request, tmp_path_factory):
    """Either server with 1 s header/body/keep-alive timeouts and a body rate of 1000 B/s (the
    model server imports TensorFlow at start: one per module)."""
    kind = request.param
    tmp_path = tmp_path_factory.mktemp(kind)
    ready = "/healthz" if kind == "gateway" else "/v1/models/pizza"
    predict = "/predict" if kind == "gateway" else "/v1/models/pizza:predict"
    server = start(kind, tmp_path, ready, header_timeout=1, body_timeout=1, min_body_rate=1000, keepalive_timeout=1)
    server.ready_path, server.predict_path = ready, predict  # type: ignore[attr-defined]
    yield server
    log = server.stop()
    assert "Traceback" not in log and "internal error" not in log, log


class SlowClient:
    """A raw socket that sends `head`, then one byte of `drip` every 0.2 s until the server closes."""

    def __init__(self, port: int, head: bytes, drip: bytes):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.started = time.monotonic()
        self.sock.sendall(head)
        self.sock.setblocking(False)
        self.drip = drip
        self.answer = b""
        self.closed_after: float | None = None

    def step(self) -> None:
        if self.closed_after is not None:
            return
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed_after = time.monotonic() - self.started
                    self.sock.close()
                    return
                self.answer += chunk
        except BlockingIOError:
            pass
        except OSError:  # reset: closed as well
            self.closed_after = time.monotonic() - self.started
            self.sock.close()
            return
        try:
            self.sock.send(self.drip[:1])
        except BlockingIOError:
            pass
        except OSError:
            self.closed_after = time.monotonic() - self.started
            self.sock.close()


def trickle(clients: list[SlowClient]) -> None:
    deadline = time.monotonic() + TRICKLE_FOR
    while time.monotonic() < deadline and any(c.closed_after is None for c in clients):
        for c in clients:
            c.step()
        time.sleep(0.2)
    for c in clients:
        if c.closed_after is None:
            c.sock.close()


def test_slowloris_headers_and_trickled_bodies_are_cut_off_while_others_are_served(short_timeouts):
    server = short_timeouts
    host = b"Host: 127.0.0.1\r\n"
    slow_headers = [
        SlowClient(server.port, b"POST " + server.predict_path.encode() + b" HTTP/1.1\r\n" + host, b"X-Slow: 1\r\n")
        for _ in range(10)
    ]
    head = b"POST %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    slow_bodies = [SlowClient(server.port, head % (server.predict_path.encode(), host), b" ") for _ in range(10)]
    errors: list[str] = []
    served = []

    def ordinary() -> None:  # keep-alive client, as a real one: each request answered in time, none refused
        with httpx.Client(base_url=server.url, timeout=5) as client:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    response = client.get(server.ready_path)
                    served.append(response.status_code)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                time.sleep(0.05)

    others = threading.Thread(target=ordinary)
    others.start()
    trickle(slow_headers + slow_bodies)
    others.join()

    assert errors == [] and len(served) > 10, errors
    assert set(served) <= {200, 404}, served  # 404: the model server has no model yet, and says so
    for client in slow_headers + slow_bodies:
        assert client.closed_after is not None, "a slow client was never cut off"
        assert client.closed_after < CUT_OFF_WITHIN, client.closed_after
        assert client.answer.startswith(b"HTTP/1.1 408 "), client.answer
        assert b"connection: close" in client.answer.lower()
        assert b'"error"' in client.answer
    worst_headers = max(c.closed_after or 0.0 for c in slow_headers)
    worst_body = max(c.closed_after or 0.0 for c in slow_bodies)
    print(f"time to close a slow client (1 s timeouts): headers max {worst_headers:.2f}s, body max {worst_body:.2f}s")


def test_an_upload_that_keeps_the_minimum_rate_is_not_cut_off(short_timeouts):
    """3 s of body at ~5 kB/s (the rate floor is 1 kB/s, the timeout 1 s): answered, not 408."""
    server = short_timeouts
    body = b'{"image_b64": "' + b"A" * 15_000 + b'"}'

    def chunks():
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]
            time.sleep(0.2)

    response = httpx.post(
        server.url + server.predict_path,
        content=chunks(),
        headers={"content-type": "application/json", "content-length": str(len(body))},
        timeout=30,
    )
    assert response.status_code != 408, response.text
    assert response.json()["error"]  # the servers' own answer to this body: bad image / no model


def test_idle_keep_alive_connections_are_closed(short_timeouts):
    server = short_timeouts
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % server.ready_path.encode())
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 ")
        started = time.monotonic()
        while sock.recv(65536):  # the rest of the answer, then EOF when the server closes
            pass
        idle = time.monotonic() - started
    assert idle < 4.0, idle  # keepalive_timeout=1; uvicorn's own default would be 5 s


def test_a_client_address_over_its_connection_cap_is_refused_and_may_connect_again(tmp_path):
    server = start("gateway", tmp_path, "/healthz", max_connections_per_client=2)
    try:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        time.sleep(0.3)  # both are accepted before the third arrives
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        assert b"retry-after: 1" in answer.lower() and b"too_many_connections" in answer
        held.pop().close()
        time.sleep(0.3)
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        for sock in held:
            sock.close()
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def test_connections_past_the_total_are_refused_with_503(tmp_path):
    server = start("gateway", tmp_path, "/healthz", max_connections=2, max_connections_per_client=0)
    try:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # read and discarded
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in answer.lower() and b'"code": "server_busy"' in answer, answer
        for sock in held:
            sock.close()
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def test_headers_past_the_size_limit_are_431(tmp_path):
    server = start("gateway", tmp_path, "/healthz", max_header_bytes=4096)
    try:
        response = httpx.get(server.url + "/healthz", headers={"X-Big": "x" * 8000}, timeout=10)
        assert response.status_code == 431 and response.json()["error"]["code"] == "headers_too_large"
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_the_limits_are_settings_with_defaults_and_reach_uvicorn():
    from pizzactl.config import load_settings
    from pizzactl.errors import tf_serving_body
    from pizzactl.serving.connections import ConnectionLimits, default_max_connections, uvicorn_config

    limits = ConnectionLimits.from_settings(load_settings(environ={}))
    assert limits == ConnectionLimits()  # the settings' defaults are the class's
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (20.0, 20.0, 75.0)
    assert 16 <= limits.total == default_max_connections() <= 4096
    custom = ConnectionLimits.from_settings(load_settings(environ={"PIZZACTL_KEEPALIVE_TIMEOUT": "7"}))
    config = uvicorn_config(object(), "127.0.0.1", 1, "info", access_log=False, limits=custom, body=tf_serving_body)
    assert config.timeout_keep_alive == 7.0 and config.ws == "none"
