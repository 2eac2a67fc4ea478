"""TF Serving's gRPC messages (`tensorflow.serving.PredictRequest`...) and method paths, for the
model server's `PredictionService`/`ModelService` and the gateway's gRPC client.

The messages come from the descriptor set setup.py builds out of modelserver/protos/tfs/ (TF
Serving's and TensorFlow's own .proto files, trimmed, same names and field numbers), loaded into a
private descriptor pool: their full names are TensorFlow's (`tensorflow.TensorProto`), which
TensorFlow and tensorflow-serving-api register in protobuf's default pool, so generated `_pb2`
modules would clash with them in one process (a model server that runs TensorFlow). No numpy
here: the gateway (no numpy in its image) uses this module too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pizzactl.errors import MissingDependencyError

DESCRIPTORS = Path(__file__).parent / "modelserver" / "protos" / "tf_serving.binpb"

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS = f"/{MODEL_SERVICE}/GetModelStatus"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"  # TF Serving's Any.type_url


def _pool() -> descriptor_pool.DescriptorPool:
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    except OSError:
        raise MissingDependencyError(
            f"TF Serving's gRPC descriptors are missing ({DESCRIPTORS}).",
            hint="Reinstall pizzactl (`pip install -e .` builds them with grpcio-tools from modelserver/protos/tfs).",
        ) from None
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # --include_imports: dependencies come first
        pool.Add(file)
    return pool


POOL = _pool()


def message(full_name: str) -> Any:
    """The message class of `full_name` (e.g. "tensorflow.serving.PredictRequest") in the private pool."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


PredictRequest = message("tensorflow.serving.PredictRequest")
PredictResponse = message("tensorflow.serving.PredictResponse")
GetModelMetadataRequest = message("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = message("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = message("tensorflow.serving.SignatureDefMap")
GetModelStatusRequest = message("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = message("tensorflow.serving.GetModelStatusResponse")
TensorProto = message("tensorflow.TensorProto")

DATA_TYPES = {v.name: v.number for v in POOL.FindEnumTypeByName("tensorflow.DataType").values}
DATA_TYPE_NAMES = {number: name for name, number in DATA_TYPES.items()}
STATES = {v.name: v.number for v in POOL.FindEnumTypeByName("tensorflow.serving.ModelVersionStatus.State").values}
STATE_NAMES = {number: name for name, number in STATES.items()}
ERROR_CODES = {v.name: v.number for v in POOL.FindEnumTypeByName("tensorflow.error.Code").values}

# the TensorProto field that carries each dtype's values (TensorFlow's tensor_util: what
# tf.make_tensor_proto writes when it does not use tensor_content, and what TF Serving answers)
VALUE_FIELDS = {
    "DT_FLOAT": "float_val",
    "DT_DOUBLE": "double_val",
    "DT_INT32": "int_val",
    "DT_INT16": "int_val",
    "DT_INT8": "int_val",
    "DT_UINT8": "int_val",
    "DT_UINT16": "int_val",
    "DT_HALF": "half_val",
    "DT_INT64": "int64_val",
    "DT_BOOL": "bool_val",
    "DT_STRING": "string_val",
    "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
}


def tensor(dtype: str, shape: list[int], values: list) -> Any:
    """A TensorProto with `values` (flat) in the dtype's typed field."""
    proto = TensorProto(dtype=DATA_TYPES[dtype])
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    getattr(proto, VALUE_FIELDS[dtype]).extend(values)
    return proto


def shape_of(proto: Any) -> list[int]:
    return [d.size for d in proto.tensor_shape.dim]
