"""Grad-CAM straight from the exported SavedModel: which pixels made the model say its label.

No Keras model or training run is needed. The `serving_pixels` signature is frozen (variables
become constants, nested functions are inlined) into one flat graph; in it the backbone's last
feature map is the input of the final global pooling (the last rank-4 `Mean`/`Max`). The graph
is pruned into two functions, pixels -> feature map and feature map -> `probabilities`, so
`tf.GradientTape` can differentiate the second: Grad-CAM weights each feature channel by the
mean gradient of the predicted class's probability over it (Selvaraju et al., 2017). A binary
model exported before `probabilities` existed is explained through `probability`, P(pizza).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.console import log
from pizzactl.errors import ModelNotFoundError, PizzaError, missing_extra
from pizzactl.model.card import ModelCard
from pizzactl.model.contract import DEFAULT_CLASSES, DEFAULT_THRESHOLD
from pizzactl.model.decode import decode_resize
from pizzactl.model.store import latest_version_dir, list_versions

MAX_SIDE = 512  # overlay size (longest side)


class ExplainError(PizzaError):
    """The model's graph has no feature map Grad-CAM can use."""

    code = "explain"


def _tf():
    try:
        import tensorflow as tf
    except ImportError:
        raise missing_extra("tensorflow") from None
    return tf


@dataclass
class GradCam:
    """Grad-CAM for one exported version directory (built once, used for many images).

    A classifier may run its backbone more than once (test-time augmentation: the photo and its
    mirror image, averaged); then there is one final feature map per pass, and the map of a
    mirrored pass is mirrored back before the passes are added up.
    """

    version_dir: Path
    image_size: int
    classes: tuple[str, ...]
    threshold: float | None  # None: more than two classes, the label is the most probable one
    _features: Any = None  # uint8 pixels [N,S,S,3] -> [feature map [N,h,w,C], ...]
    _head: Any = None  # (feature map, ...) -> probabilities [N, K] (or probability [N], older exports)
    per_class: bool = True  # does _head answer every class's probability?
    mirrored: tuple[bool, ...] = ()  # per feature map: is its pass on the mirrored image?
    feature_tensors: tuple[str, ...] = ()

    @property
    def feature_tensor(self) -> str:
        return self.feature_tensors[0] if self.feature_tensors else ""

    @property
    def positive(self) -> str:
        return self.classes[1]

    @property
    def negative(self) -> str:
        return self.classes[0]

    @classmethod
    def load(cls, version_dir: Path | str) -> GradCam:
        tf = _tf()
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        version_dir = Path(version_dir)
        card = ModelCard.load(version_dir)
        loaded = tf.saved_model.load(str(version_dir))
        if "serving_pixels" not in loaded.signatures:
            raise ModelNotFoundError(
                f"{version_dir} has no serving_pixels signature.",
                hint="Export the model again with `pizzactl export RUN`.",
            )
        signature = loaded.signatures["serving_pixels"]
        frozen = convert_variables_to_constants_v2(signature)
        graph_def = frozen.graph.as_graph_def()
        outputs = sorted(signature.structured_outputs)
        per_class = "probabilities" in outputs
        output_index = outputs.index("probabilities" if per_class else "probability")
        probability_name = frozen.outputs[output_index].name
        input_name = frozen.inputs[0].name

        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        graph = wrapped.graph
        pixels = graph.get_tensor_by_name(input_name)
        probability = graph.get_tensor_by_name(probability_name)
        feature_maps = _final_feature_maps(graph, probability)
        classes = card.classes or DEFAULT_CLASSES
        threshold = DEFAULT_THRESHOLD if card.threshold is None else card.threshold
        return cls(
            version_dir=version_dir,
            image_size=int(card.image_size or 0),
            classes=classes,
            threshold=float(threshold) if len(classes) == 2 and threshold is not None else None,
            per_class=per_class,
            _features=wrapped.prune(feeds=pixels, fetches=list(feature_maps)),
            _head=wrapped.prune(feeds=list(feature_maps), fetches=probability),
            mirrored=tuple(_is_mirrored(fm) for fm in feature_maps),
            feature_tensors=tuple(fm.name for fm in feature_maps),
        )

    def pixels(self, image_bytes: bytes):
        """Encoded image -> uint8 [1,S,S,3], exactly the pixels serving_default would see (rounded)."""
        tf = _tf()

        try:
            image = decode_resize(tf.constant(image_bytes), self.image_size)
        except tf.errors.InvalidArgumentError as exc:
            raise ExplainError(f"Cannot decode the image: {exc.message.splitlines()[0]}") from None
        return tf.cast(tf.round(image), tf.uint8)[tf.newaxis]

    def heatmap(self, image_bytes: bytes):
        """(cam [h,w] float32 in 0..1, the model's `probability`) for one image (see `explain`)."""
        explanation = self.explain(image_bytes)
        return explanation.cam, explanation.probability

    def explain(self, image_bytes: bytes) -> Explanation:
        """Grad-CAM of the predicted class for one image, with the model's answer.

        The map shows the evidence for the label: the gradient of the predicted class's
        probability (for a binary model answering its negative class, that of 1 - P(positive)).
        """
        import numpy as np

        tf = _tf()
        feature_maps = list(self._features(self.pixels(image_bytes)))
        with tf.GradientTape() as tape:
            for fm in feature_maps:
                tape.watch(fm)
            out = self._head(*feature_maps)
            if not self.per_class:  # an older binary export: P(positive) only
                out = tf.stack([1.0 - tf.reshape(out, [-1]), tf.reshape(out, [-1])], axis=1)
            probs = out.numpy()[0].astype(float)
            threshold = self.threshold
            index = int(probs[1] >= threshold) if threshold is not None else int(np.argmax(probs))
            target = out[:, index]
        grads = tape.gradient(target, feature_maps)
        total = None
        for fm, grad, mirrored in zip(feature_maps, grads, self.mirrored, strict=False):
            weights = tf.reduce_mean(grad, axis=(1, 2), keepdims=True)
            cam = tf.reduce_sum(weights * fm, axis=-1)[0]
            if mirrored:
                cam = tf.reverse(cam, axis=[1])
            total = cam if total is None else total + cam
        cam = tf.nn.relu(total).numpy()
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else np.zeros_like(cam)
        label = self.classes[index]
        return Explanation(
            cam=cam.astype("float32"),
            label=label,
            probability=float(probs[1] if self.threshold is not None else probs[index]),
            probabilities=dict(zip(self.classes, (float(p) for p in probs), strict=True)),
        )


