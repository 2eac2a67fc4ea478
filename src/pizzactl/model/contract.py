"""The model contract's rules, in plain Python: what the two signatures take and answer, and how
a classifier's raw output becomes their answer (README, "The model contract").

An export writes `signature_info` into pizzactl.json and builds the same rules into its graph
(`pizzactl.model.export.build_serving_module`); `expected_outputs` is the numpy twin that the
export's self-check compares against and that any runtime running the bare classifier (LiteRT)
answers with. Two classes: `probability` is P(classes[1]) and the label follows the threshold;
more: the label is the most probable class and `probability` its probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pizzactl.errors import ExportError

SIGNATURE = "serving_default"  # image bytes in, decoded in the graph
PIXELS_SIGNATURE = "serving_pixels"  # uint8 pixels in, already the model's size
DEFAULT_CLASSES = ("not_pizza", "pizza")
DEFAULT_THRESHOLD = 0.5


def signature_info(image_size: int, n_classes: int = 2) -> dict[str, Any]:
    """What the two signatures take and return, as written into the metadata."""
    outputs = {
        "probability": {"dtype": "float32", "shape": [None]},
        "label": {"dtype": "string", "shape": [None]},
        "probabilities": {"dtype": "float32", "shape": [None, int(n_classes)]},
    }
    return {
        "serving_default": {"inputs": {"image_bytes": {"dtype": "string", "shape": [None]}}, "outputs": outputs},
        "serving_pixels": {
            "inputs": {"pixels": {"dtype": "uint8", "shape": [None, image_size, image_size, 3]}},
            "outputs": outputs,
        },
    }


def check_classes(classes: Sequence[str]) -> list[str]:
    """The class names as text, if a classifier can have them: two or more, all different."""
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ExportError(
            f"A classifier needs two or more distinct classes, got {classes}.",
            hint="Pass the class names in the metadata: classes=[...] (their order is the model's output order).",
        )
    return classes


def label_rule(classes: Sequence[str], threshold: float | None) -> tuple[str | None, float | None]:
    """(positive_class, threshold) as pizzactl.json records them: classes[1] and the threshold
    (0.5 unless given) for two classes; neither for more (the most probable class wins)."""
    if len(classes) != 2:
        return None, None
    return str(classes[1]), DEFAULT_THRESHOLD if threshold is None else float(threshold)


def expected_outputs(raw, classes: Sequence[str], threshold: float | None) -> dict[str, Any]:
    """What the signatures answer for the classifier's raw output, in numpy (the export's
    self-check, and any runtime that runs the classifier without the SavedModel's graph)."""
    import numpy as np

    raw = np.asarray(raw[0] if isinstance(raw, (list, tuple)) else raw, dtype=np.float32)
    n = len(classes)
    if n == 2 and (raw.ndim == 1 or raw.shape[-1] == 1):
        p = raw.reshape(-1)
        probs = np.stack([np.float32(1.0) - p, p], axis=1)
    else:
        probs = raw.reshape(-1, n)
    if n == 2:
        probability = probs[:, 1]
        labels = [
            str(classes[1]) if q >= (0.5 if threshold is None else threshold) else str(classes[0]) for q in probability
        ]
    else:
        index = np.argmax(probs, axis=1)
        probability = probs[np.arange(len(probs)), index]
        labels = [str(classes[i]) for i in index]
    return {"probability": probability, "label": labels, "probabilities": probs}
