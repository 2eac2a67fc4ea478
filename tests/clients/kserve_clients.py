"""KServe's own Python clients against a running pizzactl model server; prints what they read as JSON.

Run with .venv-kserve's python (`bash .ci/kserve-venv`: kserve pins protobuf<7 and psutil<6, so it
cannot share .venv with TensorFlow); tests/test_kserve_clients.py starts the server and compares.
Nothing here imports pizzactl or pytest.

    python kserve_clients.py REST_URL GRPC_HOST:PORT PHOTO [PHOTO ...]
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb


def _http_error(exc: httpx.HTTPStatusError) -> dict[str, Any]:
    return {"status": exc.response.status_code, "body": exc.response.json()}


def _images(photos: list[bytes]) -> InferInput:
    tensor = InferInput("image_bytes", [len(photos)], "BYTES")
    tensor.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    return tensor


def _outputs(response: Any) -> dict[str, Any]:
    out = {}
    for output in response.outputs:
        values = output.as_numpy()
        out[output.name] = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
    return out


async def v1_rest(url: str, photos: list[bytes]) -> dict[str, Any]:
    async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=60)) as client:
        got: dict[str, Any] = {
            "is_server_live": await client.is_server_live(url),
            "is_model_ready": await client.is_model_ready(url, "pizza"),
        }
        try:
            await client.is_model_ready(url, "margherita")
        except httpx.HTTPStatusError as exc:
            got["unknown_model"] = _http_error(exc)
        instances = [{"b64": base64.b64encode(p).decode()} for p in photos]
        got["predictions"] = (await client.infer(url, {"instances": instances}, model_name="pizza"))["predictions"]
        try:
            await client.infer(url, {"instances": [{"b64": "bm90IGFuIGltYWdl"}]}, model_name="pizza")
        except httpx.HTTPStatusError as exc:
            got["bad_request"] = _http_error(exc)
    return got


async def v2_rest(url: str, photos: list[bytes]) -> dict[str, Any]:
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        got: dict[str, Any] = {
            "is_server_live": await client.is_server_live(url),
            "is_server_ready": await client.is_server_ready(url),
            "is_model_ready": await client.is_model_ready(url, "pizza"),
            "unknown_model_ready": await client.is_model_ready(url, "margherita"),
        }
        response = await client.infer(url, InferRequest("pizza", [_images(photos)]), model_name="pizza")
        got["outputs"] = _outputs(response)
        wrong = InferInput("image_bytes", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32), binary_data=True)
        try:
            await client.infer(url, InferRequest("pizza", [wrong]), model_name="pizza")
        except httpx.HTTPStatusError as exc:
            got["bad_request"] = _http_error(exc)
    return got


async def v2_grpc(address: str, photos: list[bytes]) -> dict[str, Any]:
    async with InferenceGRPCClient(address, timeout=60, retries=0) as client:
        got: dict[str, Any] = {
            "is_server_live": await client.is_server_live(),
            "is_server_ready": await client.is_server_ready(),
            "is_model_ready": await client.is_model_ready("pizza"),
            "unknown_model_ready": await client.is_model_ready("margherita"),
        }
        # The client has no metadata call: KServe's own generated stub, on the client's channel.
        meta = await client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name="pizza"), timeout=60)
        got["metadata"] = {
            "name": meta.name,
            "versions": list(meta.versions),
            "inputs": {t.name: [t.datatype, list(t.shape)] for t in meta.inputs},
            "outputs": {t.name: [t.datatype, list(t.shape)] for t in meta.outputs},
        }
        response = await client.infer(InferRequest("pizza", [_images(photos)]))
        got["model_version"] = response.model_version
        got["outputs"] = _outputs(response)
        for case, request in (
            ("unknown_model", InferRequest("margherita", [_images(photos[:1])])),
            ("not_an_image", InferRequest("pizza", [_images([b"not an image"])])),
        ):
            try:
                await client.infer(request)
            except grpc.RpcError as exc:
                got[case] = {"code": exc.code().name, "details": exc.details()}
    return got


async def main(url: str, address: str, paths: list[str]) -> dict[str, Any]:
    photos = [Path(p).read_bytes() for p in paths]
    return {
        "versions": {name: version(name) for name in ("kserve", "grpcio", "protobuf")},
        "v1_rest": await v1_rest(url, photos),
        "v2_rest": await v2_rest(url, photos),
        "v2_grpc": await v2_grpc(address, photos),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:])), default=float))
