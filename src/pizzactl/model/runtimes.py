"""What runs a batch: an exported version loaded into an inference engine.

`TensorFlowRuntime` loads the SavedModel itself, every signature as exported (the model
contract: `serving_default` takes the image bytes and decodes them in the graph).
`LiteRTRuntime` runs the classifier that `pizzactl export` converted for LiteRT (XNNPACK) into
the version directory (`pizzactl.model.litert`), behind the same two signatures: the image bytes are
decoded to the very pixels the SavedModel's `decode_resize` makes, so only the network differs, and export
published the artefact only if it agreed with the SavedModel (|dp| on real photos, and not worse
on held-out photos: `litert.judge`). The model server asks a runtime for its TF Serving-shaped
`signature_def` (for `/metadata`), the input names of a signature, and `run(signature, inputs)`.

`load_runtime(path, version, "auto")` picks the fastest runtime whose artefact passed that check
and whose engine is installed, else TensorFlow, and says why in the log.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pizzactl.errors import BadInputError, ModelNotFoundError, UsageError
from pizzactl.model.card import ModelCard
from pizzactl.model.contract import SIGNATURE, expected_outputs
from pizzactl.model.decode import decode_resize_fast
from pizzactl.model.store import METADATA_DIR

log = logging.getLogger("pizzactl.modelserver")

TENSORFLOW = "tensorflow"
# LiteRT artefacts, fastest first, as `pizzactl.model.litert` writes them under assets.extra/.
LITERT = {"litert-int8": "litert/classifier-int8.tflite", "litert": "litert/classifier.tflite"}


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


@dataclass
class TensorFlowRuntime:
    """One version as TensorFlow loads it: its signatures, TF Serving-shaped signature_def and pizzactl.json."""

    version: int
    path: Path
    signatures: dict[str, Any]
    signature_def: dict[str, Any]
    card: ModelCard | None  # None: a SavedModel exported elsewhere
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
        return cls(version, path, signatures, signature_def, ModelCard.read(path), _keep=obj)

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


_DTYPES = {"string": "DT_STRING", "float32": "DT_FLOAT", "uint8": "DT_UINT8"}


def signature_def_from_metadata(signatures: Mapping[str, Any]) -> dict[str, Any]:
    """TF Serving's signature_def, as TensorFlowRuntime reports it, from pizzactl.json's `signatures`."""

    def info(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec["shape"]]
        return {"dtype": _DTYPES[spec["dtype"]], "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}

    return {
        sig: {
            "inputs": {k: info(f"{sig}_{k}:0", v) for k, v in io_["inputs"].items()},
            "outputs": {
                k: info(f"StatefulPartitionedCall:{i}", v) for i, (k, v) in enumerate(sorted(io_["outputs"].items()))
            },
            "method_name": "tensorflow/serving/predict",
        }
        for sig, io_ in signatures.items()
    }


@dataclass
class LiteRTRuntime:
    """The classifier under LiteRT (XNNPACK), with TensorFlow's own decoding in front.

    The interpreter runs one image per invoke: on CPU, XNNPACK's throughput does not grow with
    the batch (measured: 21.5, 22.5 and 21.3 images/s at batch 1, 4 and 16 on 2 cores), and a
    fixed shape never re-plans. An interpreter is not thread-safe: the runtime's are used by one
    batch thread at a time (`lock`).

    With `split` > 1, a batch of several images is cut into `split` parts, each run on its own
    one-thread interpreter at the same time; a lone image still gets the `threads`-thread one.
    XNNPACK's threads on one image wait on each other between operators: on 2 cores, one
    2-thread interpreter spent 29 CPU ms per int8 Lite2 image, two 1-thread ones 24
    (benchmarks/RESULTS.md, issue 25), and the CPU saved is the gateway's on a shared machine.
    """

    version: int
    path: Path
    name: str
    signature_def: dict[str, Any]
    card: ModelCard
    threads: int
    split: int = 1
    _interpreter: Any = field(default=None, repr=False)
    _singles: list = field(default_factory=list, repr=False)  # the one-thread interpreters of `split`
    _pool: Any = field(default=None, repr=False)
    _decode: Any = field(default=None, repr=False)
    _lock: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path, version: int, name: str = "litert", threads: int = 1, split: int = 1) -> LiteRTRuntime:
        """The artefact as it is: whether export's check passed is `checked(card)`'s business."""
        import threading

        from ai_edge_litert.interpreter import Interpreter

        card = ModelCard.read(path) or ModelCard()
        if not (path / METADATA_DIR / LITERT[name]).is_file():
            entry = card.runtime(name)
            raise ModelNotFoundError(f"{path} has no {name} artefact ({entry.get('reason', 'not converted')}).")
        if card.image_size is None or card.signatures is None:
            raise ModelNotFoundError(f"{path}'s pizzactl.json does not say its image size and signatures.")

        def interpreter(threads: int):
            made = Interpreter(model_path=str(path / METADATA_DIR / LITERT[name]), num_threads=max(1, threads))
            made.allocate_tensors()
            return made

        size, split = int(card.image_size), max(1, split)
        runtime = cls(version, path, name, signature_def_from_metadata(card.signatures), card, threads, split)
        runtime._interpreter = interpreter(threads)
        if split > 1:
            runtime._singles = [interpreter(1) for _ in range(split)]
            runtime._pool = ThreadPoolExecutor(split - 1, thread_name_prefix="pizzactl-litert")
        runtime._decode = decoder(size)
        runtime._lock = threading.Lock()
        return runtime

    def input_names(self, signature: str) -> list[str]:
        return list(self.signature_def[signature]["inputs"])

    def run(self, signature: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Decode (serving_default) or check (serving_pixels) a batch, then the classifier per image."""
        import numpy as np

        (name,) = self.input_names(signature)
        value = inputs[name]
        if signature == SIGNATURE:
            pixels = self._decode_batch(value)
        else:
            size = int(self.card.image_size or 0)
            try:
                pixels = np.asarray(value, dtype=np.uint8).astype(np.float32)
            except (TypeError, ValueError, OverflowError) as exc:
                raise BadInputError(f"Input {name!r} cannot be converted to uint8: {exc}") from None
            if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
                raise BadInputError(f"Input {name!r} must have shape [N, {size}, {size}, 3], got {list(pixels.shape)}")
        # the SavedModel's outputs from the classifier's, in numpy
        answer = expected_outputs(self.classify(pixels), self.card.classes, self.card.threshold)
        answer["label"] = np.array([label.encode() for label in answer["label"]], dtype=object)  # as TF answers
        return answer

    def _decode_batch(self, images: Any):
        import numpy as np
        import tensorflow as tf

        if not images:
            return np.zeros((0, 0, 0, 3), np.float32)
        try:
            return self._decode(tf.constant(images, dtype=tf.string)).numpy()
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            raise BadInputError(tf_message(exc)) from None

    def classify(self, pixels) -> Any:
        """float32 [N, S, S, 3] 0..255 -> the classifier's raw output [N, K]: [N, 1] P(classes[1])
        for a binary (sigmoid) model, [N, classes] for a softmax one.

        int8's output is 8-bit too: probabilities in steps of 1/256, so a softmax row no longer
        sums to 1 (measured: 0.996 for five classes); it is rescaled so that it does.
        """
        import numpy as np

        out = self._interpreter.get_output_details()[0]
        result = np.zeros((len(pixels), int(np.prod(out["shape"][1:]))), np.float32)
        with self._lock:
            if len(pixels) < 2 or not self._singles:
                _invoke_each(self._interpreter, pixels, result)
            else:  # one part per one-thread interpreter, the first on this thread
                parts = np.array_split(np.arange(len(pixels)), min(len(pixels), len(self._singles)))
                spans = [slice(int(part[0]), int(part[-1]) + 1) for part in parts]
                others = [
                    self._pool.submit(_invoke_each, single, pixels[span], result[span])
                    for single, span in zip(self._singles[1:], spans[1:], strict=False)
                ]
                try:
                    _invoke_each(self._singles[0], pixels[spans[0]], result[spans[0]])
                finally:  # every part done before the lock is let go, even when one failed
                    wait(others)
                for other in others:
                    other.result()
        if self.name == "litert-int8" and result.shape[1] > 1:
            total = result.sum(axis=1, keepdims=True)
            result = np.divide(result, total, out=np.full_like(result, 1 / result.shape[1]), where=total > 0)
        return result


