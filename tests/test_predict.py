"""`pizzactl predict`'s client side: sources, endpoint resolution, wire format, errors, output.

The gateway here is a stand-in HTTP server at the client's boundary (it records what the
client sends and answers like the gateway's documented API); the real gateway is exercised
end to end in test_deploy_local.py.
"""

from __future__ import annotations

import csv
import email
import email.policy
import http.server
import json
import socket
import threading
from types import SimpleNamespace

import pytest

from pizzactl.config import load_settings
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.state import DeployState
from pizzactl.errors import EXIT_FAILURE, EXIT_USAGE, EXIT_USER, EndpointError, NotDeployedError, UsageError
from pizzactl.predict import expand_sources, normalize_endpoint, predict, resolve_endpoint

from support.cli import invoke, overrides
from support.serving_fixtures import LocalHTTPServer, send_json


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGateway(LocalHTTPServer):
    """Answers POST /predict like the gateway: multipart `file` or JSON {"url"} -> label,
    probability, model_version and probabilities (docs/serve.md, the gateway's PredictResponse).

    An upload whose bytes start with b"BAD" gets the gateway's 422 error body. When
    `rendezvous` is set, each request waits (up to 5 s) until that many requests are in flight,
    which only a client that really sends them concurrently can satisfy.
    """

    def __init__(self, rendezvous: int = 0):
        self.received: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Condition()
        self.rendezvous = rendezvous
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(
                    200,
                    {"status": "ready"}
                    if self.path == "/readyz"
                    else {"error": {"code": "not_found", "message": "no"}},
                )

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with gateway.lock:
                    gateway.in_flight += 1
                    gateway.max_in_flight = max(gateway.max_in_flight, gateway.in_flight)
                    gateway.lock.notify_all()
                    if gateway.rendezvous:
                        gateway.lock.wait_for(lambda: gateway.max_in_flight >= gateway.rendezvous, timeout=5)
                try:
                    self._answer(body)
                finally:
                    with gateway.lock:
                        gateway.in_flight -= 1

            def _answer(self, body: bytes):
                if self.path != "/predict":
                    return self._send(404, {"error": {"code": "not_found", "message": f"No route POST {self.path}"}})
                ctype = self.headers.get("content-type", "")
                if ctype.startswith("multipart/form-data"):
                    msg = email.message_from_bytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP
                    )
                    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                    data = parts["file"].get_payload(decode=True)
                    gateway.received.append({"kind": "file", "filename": parts["file"].get_filename(), "data": data})
                    if data.startswith(b"BAD"):
                        return self._send(
                            422,
                            {
                                "error": {
                                    "code": "invalid_image",
                                    "message": "The image is truncated or corrupt.",
                                    "hint": "Check it.",
                                }
                            },
                        )
                    p = (len(data) % 100) / 100
                else:
                    payload = json.loads(body)
                    gateway.received.append({"kind": "json", "payload": payload})
                    p = 0.9
                self._send(
                    200,
                    {
                        "label": "pizza" if p >= 0.5 else "not_pizza",
                        "probability": p,
                        "model_version": 7,
                        "probabilities": {"not_pizza": 1 - p, "pizza": p},
                    },
                )

            def _send(self, status: int, obj: dict):
                send_json(self, status, obj)

        super().__init__(Handler)


@pytest.fixture
def gateway():
    gw = FakeGateway()
    yield gw
    gw.close()


