"""The model server speaks KServe's v1 health and the Open Inference Protocol v2 over REST.

KServe's v1 client (`kserve.InferenceRESTClient`, 0.21) is not installed here: `pip install
kserve` downgrades protobuf 7 -> 6 and psutil 7 -> 5.9 under TensorFlow 2.21. Its v1 calls are
followed as its source (kserve/inference_client.py) makes them: `is_server_live` GETs `/` and
reads `status == "alive"`; `is_model_ready` GETs `/v1/models/<name>` and reads `ready` (503 is
False). The v2 tests use tritonclient.http, the client Triton users have.
"""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.slow
def test_kserve_v1_is_server_live_and_is_model_ready(model_server):
    live = httpx.get(model_server.url + "/")
    assert live.status_code == 200 and live.json()["status"].lower() == "alive"
    status = httpx.get(model_server.url + "/v1/models/pizza")
    assert status.status_code == 200
    body = status.json()
    assert body["name"] == "pizza" and body["ready"] is True  # KServe's v1 client
    assert body["model_version_status"][0]["state"] == "AVAILABLE"  # TF Serving's clients and the gateway
    unknown = httpx.get(model_server.url + "/v1/models/margherita")
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