def _invoke_each(interpreter, pixels, result) -> None:
    """Run `interpreter` on each image of `pixels` [n, S, S, 3], its output into `result` [n, K]."""
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    for i in range(len(pixels)):
        interpreter.set_tensor(inp, pixels[i : i + 1])
        interpreter.invoke()  # releases the GIL: the split's interpreters run at the same time
        result[i] = interpreter.get_tensor(out).reshape(-1)


def decoder(size: int):
    """pizzactl.model.decode.decode_resize's pixels over a batch, as serving_default's graph makes them
    (`decode_resize_fast`: an image already size x size is not resized, which changes no pixel)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode(images):
        return tf.map_fn(
            lambda b: decode_resize_fast(b, size),
            images,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )

    return decode


Runtime = TensorFlowRuntime | LiteRTRuntime


def warm_up(runtime: Runtime) -> Runtime:
    """One real prediction so the first user request does not pay for tracing and planning."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(buf, "JPEG")
    name = runtime.input_names(SIGNATURE)[0]
    runtime.run(SIGNATURE, {name: [buf.getvalue()]})
    if isinstance(runtime, LiteRTRuntime) and runtime.split > 1:  # and each of the split's interpreters
        runtime.run(SIGNATURE, {name: [buf.getvalue()] * runtime.split})
    return runtime


