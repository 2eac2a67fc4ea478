"""TF Serving's gRPC API on the model server's gRPC port: `tensorflow.serving.PredictionService`
(`Predict`, `GetModelMetadata`) and `tensorflow.serving.ModelService/GetModelStatus`, so
`tensorflow-serving-api`'s stubs (and the gateway, serving/grpc_client.py) talk to it as to
`tensorflow/serving` on port 8500.

The messages live in a private descriptor pool (serving/tfs_messages.py), so the services are
registered as generic handlers rather than through generated `_pb2_grpc` code. Predict goes
through the same code as the Open Inference Protocol (v2.predict: admission, batching, runtimes,
limits); `model_spec.version` and `version_label` pick a version as the REST `/versions/N` and
`/labels/L` do. Errors are TF Serving's codes: INVALID_ARGUMENT (bad input, dtype or shape),
NOT_FOUND (unknown model, version or label; no version loaded yet, as TF Serving and the REST
404), FAILED_PRECONDITION (unknown signature, as TF Serving's predict_util.cc answers),
RESOURCE_EXHAUSTED (the queue is full, with a `retry-after` trailer; a message over
`max_request_bytes`, refused by gRPC itself).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from grpc import aio

from pizzactl.errors import BadInputError, PizzaError, QueueFullError
from pizzactl.model.runtimes import SIGNATURE, Runtime
from pizzactl.serving import tfs_messages as tfs
from pizzactl.serving.modelserver import v2
from pizzactl.serving.modelserver.grpc_v2 import status_code
from pizzactl.serving.modelserver.server import ModelServer

# "signature_def" is TF Serving's; "pizzactl" (not TF Serving's) is the model card as JSON in a
# StringValue: the class names and input size the gateway reads over REST from /metadata
METADATA_FIELDS = ("signature_def", "pizzactl")
STRING_VALUE_URL = "type.googleapis.com/google.protobuf.StringValue"
StringValue = tfs.message("google.protobuf.StringValue")
V2_TO_TF = {v2_name: tf_name for tf_name, v2_name in v2.DATATYPES.items()}


class SignatureNotFoundError(BadInputError):
    """TF Serving answers an unknown signature_name with FAILED_PRECONDITION."""

    code = "signature_not_found"


async def _abort(context: aio.ServicerContext, exc: PizzaError) -> None:
    """The error as TF Serving's status code; a full queue is RESOURCE_EXHAUSTED with a
    `retry-after` trailer (TF Serving says UNAVAILABLE: the gateway could not tell it from a
    server that is down, serving/grpc_client.py)."""
    if isinstance(exc, QueueFullError):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message, (("retry-after", str(exc.retry_after)),))
    if isinstance(exc, SignatureNotFoundError):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
    await context.abort(status_code(exc), exc.message)


def _spec(spec: Any) -> tuple[int | None, str | None]:
    """model_spec's version choice -> (version, label)."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _values(name: str, proto: Any) -> tuple[str, list[int], Any]:
    """A request TensorProto -> (the v2 datatype, shape, values: bytes list or shaped array)."""
    dtype = tfs.DATA_TYPE_NAMES.get(proto.dtype, str(proto.dtype))
    datatype = v2.DATATYPES.get(dtype)
    if datatype is None or dtype not in tfs.VALUE_FIELDS:
        raise BadInputError(f"input {name!r}: dtype {dtype} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise BadInputError(f"input {name!r}: the tensor has an unknown rank")
    shape = tfs.shape_of(proto)
    if any(d < 0 for d in shape):
        raise BadInputError(f"input {name!r}: shape {shape} has a negative dimension")
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        values: Any = list(proto.string_val)
    elif proto.tensor_content:
        values = v2.from_raw(name, datatype, proto.tensor_content)
    elif datatype == "FP16":
        values = np.asarray(proto.half_val, dtype="<u2").view("<f2")  # half_val holds the bits
    else:
        values = np.asarray(getattr(proto, tfs.VALUE_FIELDS[dtype]), dtype=v2.NUMPY[datatype])
    if len(values) == 1 and count > 1:  # TensorFlow's tensor_util: one value fills the tensor
        values = values * count if datatype == "BYTES" else np.full(count, values[0], dtype=values.dtype)
    return datatype, shape, v2.shaped(name, datatype, shape, values)


def _output(datatype: str, values: Any) -> Any:
    dtype = V2_TO_TF[datatype]
    shape = v2.output_shape(datatype, values)
    return tfs.tensor(dtype, shape, values if datatype == "BYTES" else np.asarray(values).ravel().tolist())


def signature_def_map(model: Runtime) -> Any:
    """The runtime's TF Serving-shaped signature_def (a dict) as a SignatureDefMap."""
    out = tfs.SignatureDefMap()
    json_format.ParseDict({"signature_def": model.signature_def}, out, ignore_unknown_fields=True)
    return out


class TFServing:
    """The three calls over the model server's state."""

    def __init__(self, server: ModelServer):
        self.server = server

    def _servable(self, spec: Any) -> tuple[Runtime, int | None]:
        """The runtime the spec asks for and the version to pin (None: the latest at run time)."""
        version, label = _spec(spec)
        if label is not None:
            version = self.server.resolve(spec.name, label)
        return self.server.servable(spec.name, version), version

    async def predict(self, request: Any, context: aio.ServicerContext) -> Any:
        try:
            model, version = self._servable(request.model_spec)
            signature = request.model_spec.signature_name or SIGNATURE
            if signature not in model.signature_def:
                raise SignatureNotFoundError(f'Serving signature key "{signature}" not found.')
            wanted = model.input_names(signature)
            if sorted(request.inputs) != sorted(wanted):
                raise BadInputError(
                    f"signature {signature} takes inputs {sorted(wanted)}; the request sends {sorted(request.inputs)}"
                )
            tensors = [(key, *_values(key, request.inputs[key])) for key in sorted(request.inputs)]
            outputs = list(request.output_filter) or None
            used, results = await v2.predict(self.server, request.model_spec.name, version, tensors, outputs)
        except PizzaError as exc:
            await _abort(context, exc)
            raise
        response = tfs.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = signature
        response.model_spec.version.value = used
        for key, datatype, values in results:
            response.outputs[key].CopyFrom(_output(datatype, values))
        return response

    async def get_model_metadata(self, request: Any, context: aio.ServicerContext) -> Any:
        try:
            fields = list(request.metadata_field)
            if not fields:  # TF Serving's own checks (get_model_metadata_impl.cc)
                raise BadInputError("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field not in METADATA_FIELDS:
                    raise BadInputError(f"Metadata field {field} is not supported")
            model, _ = self._servable(request.model_spec)
        except PizzaError as exc:
            await _abort(context, exc)
            raise
        response = tfs.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = model.version
        if "signature_def" in fields:
            packed = response.metadata["signature_def"]
            packed.type_url = tfs.SIGNATURE_DEF_MAP_URL
            packed.value = signature_def_map(model).SerializeToString()
        if "pizzactl" in fields:
            card = json.dumps(model.card.to_dict() if model.card else {})
            packed = response.metadata["pizzactl"]
            packed.type_url = STRING_VALUE_URL
            packed.value = StringValue(value=card).SerializeToString()
        return response

    async def get_model_status(self, request: Any, context: aio.ServicerContext) -> Any:
        spec = request.model_spec
        try:
            version, label = _spec(spec)
            status = self.server.status(spec.name, version, label)
        except PizzaError as exc:
            await _abort(context, exc)
            raise
        response = tfs.GetModelStatusResponse()
        for entry in status["model_version_status"]:
            item = response.model_version_status.add(version=int(entry["version"]), state=tfs.STATES[entry["state"]])
            item.status.error_code = tfs.ERROR_CODES.get(entry["status"]["error_code"], tfs.ERROR_CODES["UNKNOWN"])
            item.status.error_message = entry["status"]["error_message"]
        return response


def handlers(server: ModelServer) -> list[grpc.GenericRpcHandler]:
    """PredictionService and ModelService as generic handlers for `aio.Server.add_generic_rpc_handlers`."""
    impl = TFServing(server)

    def unary(call: Any, request_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString()
        )

    return [
        grpc.method_handlers_generic_handler(
            tfs.PREDICTION_SERVICE,
            {
                "Predict": unary(impl.predict, tfs.PredictRequest),
                "GetModelMetadata": unary(impl.get_model_metadata, tfs.GetModelMetadataRequest),
            },
        ),
        grpc.method_handlers_generic_handler(
            tfs.MODEL_SERVICE, {"GetModelStatus": unary(impl.get_model_status, tfs.GetModelStatusRequest)}
        ),
    ]
