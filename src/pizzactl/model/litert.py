"""Faster runtimes for the builtin model server, converted at export beside the SavedModel.

`pizzactl export` (and `train`) converts the classifier for LiteRT (XNNPACK on CPU) into the
version directory, under `assets.extra/litert/` (TF Serving ignores assets.extra, so the same
version still serves there). Two artefacts: `litert`, float32 (the same arithmetic, reordered),
and `litert-int8`, weights and activations quantized to 8 bits with a float interface
(calibrated on training images), which is what makes XNNPACK roughly twice as fast on x86.

Each artefact is checked against the SavedModel through the model server's own runtime
(`LiteRTRuntime`, the same decoding and the same outputs) by `judge`, a one-sided rule: the
artefact may not be *worse* on the held-out photos than the sample can resolve (an exact
one-sided sign test on the photos whose answer it flips each way), and its |dp| at a percentile
over every photo compared must be within its tolerance (docs/serve.md says why). What was
checked, and why an artefact failed, is written to pizzactl.json under `runtimes`. The model server's `auto` runs only artefacts that
passed; one that failed stays in the version for whoever asks for it by name (`--runtime
litert-int8`: an informed opt-in, `pizzactl evaluate --runtime` measures it), unless its outputs
are not even finite numbers. `tf.lite.TFLiteConverter.from_keras_model` is used because a conversion from a
concrete function with unfrozen variables produced NaN (issue 14).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pizzactl.console import log
from pizzactl.model.card import ModelCard
from pizzactl.model.runtimes import LITERT, LiteRTRuntime, TensorFlowRuntime, decoder
from pizzactl.model.store import METADATA_DIR
from pizzactl.tfimport import LITERT_NOISE, NOISE, native_stderr_filtered

# |dp| (every class's probability, the largest per photo) at a percentile over the check and
# held-out photos. Float32 is the same arithmetic reordered: every photo within 1e-4, or the
# conversion is wrong. int8 moves in steps of 1/256 and an odd photo near a saturated unit moves
# more; what decides a label is counted by the sign test, so |dp| bounds the typical photo (p95).
TOLERANCE = {"litert": 1e-4, "litert-int8": 0.05}
PERCENTILE = {"litert": 100.0, "litert-int8": 95.0}
ALPHA = 0.05  # one-sided: refused when "no worse" has below 5% probability given the flips seen
MAX_HOLDOUT = 500
MAX_CALIBRATION = 100
DEFAULT_RUNTIMES = tuple(TOLERANCE)


def tflite_model(classifier, int8: bool = False, calibration=None) -> bytes:
    """The Keras classifier (float32 [N,S,S,3] 0..255 in) as a LiteRT flatbuffer."""
    import numpy as np
    import tensorflow as tf

    def representative():
        for pixels in calibration:
            yield [np.asarray(pixels, np.float32)[None]]

    # Keras prints the SavedModel it writes on the way ("Saved artifact at ...", then a TensorSpec
    # line per captured variable: ~650 lines for EfficientNet-Lite2) to stdout, which holds
    # `--json` answers, and a user has no use for them: they go to the debug log only.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings(), native_stderr_filtered(NOISE, LITERT_NOISE):
        warnings.filterwarnings("ignore", "Statistics for quantized inputs")  # float I/O by design
        converter = tf.lite.TFLiteConverter.from_keras_model(classifier)
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
        try:
            return converter.convert()
        finally:
            logging.getLogger(__name__).debug("the converter printed:\n%s", printed.getvalue())


def _pixels(images: Sequence[bytes], size: int):
    import tensorflow as tf

    return decoder(size)(tf.constant(list(images), dtype=tf.string)).numpy() if images else []


def convert_runtimes(
    version_dir: Path,
    classifier,
    check_images: Sequence[bytes],
    *,
    holdout: Sequence[tuple[bytes, int]] = (),
    calibration: Sequence[bytes] = (),
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    max_calibration: int = MAX_CALIBRATION,
) -> dict[str, dict[str, Any]]:
    """Convert, check and keep (or drop) each runtime's artefact; returns pizzactl.json's `runtimes`.

    `holdout`: (image bytes, class index) pairs the classifier was not trained on; `calibration`:
    training images for the int8 ranges (the check images when none are given), at most
    `max_calibration` of them drawn across the whole list (`calibration_sample`).
    """
    if not runtimes:
        return {}
    import numpy as np

    card = ModelCard.load(version_dir)
    size, classes = int(card.image_size or 0), list(card.classes)
    holdout = list(holdout)[:MAX_HOLDOUT]
    reference = TensorFlowRuntime.load(version_dir, 0)
    check = {"check": list(check_images), "holdout": [image for image, _ in holdout]}
    want = {k: _answers(reference, v, classes) for k, v in check.items()}
    truth = np.array([label for _, label in holdout])
    calibration_pixels = _pixels(calibration_sample(calibration, max_calibration) or list(check_images), size)
    out = {}
    for name in runtimes:
        out[name] = _convert_one(name, version_dir, classifier, calibration_pixels, check, want, truth, classes)
        verdict = "kept" if out[name]["ok"] else f"left out: {out[name]['reason']}"
        log(f"{name}: {verdict}")
    return out


def calibration_sample(images: Sequence[bytes], n: int = MAX_CALIBRATION) -> list[bytes]:
    """At most `n` of `images`, drawn from the whole list (a fixed seed), in their order.

    Not its first `n`: a training split lists its photos class by class, and int8's ranges
    calibrated on one class clip the other's activations. Issue 25: 400 photos asked, the first
    100 kept were all not_pizza, and the int8 Lite2 answered not_pizza for every held-out photo
    (accuracy 0.50, the class share). Random rather than every k-th photo: a list that alternates
    classes (run_split's) taken every 2nd photo is one class again.
    """
    images = list(images)
    if len(images) <= n:
        return images
    import random

    return [images[i] for i in sorted(random.Random(0).sample(range(len(images)), n))]


def _answers(runtime, images: Sequence[bytes], classes: list[str]):
    """`serving_default`'s (probabilities [N, K], index of the answered label [N]) on the images."""
    import numpy as np

    probabilities, labels = np.zeros((0, len(classes)), np.float32), np.zeros(0, int)
    name = runtime.input_names("serving_default")[0]
    for i in range(0, len(images), 32):
        res = runtime.run("serving_default", {name: list(images[i : i + 32])})
        probabilities = np.concatenate([probabilities, res["probabilities"]])
        labels = np.concatenate([labels, [classes.index(label.decode()) for label in res["label"]]])
    return probabilities, labels


def _convert_one(name, version_dir, classifier, calibration, check, want, truth, classes) -> dict[str, Any]:
    import numpy as np

    try:
        import ai_edge_litert  # noqa: F401 - the engine the check (and the model server) runs it on
    except ImportError:
        return {"ok": False, "reason": "ai-edge-litert is not installed (pip install ai-edge-litert)"}
    try:
        data = tflite_model(classifier, int8=name == "litert-int8", calibration=calibration)
    except Exception as exc:  # the converter raises many types for an op it cannot lower
        return {"ok": False, "reason": f"conversion failed: {type(exc).__name__}: {str(exc)[:300]}"}
    target = Path(version_dir) / METADATA_DIR / LITERT[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    with native_stderr_filtered(LITERT_NOISE):
        runtime = LiteRTRuntime.load(Path(version_dir), 0, name, threads=2)
    got = {k: _answers(runtime, v, classes) for k, v in check.items()}
    compared = [k for k in check if len(check[k])]
    per_photo = np.concatenate([np.max(np.abs(got[k][0] - want[k][0]), axis=1) for k in compared] or [np.zeros(0)])
    entry: dict[str, Any] = {"file": str(Path(METADATA_DIR) / LITERT[name]), "bytes": len(data)}
    entry["max_abs_diff"] = float(per_photo.max()) if len(per_photo) else float("nan")
    refused = judge(name, per_photo, want["holdout"][1] == truth, got["holdout"][1] == truth, entry)
    if not all(np.all(np.isfinite(p)) for p, _ in got.values()):  # a broken conversion: nobody should run it
        target.unlink()
        entry.pop("file")
        refused.insert(0, "outputs that are not finite numbers")
    if refused:
        return {**entry, "ok": False, "reason": "; ".join(refused)}
    return {**entry, "ok": True}


def judge(name: str, abs_diff, reference_right, runtime_right, entry: dict[str, Any]) -> list[str]:
    """Why the artefact `name` is refused (empty: accepted); its evidence is added to `entry`.

    `abs_diff`: the largest |dp| of each photo compared; `reference_right`, `runtime_right`: per
    held-out photo, whether the SavedModel's and the artefact's labels are the true class. Only
    the photos answered differently tell the two apart: `worse` the artefact gets wrong where the
    SavedModel was right, `better` the other way. If the artefact were no worse, each such photo
    would fall either way with probability 1/2 at most, so P(at least `worse` of them against it)
    is a binomial tail: below ALPHA, the sample shows it worse and it is refused. More right
    answers never count against it, and a flip or two among hundreds is within what the sample
    can tell from chance (3 worse, 0 better: p = 0.125).
    """
    import numpy as np

    problems = []
    q, tolerance = PERCENTILE[name], TOLERANCE[name]
    at = float(np.percentile(abs_diff, q)) if len(abs_diff) else float("nan")
    entry["abs_diff"] = {f"p{q:g}": at, "p50": float(np.median(abs_diff)) if len(abs_diff) else float("nan")}
    entry["abs_diff"]["n"] = len(abs_diff)
    if not at <= tolerance:  # also NaN
        problems.append(f"|dp| {at:.3g} at the {q:g}th percentile of {len(abs_diff)} photos > {tolerance:g}")
    n = len(reference_right)
    if n:
        worse = int(np.sum(reference_right & ~runtime_right))
        better = int(np.sum(~reference_right & runtime_right))
        p_worse = binomial_tail(worse, worse + better)
        entry["holdout_accuracy"] = {
            "savedmodel": float(np.mean(reference_right)),
            name: float(np.mean(runtime_right)),
            "n": n,
        }
        entry["flips"] = {"worse": worse, "better": better, "p_worse": p_worse}
        if p_worse < ALPHA:
            problems.append(
                f"worse on held-out photos: {worse} wrong that the SavedModel got right, {better} the other way"
                f" (one-sided p = {p_worse:.3g} < {ALPHA:g}, {n} photos)"
            )
    elif name == "litert-int8":
        problems.append("no held-out images to check its accuracy on")
    return problems


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): the exact one-sided sign (McNemar) test's p-value."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n if n else 1.0
