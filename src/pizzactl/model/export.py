"""Export a trained classifier as a TF Serving SavedModel version, checked and published atomically.

The exported graph is the model contract (README, "The model contract"):

* `serving_default(image_bytes: tf.string [None])` decodes and resizes each image with
  `pizzactl.model.decode.decode_resize` (the function training used) and runs the classifier,
  whose own preprocessing is inside it;
* `serving_pixels(pixels: uint8 [None, S, S, 3])` skips the decoding;
* both return `label` (tf.string [None]), `probability` (float32 [None]) and `probabilities`
  (float32 [None, K], one column per class in `classes` order). With two classes `probability`
  is P(classes[1]) and the label follows the threshold, as the binary pizza model always did;
  with more, the label is the most probable class and `probability` is its probability.

An export is written to `MODELS/pizza/.tmp-<pid>-<id>` (TF Serving ignores non-integer names),
reloaded and compared with the in-memory classifier on real image bytes, and only then renamed
to `MODELS/pizza/<next int>`. A crash or a failed check never leaves a version directory behind.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from pizzactl import __version__
from pizzactl.config import MODEL_NAME
from pizzactl.console import log
from pizzactl.errors import ExportError
from pizzactl.model.card import ModelCard
from pizzactl.model.contract import (
    DEFAULT_CLASSES,
    check_classes,
    expected_outputs,
    label_rule,
    signature_info,
)
from pizzactl.model.decode import decode_resize
from pizzactl.model.litert import DEFAULT_RUNTIMES, convert_runtimes
from pizzactl.model.store import TMP_PREFIX, fsync_tree, model_base, publish_version
from pizzactl.pids import pid_alive

STALE_AFTER_S = 6 * 3600  # a temp dir this old is abandoned even if its pid was reused
DEFAULT_ATOL = 1e-4


def infer_image_size(classifier) -> int | None:
    """The classifier's square input size, if its input shape says it."""
    try:
        shape = classifier.inputs[0].shape
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
        return int(shape[1])
    return None


def _check_output_width(classifier, classes: Sequence[str]) -> None:
    """One sigmoid unit for two classes, or one softmax unit per class: anything else cannot be labelled."""
    try:
        width = classifier.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError):
        return  # not a functional Keras model: the self-check compares what it answers
    n = len(classes)
    if width is not None and not (width == n or (n == 2 and width == 1)):
        raise ExportError(
            f"The model answers {width} probabilities per image but the metadata names {n} classes {list(classes)}.",
            hint="Export with the classes the model was trained on, in its output order.",
        )


