"""KServe's own clients (`kserve` 0.21: InferenceRESTClient v1 and v2, InferenceGRPCClient) against
the builtin model server: health, metadata, inference and a bad request's error (issue 24).

`kserve` pins protobuf<7 and psutil<6, which would downgrade what TensorFlow uses here, so it
lives in a venv of its own (.venv-kserve, made by `bash .ci/kserve-venv`, which CI runs), and
tests/clients/kserve_clients.py runs there against a server started from this venv. Without that
venv the `kserve` tier is skipped locally and fails in CI (PIZZACTL_REQUIRE_TIERS).
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from support.tiers import require_tier

REPO = Path(__file__).resolve().parents[1]
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
SCRIPT = Path(__file__).parent / "clients" / "kserve_clients.py"


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    if not KSERVE_PYTHON.exists():
        require_tier("kserve", f"no {KSERVE_PYTHON}: run `bash .ci/kserve-venv`")
    return KSERVE_PYTHON


@pytest.mark.slow
def test_kserve_clients_read_health_metadata_and_predictions_and_get_the_protocols_errors(
    kserve_python, grpc_model_server, shared_photos
):
    server, address = grpc_model_server
    paths = [shared_photos["pizza"][0], shared_photos["not_pizza"][0]]
    proc = subprocess.run(
        [str(kserve_python), str(SCRIPT), server.url, address, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["versions"]["kserve"] == "0.21.0"
    expected = httpx.post(
        server.url + "/v1/models/pizza:predict",
        json={"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]},
        timeout=60,
    ).json()["predictions"]
    labels = [p["label"] for p in expected]

    v1 = got["v1_rest"]
    assert v1["is_server_live"] is True and v1["is_model_ready"] is True
    assert v1["unknown_model"]["status"] == 404 and set(v1["unknown_model"]["body"]) == {"error"}
    assert v1["predictions"] == expected
    assert v1["bad_request"]["status"] == 400 and set(v1["bad_request"]["body"]) == {"error"}

    v2 = got["v2_rest"]
    assert (v2["is_server_live"], v2["is_server_ready"], v2["is_model_ready"]) == (True, True, True)
    assert v2["unknown_model_ready"] is False
    # (KServe's InferResponse.from_bytes drops model_version from a REST answer: not asserted here;
    # tests/test_kserve_protocols.py reads it through tritonclient)
    assert v2["outputs"]["label"] == labels
    assert v2["outputs"]["probability"] == pytest.approx([p["probability"] for p in expected], abs=1e-6)
    assert v2["bad_request"]["status"] == 400 and "FP32" in v2["bad_request"]["body"]["error"]

    rpc = got["v2_grpc"]
    assert (rpc["is_server_live"], rpc["is_server_ready"], rpc["is_model_ready"]) == (True, True, True)
    assert rpc["unknown_model_ready"] is False
    assert rpc["metadata"]["name"] == "pizza" and rpc["metadata"]["versions"] == ["1"]
    assert rpc["metadata"]["inputs"]["image_bytes"] == ["BYTES", [-1]]
    assert rpc["metadata"]["outputs"]["probabilities"] == ["FP32", [-1, 2]]
    assert rpc["model_version"] == "1" and rpc["outputs"]["label"] == labels
    np.testing.assert_allclose(rpc["outputs"]["probabilities"], [p["probabilities"] for p in expected], atol=1e-6)
    assert rpc["unknown_model"]["code"] == "NOT_FOUND" and "margherita" in rpc["unknown_model"]["details"]
    assert rpc["not_an_image"]["code"] == "INVALID_ARGUMENT"