@pytest.fixture
def images(tmp_path) -> SimpleNamespace:
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    files = {
        "a.jpg": b"\xff\xd8a" * 10,
        "sub/b.PNG": b"\x89PNGb" * 7,
        "sub/deeper/c.jpeg": b"\xff\xd8c" * 13,
        "sub/readme.txt": b"not an image",
        ".hidden/d.jpg": b"hidden",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return SimpleNamespace(root=root, images=[root / "a.jpg", root / "sub/b.PNG", root / "sub/deeper/c.jpeg"])


def settings_for(tmp_path, **flags):
    env = {"PIZZACTL_STATE_DIR": str(tmp_path / "state"), "PIZZACTL_PORT": str(free_port())}
    return load_settings(flags, environ=env, cwd=tmp_path)


# --- sources ---------------------------------------------------------------------------------


def test_a_directory_expands_to_its_images_recursively_sorted_without_hidden_or_other_files(images):
    items = expand_sources([str(images.root)])
    assert [i.path for i in items] == images.images
    assert all(i.kind == "file" for i in items)


def test_urls_stay_urls_and_missing_paths_are_reported_not_dropped(images):
    items = expand_sources(["https://example.com/p.jpg", str(images.images[0]), "nope.jpg"])
    assert [i.kind for i in items] == ["url", "file", "missing"]
    assert items[0].text == "https://example.com/p.jpg"


# --- endpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("127.0.0.1:9696", "http://127.0.0.1:9696"),
        ("http://localhost:9696/", "http://localhost:9696"),
        ("https://pizza.example.com/predict", "https://pizza.example.com"),
    ],
)
def test_endpoint_is_normalized_to_the_gateway_base_url(given, expected):
    assert normalize_endpoint(given) == expected


@pytest.mark.parametrize("bad", ["ftp://example.com", "http://host:notaport", "http://"])
def test_an_endpoint_that_is_not_an_http_url_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        normalize_endpoint(bad)


def test_the_endpoint_flag_beats_the_deployed_url_which_beats_the_endpoint_setting(tmp_path):
    env_setting = load_settings(
        {},
        environ={"PIZZACTL_STATE_DIR": str(tmp_path / "state"), "PIZZACTL_ENDPOINT": "http://from-env:1"},
        cwd=tmp_path,
    )
    assert resolve_endpoint(env_setting) == "http://from-env:1"
    state_mod.save(env_setting, DeployState(target="local", url="http://deployed:2"))
    assert resolve_endpoint(env_setting) == "http://deployed:2"
    flag = load_settings(
        {"endpoint": "http://from-flag:3"}, environ={"PIZZACTL_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path
    )
    assert resolve_endpoint(flag) == "http://from-flag:3"


def test_nothing_deployed_and_no_endpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(NotDeployedError) as info:
        resolve_endpoint(settings_for(tmp_path))
    assert "pizzactl deploy" in info.value.hint and "--endpoint" in info.value.hint


# --- talking to the gateway ------------------------------------------------------------------


def test_files_are_uploaded_as_multipart_file_and_urls_sent_as_json(gateway, images, tmp_path):
    url = "https://example.com/margherita.jpg"
    results = predict(settings_for(tmp_path, endpoint=gateway.url), [str(images.images[0]), url], progress=False)
    uploads = [r for r in gateway.received if r["kind"] == "file"]
    jsons = [r for r in gateway.received if r["kind"] == "json"]
    assert uploads == [{"kind": "file", "filename": "a.jpg", "data": images.images[0].read_bytes()}]
    assert jsons == [{"kind": "json", "payload": {"url": url}}]
    assert results[0] == {
        "source": str(images.images[0]),
        "label": "pizza" if len(uploads[0]["data"]) % 100 >= 50 else "not_pizza",
        "probability": (len(uploads[0]["data"]) % 100) / 100,
        "model_version": 7,
        "probabilities": {
            "not_pizza": 1 - (len(uploads[0]["data"]) % 100) / 100,
            "pizza": (len(uploads[0]["data"]) % 100) / 100,
        },
    }
    assert results[1]["source"] == url and results[1]["label"] == "pizza"


def test_requests_really_run_concurrently_and_never_more_than_asked(tmp_path, images):
    gw = FakeGateway(rendezvous=3)
    try:
        many = [str(images.images[i % 3]) for i in range(9)]
        results = predict(settings_for(tmp_path, endpoint=gw.url), many, concurrency=3, progress=False)
    finally:
        gw.close()
    assert len(results) == 9 and all("label" in r for r in results)
    assert gw.max_in_flight == 3


def test_results_keep_the_order_of_the_sources(gateway, images, tmp_path):
    sources = [str(p) for p in reversed(images.images)] * 3
    results = predict(settings_for(tmp_path, endpoint=gateway.url), sources, concurrency=4, progress=False)
    assert [r["source"] for r in results] == sources


def test_a_gateway_error_becomes_that_sources_error_with_code_and_message(gateway, tmp_path, images):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"BAD image")
    results = predict(settings_for(tmp_path, endpoint=gateway.url), [str(bad), str(images.images[0])], progress=False)
    assert results[0]["source"] == str(bad) and "label" not in results[0]
    assert (
        "truncated or corrupt" in results[0]["error"]
        and "invalid_image" in results[0]["error"]
        and "422" in results[0]["error"]
    )
    assert results[1]["label"] in ("pizza", "not_pizza")


