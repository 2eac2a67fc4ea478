"""The gateway's client for TF Serving's gRPC API (`--model-protocol grpc`): PredictionService
and ModelService on the builtin model server's `grpc_port` or on tensorflow/serving's 8500.

It is the REST client (client.py) with another wire: the same deadlines and status probe
(`ModelClient.patiently`), canary routes as `model_spec.version` / `version_label`, and errors as
the gateway answers them. A refused image (INVALID_ARGUMENT, FAILED_PRECONDITION, or
RESOURCE_EXHAUSTED without Retry-After: a message over the server's limit) is InvalidImageError;
a full queue (RESOURCE_EXHAUSTED with a `retry-after` trailer, grpc_tfs.py) is QueueFullError;
anything else (UNAVAILABLE, NOT_FOUND: that version is not loaded, ...) is ModelUnavailableError
(503 + Retry-After), so the canary falls back as over REST. TF Serving's metadata carries only
`signature_def`; the builtin server also answers the field `pizzactl` (the model card: classes,
image size), which tensorflow/serving refuses, and then the gateway asks again without it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from grpc import aio

from pizzactl.config import MODEL_NAME
from pizzactl.errors import InvalidImageError, ModelUnavailableError, PizzaError, QueueFullError
from pizzactl.serving import tfs_messages as tfs
from pizzactl.serving.client import ModelClient, Prediction, _seconds, _unavailable

INPUT = "image_bytes"  # serving_default's input in a pizzactl export
UNLIMITED = -1  # message sizes: the server's limit is the one that counts
# codes that mean the server answered (it is alive), as opposed to no connection or no answer in time
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
StringValue = tfs.message("google.protobuf.StringValue")


class _FieldRefused(PizzaError):
    """GetModelMetadata refused a metadata_field (tensorflow/serving: all but signature_def)."""


def _spec(request: Any, name: str, route: str | None) -> None:
    """`/labels/<label>` or `/versions/<n>` (canary.py's routes) as the request's model_spec."""
    request.model_spec.name = name
    if route and route.startswith("/labels/"):
        request.model_spec.version_label = route.removeprefix("/labels/")
    elif route and route.startswith("/versions/"):
        request.model_spec.version.value = int(route.removeprefix("/versions/"))


class GrpcModelClient(ModelClient):
    """predict / status / info over TF Serving's gRPC API (one aio channel per event loop)."""

    def __init__(self, address: str, model_name: str = MODEL_NAME, **kwargs: Any):
        super().__init__(f"grpc://{address}", model_name, **kwargs)
        self.address = address
        self._channels: dict[int, tuple[asyncio.AbstractEventLoop, aio.Channel, asyncio.Semaphore]] = {}

    def _channel(self) -> tuple[aio.Channel, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        entry = self._channels.get(id(loop))
        if entry is None or entry[0] is not loop:
            options = [("grpc.max_send_message_length", UNLIMITED), ("grpc.max_receive_message_length", UNLIMITED)]
            entry = (loop, aio.insecure_channel(self.address, options=options), asyncio.Semaphore(self.max_concurrency))
            self._channels[id(loop)] = entry
        return entry[1], entry[2]

    async def aclose(self) -> None:
        entry = self._channels.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].close()

    async def _rpc(self, path: str, response_type: Any, request: Any, timeout: float | None = None) -> Any:
        """One call; any answer, even an error status, is progress."""
        channel, slots = self._channel()
        method = channel.unary_unary(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_type.FromString
        )
        async with slots:
            try:
                response = await method(request, timeout=timeout)
            except aio.AioRpcError as exc:
                if exc.code() not in _NO_ANSWER:
                    self.last_progress = time.monotonic()
                raise
        self.last_progress = time.monotonic()
        return response

    async def _call(
        self,
        path: str,
        response_type: Any,
        request: Any,
        kind: str,
        queue_wait: float = 0.0,
        batch_wait: float = 0.0,
        refused: Callable[[aio.AioRpcError], PizzaError | None] | None = None,
    ) -> Any:
        try:
            return await self.patiently(lambda: self._rpc(path, response_type, request), kind, queue_wait, batch_wait)
        except aio.AioRpcError as exc:
            error = refused(exc) if refused else None
            raise error or _unavailable(
                f"The model server at {self.address} answered {exc.code().name}: {exc.details()}"
            ) from None

    async def _probe_status(self) -> bool:
        request = tfs.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        try:
            await self._rpc(tfs.GET_MODEL_STATUS, tfs.GetModelStatusResponse, request, timeout=self.timeout)
        except aio.AioRpcError as exc:
            return exc.code() not in _NO_ANSWER
        return True

    async def status(self) -> dict[str, Any]:
        """GetModelStatus as TF Serving's REST status body (what `info` reads)."""
        request = tfs.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = await self._call(tfs.GET_MODEL_STATUS, tfs.GetModelStatusResponse, request, "status")
        return {
            "model_version_status": [
                {"version": str(s.version), "state": tfs.STATE_NAMES.get(s.state, "UNKNOWN")}
                for s in response.model_version_status
            ]
        }

    async def metadata(self, version: str) -> dict[str, Any]:
        """GetModelMetadata as TF Serving's REST metadata body (signature_def, and pizzactl's card if said)."""
        request = tfs.GetModelMetadataRequest(metadata_field=["signature_def", "pizzactl"])
        request.model_spec.name = self.model_name
        request.model_spec.version.value = int(version)

        def not_ours(exc: aio.AioRpcError) -> PizzaError | None:
            return _FieldRefused(exc.details() or "") if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else None

        try:
            response = await self._call(
                tfs.GET_MODEL_METADATA, tfs.GetModelMetadataResponse, request, "metadata", refused=not_ours
            )
        except _FieldRefused:  # tensorflow/serving knows signature_def only
            del request.metadata_field[1:]
            try:
                response = await self._call(tfs.GET_MODEL_METADATA, tfs.GetModelMetadataResponse, request, "metadata")
            except ModelUnavailableError:
                return {}
        meta: dict[str, Any] = {}
        if "signature_def" in response.metadata:
            signatures = tfs.SignatureDefMap.FromString(response.metadata["signature_def"].value)
            meta["signature_def"] = json_format.MessageToDict(signatures, preserving_proto_field_name=True)
        if "pizzactl" in response.metadata:
            meta["pizzactl"] = json.loads(StringValue.FromString(response.metadata["pizzactl"].value).value or "{}")
        return {"metadata": meta}

    async def predict(
        self, images: list[bytes], queue_wait: float = 0.0, batch_wait: float = 0.0, route: str | None = None
    ) -> tuple[list[Prediction], str | None]:
        """Predictions for encoded images and the version that made them (model_spec.version of the answer)."""
        request = tfs.PredictRequest()
        _spec(request, self.model_name, route)
        request.inputs[INPUT].CopyFrom(tfs.tensor("DT_STRING", [len(images)], images))
        response = await self._call(
            tfs.PREDICT, tfs.PredictResponse, request, "predict", queue_wait, batch_wait, refused=_refused
        )
        try:
            outputs = response.outputs
            labels = [v.decode() for v in outputs["label"].string_val]
            probability = list(outputs["probability"].float_val)
            rows: list[tuple[float, ...] | None] = [None] * len(labels)
            if "probabilities" in outputs:
                flat, shape = list(outputs["probabilities"].float_val), tfs.shape_of(outputs["probabilities"])
                k = shape[1] if len(shape) == 2 else 1
                rows = [tuple(flat[i * k : (i + 1) * k]) for i in range(len(labels))]
            predictions = [Prediction(label, p, row) for label, p, row in zip(labels, probability, rows, strict=True)]
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise _unavailable(
                f"The model server answered something that is not a pizzactl prediction ({exc})."
            ) from None
        if len(predictions) != len(images):
            raise _unavailable("The model server answered the wrong number of predictions.")
        spec = response.model_spec
        return predictions, str(spec.version.value) if spec.HasField("version") else None


def _refused(exc: aio.AioRpcError) -> PizzaError | None:
    """A Predict error the image caused (4xx), or a full queue; None: the server's trouble (503)."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry = dict(exc.trailing_metadata() or ()).get("retry-after")
        if retry is not None:
            error = QueueFullError(
                f"The model server is at capacity: {details}",
                hint="The model server's queue is full; retry after Retry-After seconds.",
            )
            error.reason = "model_server_full"
            error.retry_after = _seconds(str(retry))
            return error
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return InvalidImageError(f"The model server rejected the image: {details[:300]}")
    return None
