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


# --- Open Inference Protocol v2 over REST, through tritonclient.http ---------------------------


@pytest.fixture(scope="module")
def triton(model_server):
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(model_server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def _photos(shared_photos) -> list[bytes]:
    return [shared_photos["pizza"][0].read_bytes(), shared_photos["not_pizza"][0].read_bytes()]


def _error_status(call) -> tuple[str, str]:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


@pytest.mark.slow
def test_v2_health_and_metadata_read_by_tritonclient(triton, model_server):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("pizza") and triton.is_model_ready("pizza", "1")
    assert not triton.is_model_ready("margherita") and not triton.is_model_ready("pizza", "999")
    server = triton.get_server_metadata()
    assert server["name"] == "pizzactl" and "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata("pizza")
    assert meta["name"] == "pizza" and meta["versions"] == ["1"]
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert inputs == {"image_bytes": ("BYTES", [-1]), "pixels": ("UINT8", [-1, 64, 64, 3])}
    assert outputs == {"label": ("BYTES", [-1]), "probability": ("FP32", [-1]), "probabilities": ("FP32", [-1, 2])}
    assert triton.get_model_metadata("pizza", "1") == meta
    assert _error_status(lambda: triton.get_model_metadata("margherita"))[0] == "404"
    assert _error_status(lambda: triton.get_model_metadata("pizza", "999"))[0] == "404"
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/pizza/ready"):
        assert httpx.get(model_server.url + path).status_code == 200


@pytest.mark.slow
def test_v2_infer_image_bytes_agrees_with_tf_serving_predict(triton, model_server, shared_photos):
    import base64

    import numpy as np
    from tritonclient.http import InferInput, InferRequestedOutput

    photos = _photos(shared_photos)
    tf_serving = httpx.post(
        model_server.url + "/v1/models/pizza:predict",
        json={"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]},
    ).json()["predictions"]
    image = InferInput("image_bytes", [2], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_))  # binary_data extension (the default)
    result = triton.infer("pizza", [image])
    assert result.get_response()["model_name"] == "pizza" and result.get_response()["model_version"] == "1"
    assert [x.decode() for x in result.as_numpy("label")] == [p["label"] for p in tf_serving]
    assert result.as_numpy("probability").dtype == np.float32
    np.testing.assert_allclose(result.as_numpy("probability"), [p["probability"] for p in tf_serving], atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("probabilities"), [p["probabilities"] for p in tf_serving], atol=1e-6)
    pinned = triton.infer(
        "pizza", [image], model_version="1", outputs=[InferRequestedOutput("probability", binary_data=False)]
    )
    assert [o["name"] for o in pinned.get_response()["outputs"]] == ["probability"]
    assert "data" in pinned.get_response()["outputs"][0]  # JSON, as asked
    np.testing.assert_allclose(pinned.as_numpy("probability"), result.as_numpy("probability"), atol=1e-6)


@pytest.mark.slow
def test_v2_infer_pixels_in_json_tensors(triton, model_server):
    import numpy as np
    from tritonclient.http import InferInput, InferRequestedOutput

    red = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    red[..., 0] = 220
    tf_serving = httpx.post(
        model_server.url + "/v1/models/pizza:predict",
        json={"signature_name": "serving_pixels", "instances": red.tolist()},
    ).json()["predictions"]
    pixels = InferInput("pixels", list(red.shape), "UINT8")
    pixels.set_data_from_numpy(red, binary_data=False)
    wanted = [InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
    result = triton.infer("pizza", [pixels], outputs=wanted)
    assert {o["name"] for o in result.get_response()["outputs"]} == {"label", "probabilities"}
    assert result.as_numpy("probabilities").shape == (2, 2)
    np.testing.assert_allclose(result.as_numpy("probabilities"), [p["probabilities"] for p in tf_serving], atol=1e-6)


@pytest.mark.slow
def test_v2_bad_requests_get_the_protocols_4xx_and_the_server_stays_up(triton, model_server, shared_photos):
    import numpy as np
    from tritonclient.http import InferInput, InferRequestedOutput

    photo = _photos(shared_photos)[0]

    def image(datatype="BYTES", name="image_bytes", shape=(1,)):
        tensor = InferInput(name, list(shape), datatype)
        if datatype == "BYTES":
            tensor.set_data_from_numpy(np.array([photo] * int(np.prod(shape)), dtype=np.object_).reshape(shape))
        else:
            tensor.set_data_from_numpy(np.zeros(shape, dtype=np.uint8 if datatype == "UINT8" else np.float32))
        return tensor

    cases = {
        "wrong dtype": (lambda: triton.infer("pizza", [image("FP32")]), "400", "FP32"),
        "wrong rank": (lambda: triton.infer("pizza", [image(shape=(1, 1))]), "400", "shape"),
        "wrong shape": (
            lambda: triton.infer("pizza", [image("UINT8", "pixels", (1, 3, 3, 3))]),
            "400",
            "shape",
        ),
        "unknown input": (lambda: triton.infer("pizza", [image(name="photo")]), "400", "photo"),
        "unknown output": (
            lambda: triton.infer("pizza", [image()], outputs=[InferRequestedOutput("calories")]),
            "400",
            "calories",
        ),
        "unknown model": (lambda: triton.infer("margherita", [image()]), "404", "margherita"),
        "unknown version": (lambda: triton.infer("pizza", [image()], model_version="999"), "404", "999"),
        "not an image": (
            lambda: triton.infer("pizza", [_bytes_input(b"definitely not an image")]),
            "400",
            "",
        ),
    }
    for what, (call, status, fragment) in cases.items():
        got, message = _error_status(call)
        assert (got, fragment in message) == (status, True), (what, got, message)
    for body, fragment in (
        (b"{not json", "JSON"),
        (b"[1]", "object"),
        (b'{"inputs": []}', "inputs"),
        (b'{"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}', "2"),
        (b'{"inputs": [{"name": "pixels", "shape": [1,64,64,3], "datatype": "UINT8", "data": [1]}]}', "12288"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (
            b'{"inputs": [{"name": "pixels", "shape": [1], "datatype": "UINT8", "data": '
            + b"[" * 900
            + b"1"
            + b"]" * 900
            + b"}]}",
            "nested",
        ),
    ):
        response = httpx.post(model_server.url + "/v2/models/pizza/infer", content=body)
        assert response.status_code == 400 and set(response.json()) == {"error"}, response.text
        assert fragment in response.json()["error"], response.text
    oversized = httpx.post(model_server.url + "/v2/models/pizza/infer", content=b" " * (32 * 1024 * 1024 + 1))
    assert oversized.status_code == 413 and set(oversized.json()) == {"error"}
    assert triton.is_server_ready() and triton.is_model_ready("pizza")


def _bytes_input(data: bytes):
    import numpy as np
    from tritonclient.http import InferInput

    tensor = InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor


@pytest.mark.slow
def test_without_a_model_the_server_is_live_and_not_ready_in_every_protocol(tmp_path):
    import time

    from support.processes import free_port
    from support.serving_fixtures import ModelServerProcess

    http = pytest.importorskip("tritonclient.http")
    server = ModelServerProcess(tmp_path / "models", free_port()).start()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                live = httpx.get(server.url + "/", timeout=2)
                break
            except httpx.HTTPError:
                assert server.proc is not None and server.proc.poll() is None, server.log_path
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert live.json() == {"status": "alive"}
        assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
        ready = httpx.get(server.url + "/v2/health/ready")
        assert (ready.status_code, ready.json()) == (400, {"ready": False})
        client = http.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("pizza")
        finally:
            client.close()
        status = httpx.get(server.url + "/v1/models/pizza")  # TF Serving's 404, naming the folder it watches
        assert status.status_code == 404 and "pizzactl export" in status.json()["error"]
    finally:
        server.stop()


# --- Open Inference Protocol v2 over gRPC, through tritonclient.grpc -----------------------------


@pytest.mark.slow
def test_v2_grpc_health_metadata_and_infer_read_by_tritonclient(grpc_model_server, shared_photos):
    import base64

    import numpy as np

    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    rest, address = grpc_model_server
    client = grpcclient.InferenceServerClient(address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("pizza") and client.is_model_ready("pizza", "1")
        assert not client.is_model_ready("margherita")
        assert client.get_server_metadata().name == "pizzactl"
        meta = client.get_model_metadata("pizza", as_json=True)
        assert meta["versions"] == ["1"]
        assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
            "image_bytes": ("BYTES", ["-1"]),  # int64 in JSON is a string (protobuf's JSON mapping)
            "pixels": ("UINT8", ["-1", "64", "64", "3"]),
        }
        photos = _photos(shared_photos)
        tf_serving = httpx.post(
            rest.url + "/v1/models/pizza:predict",
            json={"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]},
        ).json()["predictions"]
        image = grpcclient.InferInput("image_bytes", [2], "BYTES")
        image.set_data_from_numpy(np.array(photos, dtype=np.object_))
        result = client.infer("pizza", [image])
        assert [x.decode() for x in result.as_numpy("label")] == [p["label"] for p in tf_serving]
        np.testing.assert_allclose(result.as_numpy("probability"), [p["probability"] for p in tf_serving], atol=1e-6)
        assert result.as_numpy("probabilities").shape == (2, 2)

        def code(call):
            with pytest.raises(InferenceServerException) as caught:
                call()
            return caught.value.status()

        wrong = grpcclient.InferInput("image_bytes", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        assert code(lambda: client.infer("pizza", [wrong])) == "StatusCode.INVALID_ARGUMENT"
        small = grpcclient.InferInput("pixels", [1, 3, 3, 3], "UINT8")
        small.set_data_from_numpy(np.zeros((1, 3, 3, 3), dtype=np.uint8))
        assert code(lambda: client.infer("pizza", [small])) == "StatusCode.INVALID_ARGUMENT"
        assert code(lambda: client.infer("margherita", [image])) == "StatusCode.NOT_FOUND"
        assert code(lambda: client.infer("pizza", [image], model_version="999")) == "StatusCode.NOT_FOUND"
        assert code(lambda: client.get_model_metadata("margherita")) == "StatusCode.NOT_FOUND"
        huge = grpcclient.InferInput("image_bytes", [1], "BYTES")
        huge.set_data_from_numpy(np.array([b"x" * (32 * 1024 * 1024 + 1)], dtype=np.object_))
        assert code(lambda: client.infer("pizza", [huge])) == "StatusCode.RESOURCE_EXHAUSTED"
        assert client.is_server_ready()
    finally:
        client.close()


# --- grpc.health.v1.Health: what Kubernetes' gRPC probes and grpc_health_probe ask ----------------


def _health(address: str, service: str = "") -> tuple[str, str]:
    """(status name, gRPC code name) of Health/Check, as the kubelet's gRPC probe calls it."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as exc:
            return "", exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status), "OK"


@pytest.mark.slow
def test_grpc_health_is_serving_with_a_model_for_the_server_and_its_services(grpc_model_server):
    _, address = grpc_model_server
    assert _health(address) == ("SERVING", "OK")
    assert _health(address, "inference.GRPCInferenceService") == ("SERVING", "OK")
    assert _health(address, "margherita.Service") == ("", "NOT_FOUND")
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:  # Watch: the current status first
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()


@pytest.mark.slow
def test_grpc_health_turns_serving_when_the_first_version_is_loaded(serving_models, tmp_path):
    import shutil

    from support.processes import free_port, wait_until
    from support.serving_fixtures import ModelServerProcess

    port = free_port()
    models = tmp_path / "models"
    (models / "pizza").mkdir(parents=True)
    server = ModelServerProcess(models, free_port(), args=("--grpc-port", str(port))).start()
    address = f"127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _health(address)[1] == "OK", timeout=120), server.log_path
        assert _health(address) == ("NOT_SERVING", "OK")  # live, nothing to serve: not ready
        version = next(p for p in (serving_models / "pizza").iterdir() if p.name.isdigit())
        shutil.copytree(version, models / "pizza" / ".incoming")
        (models / "pizza" / ".incoming").rename(models / "pizza" / version.name)
        server.wait_available()
        assert _health(address) == ("SERVING", "OK")
    finally:
        server.stop()