def test_an_unreachable_endpoint_is_one_clear_error_not_one_per_image(tmp_path, images):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointError) as info:
        predict(settings_for(tmp_path, endpoint=dead), [str(p) for p in images.images], progress=False)
    assert dead in info.value.message
    assert "--endpoint" in info.value.hint and "pizzactl status" in info.value.hint


def test_a_gateway_that_hangs_up_mid_request_is_that_images_error_not_unreachable(tmp_path, images):
    """requests calls both a refused connection and a dropped one ConnectionError; only the first
    means the gateway cannot be reached (pizzactl.httpclient.connect_failed tells them apart)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()  # no answer at all

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        results = predict(settings_for(tmp_path, endpoint=endpoint), [str(images.images[0])], progress=False)
    finally:
        listener.close()
    assert len(results) == 1 and "label" not in results[0]
    assert "cannot reach" not in results[0]["error"] and "ConnectionError" in results[0]["error"]


def test_csv_has_one_row_per_source_with_errors_in_their_own_column(gateway, tmp_path, images):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"BAD")
    out = tmp_path / "out" / "results.csv"
    predict(
        settings_for(tmp_path, endpoint=gateway.url), [str(images.images[0]), str(bad)], csv_path=out, progress=False
    )
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == [str(images.images[0]), str(bad)]
    assert rows[0]["label"] and rows[0]["model_version"] == "7" and not rows[0]["error"]
    assert float(rows[0]["P(pizza)"]) + float(rows[0]["P(not_pizza)"]) == pytest.approx(1.0)
    assert not rows[1]["P(pizza)"]
    assert not rows[1]["label"] and "corrupt" in rows[1]["error"]


# --- through the CLI -------------------------------------------------------------------------


def cli(tmp_path, *args):
    """`pizzactl predict ARGS` in this process, with no PIZZACTL_* setting but its own state dir and port."""
    env = {"PIZZACTL_STATE_DIR": str(tmp_path / "state"), "PIZZACTL_PORT": str(free_port())}
    return invoke("predict", *args, env=overrides(env), cwd=tmp_path)


def test_cli_json_prints_an_array_of_objects_and_exits_1_if_any_source_failed(gateway, tmp_path, images):
    proc = cli(tmp_path, "--endpoint", gateway.url, "--json", str(images.root), "missing.jpg")
    assert proc.returncode == EXIT_FAILURE, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["source"] for r in results] == [str(p) for p in images.images] + ["missing.jpg"]
    keys = {"schema", "source", "label", "probability", "model_version", "probabilities"}
    assert all(set(r) == keys and r["schema"] == 1 for r in results[:3])  # schema: the version of the shape
    assert set(results[3]) == {"schema", "source", "error"}


def test_cli_table_and_summary_for_a_directory(gateway, tmp_path, images):
    proc = cli(tmp_path, "--endpoint", gateway.url, str(images.root))
    assert proc.returncode == 0, proc.stderr
    assert "3 images:" in proc.stdout and "a.jpg" in proc.stdout


def test_cli_unreachable_endpoint_exits_3_with_a_hint(tmp_path, images):
    proc = cli(tmp_path, "--endpoint", f"http://127.0.0.1:{free_port()}", str(images.images[0]))
    assert proc.returncode == EXIT_USER
    assert "Cannot reach the gateway" in proc.stderr and "Hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_malformed_endpoint_is_a_usage_error(tmp_path, images):
    proc = cli(tmp_path, "--endpoint", "http://host:port", str(images.images[0]))
    assert proc.returncode == EXIT_USAGE
    assert "not an http(s) URL" in proc.stderr


def test_cli_nothing_deployed_exits_3_and_names_deploy_and_endpoint(tmp_path, images):
    proc = cli(tmp_path, str(images.images[0]))
    assert proc.returncode == EXIT_USER
    text = " ".join(proc.stderr.split())
    assert "pizzactl deploy" in text and "--endpoint" in text
