"""TF Serving's gRPC API on the model server's gRPC port, called by TF Serving's own Python client.

The client (`tensorflow-serving-api` 2.21, the dev extra) runs in a subprocess
(tests/support/tf_serving_client.py): it is the code a user writes against `tensorflow/serving`
on port 8500, so the messages, field numbers, method paths and the Any-packed SignatureDefMap
must be TF Serving's for it to work.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pizzactl.model.store import list_versions

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
    from support.processes import free_port
    from support.serving_fixtures import ModelServerProcess

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