def checked(card: ModelCard | None) -> list[str]:
    """The LiteRT artefacts that passed export's check (pizzactl.json `runtimes`), fastest first."""
    return [name for name in LITERT if card and card.runtime(name).get("ok")]


def available(path: Path) -> list[str]:
    """Every runtime the version at `path` can run on: its LiteRT artefacts, checked or not, and TensorFlow."""
    return [*(name for name in LITERT if (path / METADATA_DIR / LITERT[name]).is_file()), TENSORFLOW]


def runtime_candidates(wanted: str, card: ModelCard | None) -> list[str]:
    """The runtimes to try, in order: the one asked for (else the fastest checked one), then TensorFlow."""
    if wanted == "auto":
        return [*checked(card), TENSORFLOW]
    return [wanted] if wanted == TENSORFLOW else [wanted, TENSORFLOW]


def require_runtimes(path: Path, wanted: Sequence[str]) -> list[str]:
    """The runtimes asked for, if the version at `path` has them all (a measurement must not fall back)."""
    have = available(path)
    missing = [name for name in wanted if name not in have]
    if missing:
        raise UsageError(
            f"{path} cannot run on {', '.join(missing)} (it has {', '.join(have)}).",
            hint="Export it again (`pizzactl export RUN`) with ai-edge-litert installed; "
            "pizzactl.json's `runtimes` says why an artefact was left out.",
        )
    return list(wanted)


def load_runtime(path: Path, version: int, wanted: str = "auto", threads: int = 1, split: int = 1) -> Runtime:
    """Load and warm up one version on the runtime asked for; TensorFlow when that cannot be had.

    `auto` only takes artefacts that passed export's check; one asked for by name is served even
    if it did not (int8 is then an informed opt-in), with a warning that says why it failed.
    """
    card = ModelCard.read(path)
    candidates = runtime_candidates(wanted, card)
    for name in candidates[:-1]:
        try:
            runtime = warm_up(LiteRTRuntime.load(path, version, name, threads, split))
        except ImportError:
            log.warning("%s: ai-edge-litert is not installed; falling back (pip install ai-edge-litert)", name)
            continue
        except Exception as exc:
            log.warning("%s runtime for %s unavailable (%s); falling back", name, path, getattr(exc, "message", exc))
            continue
        if name not in checked(card):
            reason = (card.runtime(name) if card else {}).get("reason", "not checked")
            log.warning("%s did not pass export's check (%s); serving it because it was asked for", name, reason)
        return runtime
    return warm_up(TensorFlowRuntime.load(path, version))


# --- TensorFlow's threads ------------------------------------------------------------------


CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota.

    In a container with `--cpus` or a pod with a CPU limit, os.cpu_count() and the affinity
    still show every CPU of the host while the kernel throttles the process to the quota, so
    sizing thread pools from them oversubscribes it (Kubernetes' CPU limits are CFS quotas:
    https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs allowed by the CFS quota (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max": no limit
        return None
    return q / p if q > 0 and p > 0 else None


def default_tf_threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads for serving: every usable CPU per op, one op at a time.

    Measured end to end with the gateway on the same 2 cores, in alternating rounds, on the
    default model (EfficientNet-Lite0, 256 px): (2, 1) served 1.27x and 1.46x the images/s of
    (1, 1) in two runs; against TensorFlow's own default (0, 0) the runs disagree (0.87x, 1.29x),
    see benchmarks/RESULTS.md. In a pod the CPU limit caps `usable_cpus`.
    """
    return usable_cpus(), 1


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
