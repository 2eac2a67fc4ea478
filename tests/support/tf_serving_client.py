"""TF Serving's own Python client (`tensorflow-serving-api`, the stubs a user writes against port
8500) calling pizzactl's model server: `python tests/support/tf_serving_client.py ADDRESS PHOTO...`
prints what each call answered as JSON.

A script of its own, run in a subprocess by tests/test_tf_serving_grpc.py: the real client pulls
in TensorFlow, and the test process stays free of its `tensorflow.serving.*` descriptors.
"""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def main(address: str, photos: list[bytes]) -> dict:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    out: dict = {}

    def call(key, method, request):
        try:
            response = method(request, timeout=120)
        except grpc.RpcError as exc:
            out[key] = {"code": exc.code().name, "details": exc.details()}
            return None
        out[key] = {"code": "OK"}
        return response

    def predict(key, inputs, name="pizza", version=None, label=None, signature=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        if signature is not None:
            request.model_spec.signature_name = signature
        for input_name, tensor in inputs.items():
            request.inputs[input_name].CopyFrom(tensor)
        response = call(key, prediction.Predict, request)
        if response is not None:
            out[key]["version"] = response.model_spec.version.value
            out[key]["signature"] = response.model_spec.signature_name
            out[key]["outputs"] = {k: tf.make_ndarray(v).tolist() for k, v in response.outputs.items()}
            for k, v in out[key]["outputs"].items():
                if response.outputs[k].dtype == tf.string.as_datatype_enum:
                    out[key]["outputs"][k] = [x.decode() for x in v]

    images = tf.make_tensor_proto(photos, shape=[len(photos)])
    predict("latest", {"image_bytes": images})
    predict("version_1", {"image_bytes": images}, version=1)
    predict("label_canary", {"image_bytes": images}, label="canary")
    predict("label_stable", {"image_bytes": images}, label="stable")
    pixels = tf.make_tensor_proto(np.zeros((1, 64, 64, 3), dtype=np.uint8))  # tensor_content
    predict("pixels", {"pixels": pixels}, signature="serving_pixels")

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "pizza"
    response = call("metadata", prediction.GetModelMetadata, request)
    if response is not None:
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        out["metadata"]["version"] = response.model_spec.version.value
        out["metadata"]["signatures"] = {
            name: {
                "inputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
                "outputs": sorted(sig.outputs),
            }
            for name, sig in signatures.signature_def.items()
        }

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "pizza"
    response = call("status", models.GetModelStatus, request)
    if response is not None:
        out["status"]["versions"] = [
            (s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state), s.status.error_code)
            for s in response.model_version_status
        ]
    request.model_spec.version_label = "canary"
    response = call("status_canary", models.GetModelStatus, request)
    if response is not None:
        out["status_canary"]["versions"] = [s.version for s in response.model_version_status]
    request.model_spec.name = "margherita"
    call("status_unknown_model", models.GetModelStatus, request)

    # bad requests: each gets its code, the server stays up
    predict("wrong_dtype", {"image_bytes": tf.make_tensor_proto(np.zeros(2, dtype=np.float32))})
    predict("wrong_input", {"photo": images})
    predict(
        "small_pixels",
        {"pixels": tf.make_tensor_proto(np.zeros((1, 3, 3, 3), dtype=np.uint8))},
        signature="serving_pixels",
    )
    predict("unknown_model", {"image_bytes": images}, name="margherita")
    predict("unknown_version", {"image_bytes": images}, version=999)
    predict("unknown_label", {"image_bytes": images}, label="nightly")
    predict("unknown_signature", {"image_bytes": images}, signature="serving_nothing")
    predict("oversized", {"image_bytes": tf.make_tensor_proto([b"x" * (32 * 1024 * 1024 + 1)], shape=[1])})
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "pizza"
    request.model_spec.version.value = 999
    call("metadata_unknown_version", prediction.GetModelMetadata, request)
    predict("after", {"image_bytes": images})
    return out


if __name__ == "__main__":
    address, *paths = sys.argv[1:]
    photos = [open(p, "rb").read() for p in paths]  # noqa: SIM115
    print(json.dumps(main(address, photos)))
