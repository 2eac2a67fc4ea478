"""TF Serving's gRPC API on the model server's gRPC port, called by TF Serving's own Python client.

The client (`tensorflow-serving-api` 2.21, the dev extra) runs in a subprocess
(tests/support/tf_serving_client.py): it is the code a user writes against `tensorflow/serving`
on port 8500, so the messages, field numbers, method paths and the Any-packed SignatureDefMap
must be TF Serving's for it to work.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pizzactl.errors import QueueFullError
from pizzactl.model.store import list_versions
from pizzactl.serving.gateway import create_app
from pizzactl.serving.grpc_client import GrpcModelClient

from support.photos import photo_like_jpeg
from support.processes import free_port
from support.serving_fixtures import ModelServerProcess, UvicornThread

CLIENT = Path(__file__).parent / "support" / "tf_serving_client.py"
CONFIG = """
model_config_list {
  config {
    name: "pizza"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""


@pytest.fixture(scope="module")
def two_version_grpc_server(serving_models, tmp_path_factory):
    """Versions 1 and 2 of the tiny model with labels stable/canary, REST and gRPC ports."""
    root = tmp_path_factory.mktemp("tfs_grpc")
    source = list_versions(serving_models)[-1][1]
    for version in (1, 2):
        shutil.copytree(source, root / "models" / "pizza" / str(version))
    (root / "models.config").write_text(CONFIG)
    port = free_port()
    args = ("--grpc-port", str(port), "--model-config-file", str(root / "models.config"))
    server = ModelServerProcess(root / "models", free_port(), args=args, log_path=root / "modelserver.log").start()
    try:
        server.wait_available("1")
        server.wait_available("2")
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.slow
def test_tf_servings_own_client_predicts_reads_metadata_and_status_and_gets_its_error_codes(
    two_version_grpc_server, shared_photos
):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    server, address = two_version_grpc_server
    photos = [shared_photos["pizza"][0], shared_photos["not_pizza"][0]]
    run = subprocess.run(
        [sys.executable, str(CLIENT), address, *map(str, photos)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.splitlines()[-1])

    rest = httpx.post(
        server.url + "/v1/models/pizza:predict",
        json={"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in photos]},
        timeout=60,
    ).json()["predictions"]
    latest = got["latest"]
    assert latest["code"] == "OK" and latest["version"] == 2 and latest["signature"] == "serving_default"
    assert latest["outputs"]["label"] == [p["label"] for p in rest]
    assert latest["outputs"]["probability"] == pytest.approx([p["probability"] for p in rest], abs=1e-6)
    assert len(latest["outputs"]["probabilities"]) == 2 and len(latest["outputs"]["probabilities"][0]) == 2
    assert (got["version_1"]["code"], got["version_1"]["version"]) == ("OK", 1)
    assert (got["label_canary"]["code"], got["label_canary"]["version"]) == ("OK", 2)
    assert (got["label_stable"]["code"], got["label_stable"]["version"]) == ("OK", 1)
    assert got["label_stable"]["outputs"]["label"] == latest["outputs"]["label"]  # copies of one model
    assert got["pixels"]["code"] == "OK" and got["pixels"]["signature"] == "serving_pixels"
    assert len(got["pixels"]["outputs"]["label"]) == 1

    assert got["metadata"]["code"] == "OK" and got["metadata"]["version"] == 2
    signatures = got["metadata"]["signatures"]
    assert signatures["serving_default"]["inputs"] == {"image_bytes": "string"}
    assert signatures["serving_default"]["outputs"] == ["label", "probabilities", "probability"]
    assert signatures["serving_pixels"]["inputs"] == {"pixels": "uint8"}
    assert got["status"]["versions"] == [[2, "AVAILABLE", 0], [1, "AVAILABLE", 0]]
    assert got["status_canary"]["versions"] == [2]
    assert got["status_unknown_model"]["code"] == "NOT_FOUND"

    codes = {key: got[key]["code"] for key in got}
    assert codes["wrong_dtype"] == "INVALID_ARGUMENT", got["wrong_dtype"]
    assert codes["wrong_input"] == "INVALID_ARGUMENT"
    assert codes["small_pixels"] == "INVALID_ARGUMENT"
    assert codes["unknown_model"] == "NOT_FOUND"
    assert codes["unknown_version"] == "NOT_FOUND"
    assert codes["unknown_label"] == "NOT_FOUND"
    assert codes["unknown_signature"] == "FAILED_PRECONDITION"  # TF Serving's predict_util.cc
    assert codes["oversized"] == "RESOURCE_EXHAUSTED"
    assert codes["metadata_unknown_version"] == "NOT_FOUND"
    assert codes["after"] == "OK"
    assert server.proc is not None and server.proc.poll() is None


# --- the gateway over gRPC (model_protocol grpc: serving/grpc_client.py) -----------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.slow
def test_the_gateway_over_grpc_answers_as_over_rest_and_routes_the_canary(two_version_grpc_server, shared_photos):
    server, address = two_version_grpc_server
    photo = {"image_b64": _b64(shared_photos["pizza"][0].read_bytes())}
    grpc_app = create_app(server.url, model_protocol="grpc", model_grpc_url=address)
    with UvicornThread(create_app(server.url)) as rest_gw, UvicornThread(grpc_app) as grpc_gw:
        over_rest = httpx.post(rest_gw.url + "/predict", json=photo, timeout=60).json()
        reply = httpx.post(grpc_gw.url + "/predict", json=photo, timeout=60)
        assert reply.status_code == 200, reply.text
        over_grpc = reply.json()
        assert over_grpc["label"] == over_rest["label"] and over_grpc["model_version"] == 2
        assert over_grpc["probability"] == pytest.approx(over_rest["probability"], abs=1e-6)
        # the class names come from pizzactl's card (GetModelMetadata's "pizzactl" field)
        assert set(over_grpc["probabilities"]) == set(over_rest["probabilities"]) == {"not_pizza", "pizza"}
        ready = httpx.get(grpc_gw.url + "/readyz").json()
        assert ready == httpx.get(rest_gw.url + "/readyz").json()
        bad = httpx.post(grpc_gw.url + "/predict", json={"image_b64": _b64(b"not an image")})
        assert bad.status_code == 415

    canary = create_app(server.url, model_protocol="grpc", model_grpc_url=address, canary_percent=100)
    stable = create_app(
        server.url, model_protocol="grpc", model_grpc_url=address, canary_percent=100, stable_version="1"
    )
    missing = create_app(
        server.url, model_protocol="grpc", model_grpc_url=address, canary_percent=100, canary_version="7"
    )
    with UvicornThread(canary) as to_canary, UvicornThread(stable) as to_2, UvicornThread(missing) as to_7:
        assert httpx.post(to_canary.url + "/predict", json=photo, timeout=60).json()["model_version"] == 2
        assert httpx.post(to_2.url + "/predict", json=photo, timeout=60).json()["model_version"] == 2
        # version 7 is not loaded (NOT_FOUND): the request falls back to stable (version 1)
        fallback = httpx.post(to_7.url + "/predict", json=photo, timeout=60)
        assert fallback.status_code == 200 and fallback.json()["model_version"] == 1


def test_the_gateway_over_grpc_to_a_dead_port_is_a_quick_503_with_retry_after():
    app = create_app(
        f"http://127.0.0.1:{free_port()}",
        model_protocol="grpc",
        model_grpc_url=f"127.0.0.1:{free_port()}",
        model_timeout=2.0,
    )
    with UvicornThread(app) as gw:
        photo = {"image_b64": _b64(photo_like_jpeg())}
        down = httpx.post(gw.url + "/predict", json=photo, timeout=30)
        assert down.status_code == 503 and down.json()["error"]["code"] == "model_unavailable"
        assert down.headers["retry-after"].isdigit()
        assert httpx.get(gw.url + "/readyz", timeout=30).status_code == 503


@pytest.mark.slow
def test_a_full_queue_is_resource_exhausted_with_retry_after_and_the_gateways_client_passes_it_on(
    serving_models, tmp_path, monkeypatch
):
    """One request of many images holds the queue (bound 1); the next is refused at once, as over REST."""
    monkeypatch.setenv("PIZZACTL_MAX_QUEUE", "1")
    port = free_port()
    args = ("--grpc-port", str(port), "--max-batch-size", "1")
    server = ModelServerProcess(serving_models, free_port(), args=args, log_path=tmp_path / "modelserver.log").start()
    try:
        server.wait_available()
        client = GrpcModelClient(f"127.0.0.1:{port}", timeout=300)
        photo = photo_like_jpeg(64, 64)

        def queued() -> float:
            text = httpx.get(server.url + "/monitoring/prometheus/metrics", timeout=10).text
            return float(re.search(r"^pizzactl_model_queued_images (\S+)$", text, re.M).group(1))

        async def run() -> QueueFullError:
            first = asyncio.ensure_future(client.predict([photo] * 3000))
            while not first.done() and await asyncio.to_thread(queued) == 0:  # a state, not a sleep
                await asyncio.sleep(0.05)
            assert not first.done(), "the first request ended before it was seen in the queue"
            with pytest.raises(QueueFullError) as caught:
                await client.predict([photo])
            predictions, _ = await first
            assert len(predictions) == 3000
            await client.aclose()
            return caught.value

        refused = asyncio.run(run())
        assert refused.retry_after >= 1 and refused.reason == "model_server_full"
        assert "Queue full" in refused.message
    finally:
        server.stop()