@dataclass(frozen=True)
class Explanation:
    cam: Any  # float32 [h, w] in 0..1
    label: str
    probability: float  # as the model answers it: P(positive) for two classes, else P(label)
    probabilities: dict[str, float]


_POOLING_OPS = ("Mean", "Max")


def _final_feature_maps(graph, output) -> list:
    """The inputs of the final global poolings (rank-4 Mean/Max) feeding `output`: one per backbone pass.

    Squeeze-and-excitation blocks pool too, but inside the backbone: a pooling that feeds
    another pooling is not final.
    """
    ancestors = _ancestors(output)
    pools = []
    for op in graph.get_operations():
        if op.type not in _POOLING_OPS or op.name not in ancestors or not op.inputs:
            continue
        x = op.inputs[0]
        if x.shape.rank != 4 or not x.dtype.is_floating:
            continue
        h, w = x.shape[1], x.shape[2]
        if h is not None and w is not None and h * w <= 1:
            continue
        pools.append(op)
    upstream = {op.name: _ancestors(op.outputs[0]) for op in pools}
    final = [
        op.inputs[0] for op in pools if not any(other is not op and op.name in upstream[other.name] for other in pools)
    ]
    if not final:
        raise ExplainError(
            "The model has no global pooling over a feature map, so Grad-CAM has nothing to weight.",
            hint="Grad-CAM needs a convolutional backbone followed by global pooling.",
        )
    return final


def _is_mirrored(tensor) -> bool:
    """Does the path from the pixels to `tensor` reverse the width axis an odd number of times?"""
    from tensorflow.python.framework import tensor_util

    flips = 0
    for name in _ancestors(tensor):
        op = tensor.graph.get_operation_by_name(name)
        if op.type != "ReverseV2":
            continue
        try:
            axes = {int(a) % 4 for a in tensor_util.constant_value(op.inputs[1]).reshape(-1)}
        except (TypeError, AttributeError, ValueError):
            continue
        if 2 in axes:
            flips += 1
    return flips % 2 == 1


def _ancestors(tensor) -> set[str]:
    seen: set[str] = set()
    stack = [tensor.op]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


