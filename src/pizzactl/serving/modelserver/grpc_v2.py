"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) on a second port.

The messages are the published specification's (protos/grpc_predict_v2.proto; stubs generated
by grpcio-tools when pizzactl is built, setup.py). Every call goes through the same code as the
REST face (v2.py: `model_metadata`, `predict`), so the same admission, batching, runtimes and
limits apply; errors are gRPC status codes: INVALID_ARGUMENT (bad input), NOT_FOUND (unknown
model or version), UNAVAILABLE (queue full, no model), RESOURCE_EXHAUSTED (a message over
`max_request_bytes`, refused by gRPC itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from pizzactl import __version__
from pizzactl.errors import (
    BadInputError,
    ModelNotFoundError,
    ModelUnavailableError,
    PayloadTooLargeError,
    PizzaError,
    PortInUseError,
    ServableNotFoundError,
)
from pizzactl.serving.modelserver import grpc_health, v2
from pizzactl.serving.modelserver.protos import grpc_predict_v2_pb2 as pb
from pizzactl.serving.modelserver.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from pizzactl.serving.modelserver.server import ModelServer

# the InferTensorContents field that carries each datatype
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def status_code(exc: PizzaError) -> grpc.StatusCode:
    if isinstance(exc, ModelNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, PayloadTooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, BadInputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ModelUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _version(name: str, version: str) -> int | None:
    if not version:
        return None
    if not version.isdigit():
        raise ServableNotFoundError(f"Servable not found for request: Specific({name}, {version})")
    return int(version)


def _tensors(request: Any) -> list[tuple[str, str, list[int], Any]]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadInputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    if not request.inputs:
        raise BadInputError("the inference request has no inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadInputError(f"input {name!r}: shape {shape} has a negative dimension")
        if raw:
            values = v2.from_raw(name, datatype, raw[i])
        elif datatype in CONTENTS:
            values = v2.from_list(name, datatype, list(getattr(tensor.contents, CONTENTS[datatype])))
        else:
            raise BadInputError(f"input {name!r}: unknown datatype {datatype!r}")
        tensors.append((name, datatype, shape, v2.shaped(name, datatype, shape, values)))
    return tensors


class Inference(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls of the specification over the model server's state."""

    def __init__(self, server: ModelServer):
        self.server = server

    async def _abort(self, context: aio.ServicerContext, exc: PizzaError) -> None:
        await context.abort(status_code(exc), exc.message)

    async def ServerLive(self, request: Any, context: aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.server.model is not None)

    async def ModelReady(self, request: Any, context: aio.ServicerContext) -> Any:
        try:
            self.server.servable(request.name, _version(request.name, request.version))
        except ModelNotFoundError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="pizzactl", version=__version__, extensions=[])

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        try:
            model = self.server.servable(request.name, _version(request.name, request.version))
        except PizzaError as exc:
            await self._abort(context, exc)
            raise
        meta = v2.model_metadata(request.name, model)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:
        try:
            version = _version(request.model_name, request.model_version)
            outputs = [o.name for o in request.outputs] or None
            used, results = await v2.predict(self.server, request.model_name, version, _tensors(request), outputs)
        except PizzaError as exc:
            await self._abort(context, exc)
            raise
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(used), id=request.id)
        for name, datatype, values in results:
            response.outputs.add(name=name, datatype=datatype, shape=v2.output_shape(datatype, values))
            response.raw_output_contents.append(v2.raw_bytes(datatype, values))
        return response


async def start(
    server: ModelServer, address: str, max_message_bytes: int, handlers: Sequence[grpc.GenericRpcHandler] = ()
) -> aio.Server:
    """Serve `server` over gRPC at `address` (host:port), with other services' `handlers` on the
    same port (TF Serving's, grpc_tfs.py, as TF Serving serves both on 8500). The caller stops it."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    grpc_server = aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(server), grpc_server)
    grpc_server.add_generic_rpc_handlers(tuple(handlers))
    services = (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
    )
    grpc_health.add_to(server, grpc_server, services if handlers else services[:1])
    try:
        grpc_server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortInUseError(f"cannot serve gRPC on {address}: {exc}", hint="Choose another --grpc-port.") from None
    await grpc_server.start()
    return grpc_server