def build_serving_module(classifier, image_size: int, classes: Sequence[str], threshold: float | None):
    """A tf.Module carrying the classifier and the two serving signatures."""
    import tensorflow as tf

    size, n = int(image_size), len(classes)
    names = tf.constant([str(c) for c in classes])

    def probabilities(pixels):
        """[N, K] in `classes` order: a sigmoid's P(classes[1]) becomes (1 - p, p)."""
        p = classifier(pixels, training=False)
        if isinstance(p, (list, tuple)):
            p = p[0]
        p = tf.cast(p, tf.float32)
        if n == 2 and (p.shape.rank == 1 or p.shape[-1] == 1):
            p = tf.reshape(p, [-1])
            return tf.stack([1.0 - p, p], axis=1)
        return tf.reshape(p, [-1, n])

    def outputs(probs):
        if n == 2:  # the binary contract: P(classes[1]) and the threshold
            p = probs[:, 1]
            label = tf.where(p >= float(threshold if threshold is not None else 0.5), names[1], names[0])
        else:
            index = tf.argmax(probs, axis=1, output_type=tf.int32)
            p = tf.gather(probs, index, batch_dims=1)
            label = tf.gather(names, index)
        return {
            "probability": tf.identity(p, name="probability"),
            "label": tf.identity(label, name="label"),
            "probabilities": tf.identity(probs, name="probabilities"),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels = tf.map_fn(
            lambda b: decode_resize(b, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        # oneDNN convolutions reject an empty batch: answer `instances: []` without the model.
        # (Only here: serving_pixels stays free of control flow, so it can be frozen and pruned
        # for Grad-CAM, see pizzactl.explain.)
        return outputs(
            tf.cond(tf.size(image_bytes) > 0, lambda: probabilities(pixels), lambda: tf.zeros([0, n], tf.float32))
        )

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    def serving_pixels(pixels):
        return outputs(probabilities(tf.cast(pixels, tf.float32)))

    module = tf.Module(name="pizzactl")
    module.classifier = classifier
    module.serving_default = serving_default
    module.serving_pixels = serving_pixels
    return module


def synthetic_check_images(image_size: int = 64, n: int = 3) -> list[bytes]:
    """Deterministic JPEG/PNG images for the self-check when no real photo is at hand."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        h, w = image_size + 17 * i, image_size + 31 * i
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 255 // (h + w)], -1)
        arr = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG" if i % 2 else "JPEG")
        images.append(buf.getvalue())
    return images


def verify_export(saved_dir: Path | str, classifier, check_images: Sequence[bytes], atol: float = DEFAULT_ATOL) -> dict:
    """Reload an exported SavedModel and check it against the in-memory classifier.

    Both signatures must exist and agree with `classifier` on the same pixels (the images decoded
    by `decode_resize`, and those pixels rounded to uint8 for `serving_pixels`) within `atol`,
    and the labels must be what the contract says (the threshold, or the most probable class).
    Raises ExportError otherwise; returns a summary.
    """
    import numpy as np
    import tensorflow as tf

    saved_dir = Path(saved_dir)
    card = ModelCard.load(saved_dir)
    size, threshold = int(card.image_size or 0), card.threshold
    classes = list(card.classes)
    if not check_images:
        raise ExportError(
            "The export self-check needs at least one image.", hint="Pass some JPEG/PNG bytes as check_images."
        )
    loaded = tf.saved_model.load(str(saved_dir))
    missing = {"serving_default", "serving_pixels"} - set(loaded.signatures)
    if missing:
        raise ExportError(
            f"The exported model lacks signature(s) {', '.join(sorted(missing))}.", hint="This is a bug in pizzactl."
        )

    def expected(pixels):
        return expected_outputs(classifier(pixels, training=False), classes, threshold)

    pixels = tf.stack([decode_resize(tf.constant(b), size) for b in check_images])
    as_uint8 = tf.cast(tf.round(pixels), tf.uint8)
    pairs = (
        (loaded.signatures["serving_default"](image_bytes=tf.constant(list(check_images))), expected(pixels)),
        (loaded.signatures["serving_pixels"](pixels=as_uint8), expected(tf.cast(as_uint8, tf.float32))),
    )
    diffs = []
    for got, want in pairs:
        diffs.append(
            max(
                float(np.max(np.abs(got[key].numpy() - want[key]))) if len(want[key]) else 0.0
                for key in ("probability", "probabilities")
            )
        )
    if not all(d <= atol for d in diffs):  # also catches NaN
        raise ExportError(
            f"The exported model disagrees with the trained one (max |diff| {diffs[0]:.3g} on image bytes, "
            f"{diffs[1]:.3g} on pixels; tolerance {atol:g}); not published.",
            hint="The classifier is not deterministic at inference or did not save faithfully; run with --debug and report it.",
        )
    for got, _ in pairs:
        labels = [x.decode() for x in got["label"].numpy()]
        wanted = expected_outputs(got["probabilities"].numpy(), classes, threshold)["label"]
        if labels != wanted:
            raise ExportError(
                f"Exported labels {labels} do not follow their probabilities: expected {wanted}.",
                hint="This is a bug in pizzactl.",
            )
    return {"n_images": len(check_images), "max_abs_diff": max(diffs), "atol": atol}


def clean_stale_temps(base: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove temp dirs left by exports that died (their pid is gone) or are very old."""
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    now = time.time()
    for child in base.iterdir():
        if not (child.is_dir() and child.name.startswith(TMP_PREFIX)):
            continue
        pid_text = child.name[len(TMP_PREFIX) :].split("-", 1)[0]
        dead = pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text))
        try:
            old = now - child.stat().st_mtime > older_than_s
        except FileNotFoundError:
            continue
        if dead or old:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def build_metadata(metadata: Mapping, image_size: int, name: str) -> ModelCard:
    """The new version's card: `metadata` (anything in it is kept) with the contract's fields."""
    import keras
    import tensorflow as tf

    classes = check_classes(metadata.get("classes") or DEFAULT_CLASSES)
    positive_class, threshold = label_rule(classes, metadata.get("threshold"))
    return ModelCard.build(
        **{
            "backbone": None,
            "weights": None,
            "metrics": {},
            "data_hash": None,
            **metadata,
            "name": name,
            "image_size": int(image_size),
            "classes": classes,
            "positive_class": positive_class,
            "threshold": threshold,
            "pizzactl_version": __version__,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "signatures": signature_info(int(image_size), len(classes)),
        }
    )


def export_model(
    classifier,
    models_dir: Path | str,
    metadata: dict,
    check_images: Sequence[bytes],
    name: str = MODEL_NAME,
    *,
    atol: float = DEFAULT_ATOL,
    holdout: Sequence[tuple[bytes, int]] = (),
    calibration: Sequence[bytes] = (),
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
) -> Path:
    """Export `classifier` (float32 [N,S,S,3] 0..255 -> [N, 1] P(classes[1]) or [N, K]) as the next version.

    `metadata` should hold backbone, image_size, classes, threshold, metrics, data_hash, weights;
    anything else in it is kept. `check_images` are encoded images for the self-check (synthetic
    ones are used if empty). `runtimes` are converted beside the SavedModel and kept if they agree
    with it (`pizzactl.model.litert`): on the check images, and on `holdout` (image bytes, class index)
    pairs for accuracy; `calibration` (training images) sets the int8 ranges.
    """
    import tensorflow as tf

    inferred = infer_image_size(classifier)
    image_size = metadata.get("image_size") or inferred
    if not image_size:
        raise ExportError("Cannot tell the model's input size.", hint="Put image_size in the export metadata.")
    if inferred and int(image_size) != inferred:
        raise ExportError(
            f"The metadata says image_size {image_size} but the model takes {inferred} x {inferred} pixels.",
            hint="Export with the image_size the model was built for.",
        )
    card = build_metadata(metadata, int(image_size), name)
    _check_output_width(classifier, card.classes)
    base = model_base(models_dir, name)
    base.mkdir(parents=True, exist_ok=True)
    for stale in clean_stale_temps(base):
        log(f"Removed {stale} left by an interrupted export.")
    tmp = base / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        module = build_serving_module(classifier, int(image_size), card.classes, card.threshold)
        tf.saved_model.save(
            module,
            str(tmp),
            signatures={"serving_default": module.serving_default, "serving_pixels": module.serving_pixels},
        )
        card.save(tmp)
        images = list(check_images) or synthetic_check_images(int(image_size))
        card = card.replace(self_check=verify_export(tmp, classifier, images, atol=atol))
        card = card.replace(
            runtimes=convert_runtimes(
                tmp, classifier, images, holdout=holdout, calibration=calibration, runtimes=runtimes
            )
        )
        card.save(tmp)
        fsync_tree(tmp)
        version_dir = publish_version(tmp, base.parent, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check = card.self_check or {}
    log(f"Exported {version_dir} (self-check on {check['n_images']} images, max |diff| {check['max_abs_diff']:.2g}).")
    return version_dir