def overlay(image_bytes: bytes, cam, caption: str, alpha: float = 0.45):
    """The photo (upright, longest side MAX_SIDE) with the heatmap blended over it and a caption."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageOps

    image: Image.Image = Image.open(io.BytesIO(image_bytes))
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    heat = Image.fromarray((np.clip(cam, 0, 1) * 255).astype("uint8"), "L").resize(
        image.size, Image.Resampling.BILINEAR
    )
    colored = Image.fromarray(_colormap(np.asarray(heat)), "RGB")
    blended = Image.blend(image, colored, alpha)
    draw = ImageDraw.Draw(blended)
    box = draw.textbbox((6, 6), caption)
    draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    draw.text((6, 6), caption, fill=(255, 255, 255))
    return blended


def _colormap(gray):
    """uint8 [h,w] -> uint8 [h,w,3] with matplotlib's jet (blue = ignored, red = decisive)."""
    import numpy as np

    try:
        import matplotlib

        return (matplotlib.colormaps["jet"](gray)[..., :3] * 255).astype("uint8")
    except ImportError:  # a simple blue -> red ramp
        g = gray.astype("float32") / 255.0
        return (np.stack([g, 1 - np.abs(2 * g - 1), 1 - g], axis=-1) * 255).astype("uint8")


def explain_image(cam: GradCam, image_bytes: bytes, out_path: Path) -> dict[str, Any]:
    """Write the overlay PNG for one image; returns label, probability, probabilities and the path."""
    found = cam.explain(image_bytes)
    label = found.label
    out_path.parent.mkdir(parents=True, exist_ok=True)
    caption = f"{label}  P({label})={found.probabilities[label]:.2f}  (red: what says {label})"
    overlay(image_bytes, found.cam, caption).save(out_path, "PNG")
    return {
        "label": label,
        "probability": found.probability,
        "probabilities": found.probabilities,
        "path": str(out_path),
    }


def check_can_explain(settings) -> None:
    """Raise now (missing TensorFlow, no exported model here) rather than after the predictions."""
    _tf()
    _model_for(settings, [])


def _model_for(settings, results: Sequence[dict[str, Any]]) -> Path:
    """The exported version that answered (its model_version) if it is on this machine, else the latest."""
    from pizzactl.deploy import state as state_mod

    dirs = [Path(settings.models_dir)]
    st = state_mod.load(settings)
    if st is not None and st.model_dir:
        dirs.insert(0, Path(st.model_dir))
    wanted = {int(r["model_version"]) for r in results if str(r.get("model_version", "")).isdigit()}
    for models_dir in dirs:
        for version, path in reversed(list_versions(models_dir)):
            if not wanted or version in wanted:
                return path
    try:
        return latest_version_dir(dirs[0])
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"--explain needs the exported model on this machine: {exc.message}",
            hint="Pass --models DIR (the directory that was deployed), or run `pizzactl train`.",
        ) from None


def explain_sources(settings, items, results: list[dict[str, Any]], out_dir: Path, endpoint: str | None = None) -> None:
    """Grad-CAM overlays for every source the endpoint classified; adds `explanation` to each result.

    A URL is fetched again here, under the gateway's policy (`serving.fetch`: public addresses
    only unless allow_private_urls, redirects checked hop by hop, size and type capped).
    """
    import re

    from pizzactl.serving.fetch import FetchPolicy, fetch_image_blocking

    cam = GradCam.load(_model_for(settings, results))
    log(f"Grad-CAM from {cam.version_dir} (feature map {cam.feature_tensor}) -> {out_dir}")
    used: set[str] = set()
    policy = FetchPolicy(allow_private=settings.allow_private_urls)
    for item, result in zip(items, results, strict=False):
        if "error" in result:
            continue
        stem = (
            re.sub(r"[^A-Za-z0-9._-]+", "_", Path(item.path.name if item.path else item.text.rsplit("/", 1)[-1]).stem)
            or "image"
        )
        name, n = f"{stem}.gradcam.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.gradcam.png"
        used.add(name)
        try:
            data = item.path.read_bytes() if item.path else fetch_image_blocking(item.text, policy)
            explain_image(cam, data, Path(out_dir) / name)
            result["explanation"] = str(Path(out_dir) / name)
        except Exception as exc:  # one bad image must not lose the other overlays
            result["explanation_error"] = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
