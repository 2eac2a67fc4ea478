"""What runs a batch: an exported version loaded into an inference engine.

`TensorFlowRuntime` loads the SavedModel itself, every signature as exported (the model
contract: `serving_default` takes the image bytes and decodes them in the graph). The model
server asks a runtime for three things: its TF Serving-shaped `signature_def` (for
`/metadata`), the input names of a signature, and `run(signature, inputs)` on a batch.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pizzactl.errors import BadInputError, ModelNotFoundError
from pizzactl.model_store import METADATA_DIR, METADATA_FILE

log = logging.getLogger("pizzactl.modelserver")

SIGNATURE = "serving_default"


def _dtype_name(dtype) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def _tensor_info(name: str, spec) -> dict[str, Any]:
    shape = spec.shape
    if shape.rank is None:
        tensor_shape: dict[str, Any] = {"dim": [], "unknown_rank": True}
    else:
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in shape.as_list()]
        tensor_shape = {"dim": dims, "unknown_rank": False}
    return {"dtype": _dtype_name(spec.dtype), "tensor_shape": tensor_shape, "name": name}


def tf_message(exc: Exception) -> str:
    """The useful line of a TF error ("Unknown image file format ..."), not the graph noise."""
    text = getattr(exc, "message", None) or str(exc) or repr(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    noise = ("Graph execution error", "Detected at node", "[[", "File ", "Traceback", "}}")
    useful = [line for line in lines if not line.startswith(noise)]
    return (useful or lines or [repr(exc)])[0][:500]


def read_pizzactl_json(path: Path) -> dict[str, Any]:
    """A version's pizzactl.json, or {} (a SavedModel from elsewhere has none)."""
    try:
        return json.loads((path / METADATA_DIR / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class TensorFlowRuntime:
    """One version as TensorFlow loads it: its signatures, TF Serving-shaped signature_def and pizzactl.json."""

    version: int
    path: Path
    signatures: dict[str, Any]
    signature_def: dict[str, Any]
    pizzactl: dict[str, Any]
    _keep: Any = field(default=None, repr=False)  # the loaded object owns the variables

    name = "tensorflow"

    @classmethod
    def load(cls, path: Path, version: int) -> TensorFlowRuntime:
        import tensorflow as tf

        obj = tf.saved_model.load(str(path))
        signatures = dict(obj.signatures)
        if SIGNATURE not in signatures:
            raise ModelNotFoundError(f"{path} has no {SIGNATURE!r} signature (it has {sorted(signatures)}).")
        signature_def = {}
        for name, fn in signatures.items():
            _, kwargs = fn.structured_input_signature
            inputs = {k: _tensor_info(f"{name}_{k}:0", spec) for k, spec in kwargs.items()}
            outputs = {
                k: _tensor_info(f"StatefulPartitionedCall:{i}", spec)
                for i, (k, spec) in enumerate(sorted(fn.structured_outputs.items()))
            }
            signature_def[name] = {"inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}
        return cls(version, path, signatures, signature_def, read_pizzactl_json(path), _keep=obj)

    def input_names(self, signature: str) -> list[str]:
        return list(self.signature_def[signature]["inputs"])

    def run(self, signature: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run one signature on a batch; returns numpy arrays. Bad input is a BadInputError (400)."""
        import tensorflow as tf

        fn = self.signatures[signature]
        _, specs = fn.structured_input_signature
        feed = {}
        for name, value in inputs.items():
            spec = specs[name]
            try:
                feed[name] = tf.constant(value, dtype=spec.dtype)
            except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
                raise BadInputError(f"Input {name!r} cannot be converted to {spec.dtype.name}: {exc}") from None
        try:
            outputs = fn(**feed)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            raise BadInputError(tf_message(exc)) from None
        return {k: v.numpy() for k, v in outputs.items()}

    def warm_up(self) -> None:
        """One real prediction so the first user request does not pay for tracing."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 120, 40)).save(buf, "JPEG")
        name = self.input_names(SIGNATURE)[0]
        self.run(SIGNATURE, {name: [buf.getvalue()]})


def load_runtime(path: Path, version: int) -> TensorFlowRuntime:
    """Load and warm up one version."""
    runtime = TensorFlowRuntime.load(path, version)
    runtime.warm_up()
    return runtime


# --- TensorFlow's threads ------------------------------------------------------------------


def default_tf_threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads for serving: half the CPUs per op, one op at a time.

    TF's default (every core for every op, and as many ops at once) makes its threads fight
    the gateway's image decoding and each other: on 2 shared cores a MobileNetV3 ran 113
    images/s with the defaults and 142 with (1, 1), at 20% less CPU per image. More batches
    in parallel is what `--batch-threads` is for.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2), 1


def configure_tf_threads(intra: int | None = None, inter: int | None = None) -> tuple[int, int]:
    """Apply thread counts (0 = TensorFlow's own default, negative = ours) before TF runs anything."""
    default_intra, default_inter = default_tf_threads()
    intra = default_intra if intra is None or intra < 0 else intra
    inter = default_inter if inter is None or inter < 0 else inter
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already initialised in this process: keep what it has
        log.warning("TensorFlow is already initialised; thread settings unchanged")
    return intra, inter
