"""The Open Inference Protocol (KServe v2, Triton's HTTP API) over REST on the model server.

Routes (kserve/open-inference-protocol, REST): `GET /v2/health/live`, `GET /v2/health/ready`,
`GET /v2` (server metadata), `GET /v2/models/<name>[/versions/<v>]` (model metadata),
`GET .../ready`, `POST .../infer`. Tensors come as JSON (`data`, row-major, flattened or
nested) or, with Triton's binary tensor data extension, as raw bytes after the JSON header
(`Inference-Header-Content-Length`; a BYTES element is a 4-byte little-endian length and its
bytes): photos are bytes, which JSON strings cannot carry.

An infer request becomes TF Serving's columnar predict and goes through `ModelServer.predict`:
the same admission, batching, runtimes and limits as `:predict`. The signature is the one whose
inputs the request names (`image_bytes`: serving_default, `pixels`: serving_pixels). Errors are
the protocol's `{"error": "..."}`: 400 for a bad request, 404 for an unknown model or version,
413 for a body over the limit, 503 when the queue is full; health that is false is a 400, as the
specification says ("a 4xx status code indicates false") and Triton answers.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pizzactl import __version__
from pizzactl.errors import BadInputError, ServableNotFoundError
from pizzactl.model.runtimes import SIGNATURE, Runtime
from pizzactl.serving.modelserver.rest import parse_json
from pizzactl.serving.modelserver.server import ModelServer

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]

# TensorFlow's dtypes (TF Serving's signature_def) -> the protocol's tensor data types
DATATYPES = {
    "DT_STRING": "BYTES",
    "DT_BOOL": "BOOL",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_HALF": "FP16",
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
}
NUMPY = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def tensor_spec(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """A signature_def tensor as the protocol's `{"name", "datatype", "shape"}`."""
    shape = [int(d["size"]) for d in info.get("tensor_shape", {}).get("dim", [])]
    return {"name": name, "datatype": DATATYPES.get(info["dtype"], info["dtype"]), "shape": shape}


def _signatures(model: Runtime) -> list[str]:
    return [SIGNATURE, *sorted(s for s in model.signature_def if s != SIGNATURE)]


def model_metadata(name: str, model: Runtime) -> dict[str, Any]:
    """Every signature's inputs (by name, serving_default's first) and serving_default's outputs."""
    inputs: dict[str, dict[str, Any]] = {}
    for signature in _signatures(model):
        for key, info in model.signature_def[signature]["inputs"].items():
            inputs.setdefault(key, tensor_spec(key, info))
    outputs = [tensor_spec(k, v) for k, v in sorted(model.signature_def[SIGNATURE]["outputs"].items())]
    return {
        "name": name,
        "versions": [str(model.version)],
        "platform": model.name,
        "inputs": list(inputs.values()),
        "outputs": outputs,
    }


def _flatten(value: Any) -> list:
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    return [value]


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """Triton's binary BYTES tensor: each element a uint32 little-endian length, then that many bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadInputError(f"input {name!r}: binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadInputError(f"input {name!r}: binary BYTES element of {size} bytes runs past the data")
        out.append(raw[offset : offset + size])
        offset += size
    return out


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise BadInputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return value


def from_raw(name: str, datatype: str, raw: bytes) -> Any:
    """Raw tensor bytes (the binary extension, gRPC's raw_input_contents): bytes elements or a flat array."""
    if datatype == "BYTES":
        return _bytes_elements(raw, name)
    if datatype not in NUMPY:
        raise BadInputError(f"input {name!r}: unknown datatype {datatype!r}")
    itemsize = np.dtype(NUMPY[datatype]).itemsize
    if len(raw) % itemsize:
        raise BadInputError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values")
    return np.frombuffer(raw, NUMPY[datatype])


def from_list(name: str, datatype: str, flat: list) -> Any:
    """Flat values (JSON `data`, gRPC's typed contents): bytes elements or a flat array."""
    if datatype == "BYTES":
        if all(isinstance(v, bytes) for v in flat):
            return list(flat)
        if not all(isinstance(v, str) for v in flat):
            raise BadInputError(f"input {name!r}: BYTES data in JSON must be strings")
        return [v.encode() for v in flat]
    if datatype not in NUMPY:
        raise BadInputError(f"input {name!r}: unknown datatype {datatype!r}")
    if any(isinstance(v, (str, bytes, dict, type(None))) for v in flat):
        raise BadInputError(f"input {name!r}: {datatype} data must be numbers")
    try:
        return np.asarray(flat, dtype=NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInputError(f"input {name!r}: data is not {datatype}: {exc}") from None


def shaped(name: str, datatype: str, shape: list[int], values: Any) -> Any:
    """`values` checked against `shape`'s element count; numeric ones reshaped to it."""
    count = int(np.prod(shape)) if shape else 1
    if len(values) != count:
        raise BadInputError(f"input {name!r} has {len(values)} values; its shape {shape} holds {count}")
    return values if datatype == "BYTES" else values.reshape(shape)


def decode_tensor(tensor: Any, binary: memoryview, offset: int) -> tuple[str, str, list[int], Any, int]:
    """One REST request input -> (name, datatype, shape, values, new offset into the binary part).

    Values: a list of bytes for BYTES, else a numpy array of the given shape.
    """
    if not isinstance(tensor, dict):
        raise BadInputError("each of 'inputs' must be an object with 'name', 'shape', 'datatype' and 'data'")
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise BadInputError("each of 'inputs' needs a string 'name' and 'datatype'")
    shape = _shape(tensor.get("shape"), name)
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadInputError(f"input {name!r}: binary_data_size {size} runs past the request's binary data")
        values = from_raw(name, datatype, bytes(binary[offset : offset + size]))
        offset += size
    elif "data" in tensor:
        values = from_list(name, datatype, _flatten(tensor["data"]))
    else:
        raise BadInputError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return name, datatype, shape, shaped(name, datatype, shape, values), offset


def _check_against(spec: dict[str, Any], datatype: str, shape: list[int]) -> None:
    name, want = spec["name"], spec["shape"]
    if datatype != spec["datatype"]:
        raise BadInputError(f"input {name!r} is {spec['datatype']}; the request sends {datatype}")
    if len(shape) != len(want) or any(w >= 0 and w != s for w, s in zip(want, shape, strict=True)):
        raise BadInputError(f"input {name!r}: shape {shape} does not match the model's {want} (-1: any)")
    if not shape or shape[0] == 0:
        raise BadInputError(f"input {name!r} is empty")


def parse_infer(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The request's JSON header and the binary data after it (the binary tensor data extension)."""
    view = memoryview(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadInputError(f"{HEADER_LENGTH} {header_length!r} is not a length within the body")
        head, binary = view[: int(header_length)], view[int(header_length) :]
    else:
        head, binary = view, view[len(body) :]
    payload = parse_json(bytes(head))
    if not isinstance(payload, dict):
        raise BadInputError("the inference request must be a JSON object")
    if not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise BadInputError("the inference request needs a non-empty list 'inputs'")
    return payload, binary


def _wants_binary(payload: dict[str, Any]) -> tuple[dict[str, bool] | None, bool]:
    """(requested output -> binary?, or None for all outputs; the request's binary_data_output)."""
    parameters = payload.get("parameters") or {}
    default = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    outputs = payload.get("outputs")
    if outputs is None:
        return None, default
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise BadInputError("'outputs' must be a list of objects with a 'name'")
    wanted = {}
    for o in outputs:
        p = o.get("parameters") or {}
        wanted[o["name"]] = bool(p.get("binary_data", default)) if isinstance(p, dict) else default
    return wanted, default


def _output_array(values: Any, datatype: str) -> Any:
    if datatype == "BYTES":
        return [v["b64"].encode() if isinstance(v, dict) else str(v).encode() for v in values]
    return np.asarray(values, dtype=NUMPY.get(datatype, "<f4"))


def raw_bytes(datatype: str, values: Any) -> bytes:
    """Output values as raw tensor bytes (the binary extension, gRPC's raw_output_contents)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return values.astype(NUMPY[datatype]).tobytes()


def output_shape(datatype: str, values: Any) -> list[int]:
    return [len(values)] if datatype == "BYTES" else list(values.shape)


def _encode_output(name: str, datatype: str, values: Any, binary: bool) -> tuple[dict[str, Any], bytes]:
    raw = raw_bytes(datatype, values) if binary else b""
    if binary:
        data: Any = None
    elif datatype == "BYTES":
        data = [v.decode(errors="replace") for v in values]
    else:
        data = values.flatten().tolist()
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": output_shape(datatype, values)}
    if binary:
        out["parameters"] = {"binary_data_size": len(raw)}
    else:
        out["data"] = data
    return out, raw


async def predict(
    server: ModelServer,
    name: str,
    version: int | None,
    tensors: list[tuple[str, str, list[int], Any]],
    outputs: list[str] | None,
) -> tuple[int, list[tuple[str, str, Any]]]:
    """Decoded inputs (name, datatype, shape, values) -> (the version used, [(output, datatype, values)]).

    Checks them against the model's metadata, picks the signature they are the inputs of and runs
    TF Serving's columnar predict (`ModelServer.predict`: admission, batching, runtimes). Both the
    REST and the gRPC face call it.
    """
    model = server.servable(name, version)
    specs = {s["name"]: s for s in model_metadata(name, model)["inputs"]}
    columns: dict[str, Any] = {}
    for key, datatype, shape, values in tensors:
        if key not in specs:
            raise BadInputError(f"input {key!r} is not an input of model {name} (it takes {', '.join(specs)})")
        if key in columns:
            raise BadInputError(f"input {key!r} is given twice")
        _check_against(specs[key], datatype, shape)
        columns[key] = values if datatype == "BYTES" else list(values)
    signature = next((s for s in _signatures(model) if set(model.input_names(s)) == set(columns)), None)
    if signature is None:
        takes = " or ".join(str(model.input_names(s)) for s in _signatures(model))
        raise BadInputError(f"inputs {sorted(columns)} are no signature's inputs (model {name} takes {takes})")
    outputs_def = model.signature_def[signature]["outputs"]
    for key in outputs or ():
        if key not in outputs_def:
            raise BadInputError(
                f"output {key!r} is not an output of model {name} (it has {', '.join(sorted(outputs_def))})"
            )
    answer, used = await server.predict(name, version, {"signature_name": signature, "inputs": columns})
    got = answer["outputs"] if isinstance(answer["outputs"], dict) else {next(iter(outputs_def)): answer["outputs"]}
    results = []
    for key in outputs if outputs is not None else sorted(got):
        datatype = tensor_spec(key, outputs_def[key])["datatype"]
        results.append((key, datatype, _output_array(got[key], datatype)))
    return used, results


async def infer(server: ModelServer, name: str, version: int | None, body: bytes, header: str | None) -> Response:
    """A REST infer request -> its JSON answer, with binary outputs after it when asked."""
    payload, binary = parse_infer(body, header)
    tensors, offset = [], 0
    for tensor in payload["inputs"]:
        key, datatype, shape, values, offset = decode_tensor(tensor, binary, offset)
        tensors.append((key, datatype, shape, values))
    wanted, default = _wants_binary(payload)
    used, results = await predict(server, name, version, tensors, list(wanted) if wanted is not None else None)
    parts, raws = [], []
    for key, datatype, values in results:
        part, raw = _encode_output(key, datatype, values, (wanted or {}).get(key, default))
        parts.append(part)
        raws.append(raw)
    response: dict[str, Any] = {"model_name": name, "model_version": str(used), "outputs": parts}
    if isinstance(payload.get("id"), str):
        response["id"] = payload["id"]
    head = json.dumps(response).encode()
    if not any(raws):
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(raws),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


def _version(request: Request) -> int | None:
    raw = request.path_params.get("version")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ServableNotFoundError(f"Servable not found for request: Specific({request.path_params['name']}, {raw})")
    return int(raw)


def v2_routes(server: ModelServer) -> list[Route]:
    """The protocol's REST routes over `server` (registered by app.create_app; the handlers' names
    are the `route` label of pizzactl_model_requests)."""

    async def v2_live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(request: Request) -> Response:
        up = server.model is not None
        return JSONResponse({"ready": up}, status_code=200 if up else 400)

    async def v2_server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "pizzactl", "version": __version__, "extensions": EXTENSIONS})

    async def v2_metadata(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(model_metadata(name, server.servable(name, _version(request))))

    async def v2_model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        server.servable(name, _version(request))  # 404 when not (yet) there
        return JSONResponse({"name": name, "ready": True})

    async def v2_infer(request: Request) -> Response:
        name = request.path_params["name"]
        return await infer(server, name, _version(request), await request.body(), request.headers.get(HEADER_LENGTH))

    model = "/v2/models/{name:model}"
    version = model + "/versions/{version}"
    routes = [
        Route("/v2/health/live", v2_live, methods=["GET"]),
        Route("/v2/health/ready", v2_ready, methods=["GET"]),
        Route("/v2", v2_server_metadata, methods=["GET"]),
    ]
    for prefix in (model, version):
        routes += [
            Route(prefix, v2_metadata, methods=["GET"]),
            Route(prefix + "/ready", v2_model_ready, methods=["GET"]),
            Route(prefix + "/infer", v2_infer, methods=["POST"]),
        ]
    return routes
