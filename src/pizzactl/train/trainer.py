"""Training one backbone into a run directory; several backbones into a leaderboard.

Two ways to train, chosen by the backbone:

* pretrained (transfer learning): the frozen backbone's features of every image and view are
  computed once and cached (`features.FeatureCache`); a small head (dropout + dense sigmoid)
  trains on them in milliseconds per epoch. Augmentation is extra cached views (crops, flips,
  colour). A fine-tuning phase (the recipe's or --fine-tune-epochs) then trains the top of the
  backbone at a low learning rate, BatchNormalization layers staying frozen (inference mode).
  Backbones with a `tune_from` layer (EfficientNet-Lite) cache the maps at that layer instead
  of pooled features and fine-tune the layers after it on them (`fine_tune_cached`); the others
  fine-tune over decoded images (`fine_tune`).
* from scratch (`pretrained=False`, e.g. small_cnn): end to end on decoded images with
  on-the-fly augmentation and a warm-up + cosine learning-rate schedule.

Head and from-scratch training stop early on validation loss and restore the best epoch;
fine-tuning keeps its result only if it lowers the validation loss. The classifier that is
saved (`model.keras`) and exported averages the model over the image and its mirror image
(test-time flip), inside the graph, so serving computes exactly what validation measured.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pizzactl import __version__
from pizzactl.console import err
from pizzactl.errors import UsageError
from pizzactl.train.metrics import THRESHOLD, loss_and_accuracy, validation_metrics


@dataclass(frozen=True)
class Recipe:
    """Training defaults that belong to a backbone rather than to a flag.

    A flag or setting the user gave explicitly (`--epochs`, `--image-size`) always wins; these
    replace only the built-in defaults.
    """

    image_size: int | None = None  # None: the backbone's input size
    epochs: int | None = None  # None: settings.epochs
    lr: float = 1e-3  # the head (frozen path) or the whole network (from scratch)
    dropout: float = 0.2
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    patience: int = 5
    augmented_views: int = 4  # frozen path: cached augmented views per image
    fine_tune_epochs: int | None = None  # None: settings.fine_tune_epochs (0: no fine-tuning)
    fine_tune_lr: float = 1e-4
    fine_tune_layers: int | None = None  # None: the registry entry's `fine_tune_layers`
    fine_tune_patience: int = 2
    # Fine-tuning on cached maps (backbones with `tune_from`): the weights kept are the mean of
    # the epochs' weights from this epoch on (stochastic weight averaging, Izmailov et al. 2018).
    fine_tune_average_from: int = 2
    tta: bool = True  # average over the image and its mirror image, in the exported graph
    crop_min_area: float = 0.35  # from scratch: smallest random crop, as a fraction of the image area
    label_smoothing: float = 0.0  # from scratch: targets 0/1 become eps/2 and 1 - eps/2
    # Model (serving) size / training size. Random-resized crops make objects look bigger in
    # training than in a full test image; testing at a higher resolution than training undoes
    # that ("FixRes", Touvron et al. 2019). The backbones are fully convolutional with global
    # pooling, so the same weights train (or compute cached features) at the smaller size and
    # are exported at the larger one. See `model_and_crop_size`.
    test_size_factor: float = 1.0
    head_seeds: int = 1  # frozen path: train this many heads (seeds seed, seed+1, ...) and average them


SCRATCH_RECIPE = Recipe(epochs=40, lr=2e-3, dropout=0.3, weight_decay=5e-4, warmup_epochs=3, patience=12)
# EfficientNet-Lite: features of 224 px views, model at 256 px, 5 averaged heads, then 6 epochs
# of fine-tuning the last block and the top conv on cached maps of 10 views per photo (plain,
# flip, 8 augmented), keeping the mean of epochs 3..6. Measured on the shared photos: FixRes
# +0.5 points (held-out 15%; 5-fold CV agrees), head averaging removes most of the +-0.7 point
# seed noise; fine-tuning (5-fold CV on all 1571 photos, see README) +0.5 points on 6 views,
# about +1 on 10 (fine-tuning memorises fixed views: more of them is what makes it pay).
LITE_RECIPE = Recipe(
    test_size_factor=1.15, head_seeds=5, augmented_views=8, fine_tune_epochs=6, fine_tune_average_from=3
)
RECIPES: dict[str, Recipe] = {
    **{name: LITE_RECIPE for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")},
    "small_cnn": Recipe(
        image_size=128,
        epochs=40,
        lr=2e-3,
        dropout=0.3,
        weight_decay=5e-4,
        warmup_epochs=3,
        patience=12,
        crop_min_area=0.5,
        label_smoothing=0.1,
        test_size_factor=1.15,
    ),
}


def recipe_for(backbone) -> Recipe:
    """The backbone's recipe: its registry entry's `recipe` if it has one, else ours."""
    own = getattr(backbone, "recipe", None)
    if isinstance(own, Recipe):
        return own
    if backbone.name in RECIPES:
        return RECIPES[backbone.name]
    return Recipe() if backbone.pretrained else SCRATCH_RECIPE


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One backbone's training run."""

    run_id: str
    run_dir: Path
    backbone: str
    metrics: dict
    config: dict
    train_seconds: float

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics["val_accuracy"])

    def as_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "backbone": self.backbone,
            "weights": self.config.get("weights"),
            "image_size": self.config.get("image_size"),
            "val_accuracy": m.get("val_accuracy"),
            "val_f1": m.get("val_f1"),
            "val_roc_auc": m.get("val_roc_auc"),
            "val_loss": m.get("val_loss"),
            "train_seconds": self.train_seconds,
        }


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the leaderboard (best first) and the exported version of the best."""

    leaderboard: tuple[RunResult, ...]
    model_dir: Path | None
    total_seconds: float
    classes: tuple[str, ...] = ()
    features: dict = field(default_factory=dict)  # {"computed": n, "reused": n} feature-cache views

    @property
    def best(self) -> RunResult:
        return self.leaderboard[0]

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "run_id": best.run_id,
            "run_dir": str(best.run_dir),
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "version": int(self.model_dir.name) if self.model_dir and self.model_dir.name.isdigit() else None,
            "backbone": best.backbone,
            "weights": best.config.get("weights"),
            "image_size": best.config.get("image_size"),
            "classes": list(self.classes),
            "val_accuracy": best.val_accuracy,
            "train_seconds": best.train_seconds,
            "total_seconds": self.total_seconds,
            "metrics": best.metrics,
            "features": self.features,
            "leaderboard": [r.as_dict() for r in self.leaderboard],
        }


# --- logging and progress -------------------------------------------------------------------


class RunLog:
    """Writes each line to the run's train.log and to stderr; owns the progress bars."""

    def __init__(self, path: Path | None, show_progress: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.path = path
        self._fh = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - closed by close()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not show_progress,
        )

    def __enter__(self) -> RunLog:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if self._fh:
            self._fh.close()

    def __call__(self, message: str) -> None:
        if self._fh:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%H:%M:%S")
            self._fh.write(f"{stamp} {message}\n")
            self._fh.flush()
        self.progress.console.print(message, highlight=False, markup=False)

    def bar(self, description: str, total: int) -> Callable[[int], None]:
        """A progress bar; returns `advance(n)`. The bar disappears when it is full."""
        task = self.progress.add_task(description, total=total)
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n
            if done[0] >= total:
                self.progress.remove_task(task) if task in self.progress.task_ids else None
            else:
                self.progress.advance(task, n)

        return advance


def _epoch_logger(phase: str, total_epochs: int, runlog: RunLog, rows: list, steps: int | None = None):
    import keras

    class EpochLog(keras.callbacks.Callback):
        """One line per epoch (stderr and train.log) and one row per epoch for history.csv."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            self._advance = runlog.bar(f"{phase} epoch {epoch + 1}/{total_epochs}", steps) if steps else None

        def on_train_batch_end(self, batch, logs=None):
            if self._advance:
                self._advance(1)

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = logs.pop("learning_rate", None)
            if lr is None:
                try:
                    lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                except Exception:  # pragma: no cover - schedules without a value
                    lr = None
            row = {"phase": phase, "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, "learning_rate": lr}
            rows.append(row)
            shown = "  ".join(f"{k} {float(v):.4f}" for k, v in logs.items())
            runlog(f"[{phase}] epoch {epoch + 1}/{total_epochs}  {shown}  ({time.perf_counter() - self._start:.1f}s)")

    return EpochLog()


# --- building blocks ------------------------------------------------------------------------


def build_head(dim: int, dropout: float):
    import keras

    return keras.Sequential(
        [
            keras.Input((dim,), name="features"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(1, activation="sigmoid", name="probability"),
        ],
        name="head",
    )


def build_classifier(extractor, head, image_size: int, tta: bool = True):
    """float32 [N,S,S,3] 0..255 -> [N,1] P(positive); with `tta`, the mean over the image and its mirror."""
    import keras

    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    p = head(extractor(pixels))
    if tta:
        mirrored = head(extractor(keras.ops.flip(pixels, axis=2)))
        p = keras.layers.Average(name="flip_average")([p, mirrored])
    return keras.Model(pixels, p, name="classifier")


def head_validation(x_val, y_val):
    """A callback that scores the head on validation features in numpy, adding val_loss/val_accuracy.

    The head is dropout + dense sigmoid, so at inference it is `sigmoid(x @ W + b)`: no second
    TensorFlow graph to trace (which costs more than all the head's epochs together).
    """
    import keras
    import numpy as np

    x_val = np.asarray(x_val, np.float64)
    y_val = np.asarray(y_val, np.float64).ravel()

    class HeadValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel, bias = self.model.get_layer("probability").get_weights()
            p = 1.0 / (1.0 + np.exp(-(x_val @ kernel.astype(np.float64) + bias).ravel()))
            if logs is not None:
                logs["val_loss"], logs["val_accuracy"] = loss_and_accuracy(y_val, p, THRESHOLD)

    return HeadValidation()


def fit_head(
    x_train,
    y_train,
    x_val,
    y_val,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    dropout: float,
    patience: int,
    callbacks=(),
    seed: int = 42,
):
    """Train dropout + dense sigmoid on cached features; early stopping restores the best epoch."""
    import keras
    import tensorflow as tf

    head = build_head(int(x_train.shape[1]), dropout)
    steps = -(-len(x_train) // batch_size)
    head.compile(
        optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["accuracy"], steps_per_execution=steps
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    head.fit(data, epochs=epochs, verbose=0, shuffle=False, callbacks=[head_validation(x_val, y_val), stop, *callbacks])
    return head, stop


def fit_heads(
    x_train,
    y_train,
    x_val,
    y_val,
    *,
    n: int,
    epochs: int,
    batch_size: int,
    lr: float,
    dropout: float,
    patience: int,
    seed: int,
    runlog,
    rows: list,
):
    """`fit_head` with `n` seeds, weights averaged into one head.

    The head is linear, so the average of n heads is one head; it has the variance of one
    Adam + dropout + early-stopping run divided by about n (a single run's validation accuracy
    moves by +-0.7 points with the seed here). history.csv keeps the first head's epochs.
    """
    import keras
    import numpy as np

    heads = []
    for i in range(max(1, n)):
        keras.utils.set_random_seed(seed + i)  # each head reproducible on its own (dropout, init)
        callbacks = [_epoch_logger("head", epochs, runlog, rows)] if i == 0 else []
        head, stop = fit_head(
            x_train,
            y_train,
            x_val,
            y_val,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            dropout=dropout,
            patience=patience,
            callbacks=callbacks,
            seed=seed + i,
        )
        heads.append((head, stop.best_epoch + 1))
    if len(heads) > 1:
        layers = [h.get_layer("probability") for h, _ in heads]
        kernels, biases = zip(*(layer.get_weights() for layer in layers), strict=False)
        layers[0].set_weights([np.mean(kernels, axis=0), np.mean(biases, axis=0)])
        runlog(
            f"Averaged {len(heads)} heads (seeds {seed}..{seed + len(heads) - 1}, best epochs {[e for _, e in heads]})"
        )
    return heads[0][0]


def decode_images(paths: Sequence[Path], size: int, batch_size: int = 64, dtype: str = "float32", advance=None):
    """Decode and resize image files once (exactly as serving does) into one array."""
    import numpy as np

    from pizzactl.train.features import image_dataset

    chunks = []
    for batch in image_dataset(paths, size, batch_size, "plain"):
        chunks.append(batch.numpy().astype(dtype))
        if advance:
            advance(int(batch.shape[0]))
    return np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), dtype)


def batch_augment(images, seed, size: int, min_area: float = 0.35):
    """Random resized crop, horizontal flip and colour jitter for a batch of 0..255 pixels."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    n = tf.shape(images)[0]
    s = tf.random.experimental.stateless_split(seed, 8)
    scale = tf.sqrt(tf.random.stateless_uniform([n], s[0], min_area, 1.0))
    ratio = tf.exp(tf.random.stateless_uniform([n], s[1], -0.3, 0.3))
    h = tf.minimum(scale * tf.sqrt(ratio), 1.0)
    w = tf.minimum(scale / tf.sqrt(ratio), 1.0)
    y0 = tf.random.stateless_uniform([n], s[2]) * (1.0 - h)
    x0 = tf.random.stateless_uniform([n], s[3]) * (1.0 - w)
    boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
    images = tf.image.crop_and_resize(images, boxes, tf.range(n), [size, size])
    flip = tf.random.stateless_uniform([n, 1, 1, 1], s[4]) < 0.5
    images = tf.where(flip, tf.reverse(images, [2]), images)
    images = images * tf.random.stateless_uniform([n, 1, 1, 1], s[5], 0.75, 1.25) + tf.random.stateless_uniform(
        [n, 1, 1, 1], s[6], -25.0, 25.0
    )
    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = gray + tf.random.stateless_uniform([n, 1, 1, 1], s[7], 0.7, 1.3) * (images - gray)
    return tf.clip_by_value(images, 0.0, 255.0)


def _augmented_batches(x, y, *, batch_size: int, seed: int, augment: bool, size: int, min_area: float = 0.35):
    import tensorflow as tf

    ds = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (batch_augment(xy[0], s, size, min_area), xy[1]), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b))
    return ds.prefetch(tf.data.AUTOTUNE)


def _lr_schedule(base_lr: float, total_steps: int, warmup_steps: int):
    import keras

    if warmup_steps > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, max(1, total_steps - warmup_steps), alpha=0.02, warmup_target=base_lr, warmup_steps=warmup_steps
        )
    return keras.optimizers.schedules.CosineDecay(base_lr, max(1, total_steps), alpha=0.02)


# --- one run --------------------------------------------------------------------------------


def new_run_dir(runs_dir: Path, backbone: str) -> Path:
    """`runs/<UTC time>-<backbone>`, made unique with a counter if two start in the same second."""
    runs_dir = Path(runs_dir).expanduser()
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = runs_dir / (f"{stamp}-{backbone}" if n == 1 else f"{stamp}-{backbone}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError(f"Cannot create a run directory in {runs_dir}.")  # pragma: no cover


def _resolved(settings, name: str, recipe_value):
    """The setting if the user gave it (any layer but the default), else the recipe's value."""
    if settings.sources.get(name, "default") != "default" or recipe_value is None:
        return getattr(settings, name)
    return recipe_value


def resolve_weights(settings, backbone):
    """The run's weights: `--weights` for this backbone (the default 'imagenet' means random
    weights for a backbone that trains from scratch; an explicit one is an error)."""
    from pizzactl.train.backbones.weights import resolve_weights as resolve

    return resolve(settings.weights, backbone, explicit=settings.sources.get("weights", "default") != "default")


def model_and_crop_size(image_size: int | None, native: int, factor: float, minimum: int = 8) -> tuple[int, int]:
    """(model input size, training size) for a test/train resolution `factor` (FixRes).

    A given `image_size` (flag or recipe) is the model's: training then uses it / factor, to a
    multiple of 4 (128 / 1.15 -> 112). Otherwise training uses the backbone's `native` size and
    the model takes it x factor, to a multiple of 8 (224 x 1.15 -> 256). Never below `minimum`.
    """
    if factor == 1.0:
        size = int(image_size or native)
        return size, size
    if image_size:
        return int(image_size), min(int(image_size), max(minimum, round(image_size / factor / 4) * 4))
    return round(native * factor / 8) * 8, int(native)


def train_one(settings, backbone, dataset, train_records, val_records, *, cache, show_progress: bool = True):
    """Train `backbone` on the split into a new run directory; returns (RunResult, classifier)."""
    import keras
    import numpy as np

    from pizzactl.train import plots
    from pizzactl.train.backbones import split_at
    from pizzactl.train.features import compute_features, view_names

    start = time.perf_counter()
    recipe = recipe_for(backbone)
    weights = resolve_weights(settings, backbone)
    wid = weights.id
    epochs = int(_resolved(settings, "epochs", recipe.epochs))
    mode = "frozen" if backbone.pretrained else "scratch"
    size, fit_size = model_and_crop_size(
        settings.image_size or recipe.image_size, backbone.input_size, recipe.test_size_factor, backbone.min_input_size
    )
    fine_tune_epochs = (
        int(_resolved(settings, "fine_tune_epochs", recipe.fine_tune_epochs) or 0) if mode == "frozen" else 0
    )
    tune_from = getattr(backbone, "tune_from", None) if fine_tune_epochs > 0 else None
    n_views = recipe.augmented_views if (settings.augment and mode == "frozen") else 0
    run_dir = new_run_dir(settings.runs_dir, backbone.name)
    config = {
        "run_id": run_dir.name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "backbone": backbone.name,
        "mode": mode,
        "weights": str(weights),
        "weights_id": wid,
        "image_size": size,  # the model's input: what serving resizes to, what validation measured
        "train_image_size": fit_size,
        "epochs": epochs,
        "fine_tune_epochs": fine_tune_epochs,
        "fine_tune_from": tune_from,  # None: fine-tuning (if any) runs on images
        "batch_size": int(settings.batch_size),
        "augment": bool(settings.augment),
        "augmented_views": n_views,
        "tta": recipe.tta,
        "seed": int(settings.seed),
        "val_split": float(settings.val_split),
        "data_dir": str(dataset.root),
        "data_hash": dataset.data_hash,
        "classes": list(dataset.classes),
        "n_train": len(train_records),
        "n_val": len(val_records),
        "threshold": THRESHOLD,
        "recipe": asdict(recipe),
        "pizzactl_version": __version__,
        "settings": settings.as_dict(),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    rows: list[dict] = []
    timings: dict[str, float] = {}
    keras.utils.set_random_seed(int(settings.seed))
    y_train = np.array([r.label for r in train_records], np.float32)
    y_val = np.array([r.label for r in val_records], np.float32)

    with RunLog(run_dir / "train.log", show_progress) as runlog:
        runlog(
            f"Run {run_dir.name}: {backbone.name} ({mode}, weights {weights}, {size}px), "
            f"{len(train_records)} train / {len(val_records)} val images"
        )
        if mode == "frozen" and weights.kind == "none":
            runlog("Note: frozen features from random weights learn little; use --weights imagenet for real training.")
        extractor = backbone.build(weights, fit_size)
        if fit_size != size:
            runlog(
                f"Training at {fit_size}px for a {size}px model (FixRes: testing at x{recipe.test_size_factor} undoes the zoom of random crops)"
            )
        if mode == "frozen":
            t = time.perf_counter()
            index = {r.path: i for i, r in enumerate(dataset.records)}
            tr_idx = np.array([index[r.path] for r in train_records])
            va_idx = np.array([index[r.path] for r in val_records])
            views = ["plain", "flip", *view_names(n_views)] if recipe.tta or n_views else ["plain"]

            # validation sees what serving will: the model's size (uncached: a few seconds)
            serving = backbone.resized(extractor, size) if fit_size != size else None
            val_paths = [r.path for r in val_records]
            if tune_from:
                # cache the maps at `tune_from`; the pooled features are the top layers' output
                bottom, top = split_at(extractor, tune_from)
                maps = {
                    view: cache.get(
                        extractor=bottom,
                        backbone=f"{backbone.name}.{tune_from}",
                        weights=wid,
                        image_size=fit_size,
                        dataset=dataset,
                        view=view,
                        progress=runlog.bar,
                        dtype="float16",
                    )
                    for view in views
                }
                by_view = apply_top(top, maps)
                val_names = ("plain", "flip") if recipe.tta else ("plain",)
                if serving is not None:
                    serving_bottom, _ = split_at(serving, tune_from)
                    val_maps = {
                        v: compute_features(serving_bottom, val_paths, size, view=v, dtype="float16") for v in val_names
                    }
                else:
                    val_maps = {v: maps[v][va_idx] for v in val_names}
                val_views = apply_top(top, val_maps)
            else:
                by_view = {
                    view: cache.get(
                        extractor=extractor,
                        backbone=backbone.name,
                        weights=wid,
                        image_size=fit_size,
                        dataset=dataset,
                        view=view,
                        progress=runlog.bar,
                    )
                    for view in views
                }
                if serving is not None:
                    val_views = {v: compute_features(serving, val_paths, size, view=v) for v in ("plain", "flip")}
                else:
                    val_views = {v: by_view[v][va_idx] for v in ("plain", "flip") if v in by_view}
            timings["feature_seconds"] = time.perf_counter() - t
            runlog(
                f"Features: {len(cache.computed)} view(s) computed, {len(cache.reused)} reused from the cache ({timings['feature_seconds']:.1f}s)"
            )
            train_views = views if settings.augment else ["plain"]
            x_tr = np.concatenate([by_view[v][tr_idx] for v in train_views])
            y_tr = np.concatenate([y_train] * len(train_views))
            t = time.perf_counter()
            head = fit_heads(
                x_tr,
                y_tr,
                val_views["plain"],
                y_val,
                n=recipe.head_seeds,
                epochs=epochs,
                batch_size=int(settings.batch_size),
                lr=recipe.lr,
                dropout=recipe.dropout,
                patience=recipe.patience,
                seed=int(settings.seed),
                runlog=runlog,
                rows=rows,
            )
            timings["head_seconds"] = time.perf_counter() - t
            if tune_from:
                t = time.perf_counter()
                p_val = fine_tune_cached(
                    top,
                    head,
                    np.concatenate([maps[v][tr_idx] for v in train_views]),
                    y_tr,
                    val_maps,
                    y_val,
                    recipe=recipe,
                    epochs=fine_tune_epochs,
                    batch_size=int(settings.batch_size),
                    seed=int(settings.seed),
                    tta=recipe.tta,
                    runlog=runlog,
                    rows=rows,
                )
                timings["fine_tune_seconds"] = time.perf_counter() - t
                if serving is not None:
                    serving.set_weights(extractor.get_weights())  # the fine-tuned top, at the model's size
            elif fine_tune_epochs > 0:
                t = time.perf_counter()
                fine_tune(
                    backbone,
                    extractor,
                    head,
                    train_records,
                    val_records,
                    fit_size,
                    recipe=recipe,
                    epochs=fine_tune_epochs,
                    batch_size=int(settings.batch_size),
                    augment=settings.augment,
                    seed=int(settings.seed),
                    runlog=runlog,
                    rows=rows,
                )
                timings["fine_tune_seconds"] = time.perf_counter() - t
                p_val = None
                if serving is not None:
                    serving.set_weights(extractor.get_weights())  # the fine-tuned weights, at the model's size
            else:
                p_plain = head.predict(val_views["plain"], verbose=0).ravel()
                p_val = (p_plain + head.predict(val_views["flip"], verbose=0).ravel()) / 2 if recipe.tta else p_plain
            if serving is not None:
                extractor = serving
        else:
            t = time.perf_counter()
            head = fit_scratch(
                extractor,
                train_records,
                val_records,
                fit_size,
                recipe=recipe,
                epochs=epochs,
                batch_size=int(settings.batch_size),
                augment=settings.augment,
                seed=int(settings.seed),
                runlog=runlog,
                rows=rows,
            )
            timings["fit_seconds"] = time.perf_counter() - t
            p_val = None
            if fit_size != size:
                extractor = backbone.resized(extractor, size)

        classifier = build_classifier(extractor, head, size, tta=recipe.tta)
        if p_val is None:
            x_val = decode_images([r.path for r in val_records], size)
            p_val = classifier.predict(x_val, batch_size=32, verbose=0).ravel()
        metrics = validation_metrics(y_val, p_val, THRESHOLD)
        train_seconds = time.perf_counter() - start
        metrics.update(
            {
                "train_seconds": round(train_seconds, 2),
                **{k: round(v, 2) for k, v in timings.items()},
                "epochs_run": {
                    phase: sum(1 for r in rows if r["phase"] == phase)
                    for phase in dict.fromkeys(r["phase"] for r in rows)
                },
                "features": {"computed": len(cache.computed), "reused": len(cache.reused)},
            }
        )
        runlog(
            f"Validation: accuracy {metrics['val_accuracy']:.4f}  f1 {metrics['val_f1']:.4f}  "
            f"roc_auc {metrics['val_roc_auc'] if metrics['val_roc_auc'] is None else round(metrics['val_roc_auc'], 4)}  "
            f"loss {metrics['val_loss']:.4f}  ({train_seconds:.1f}s)"
        )
        classifier.save(run_dir / "model.keras")
        write_history(run_dir / "history.csv", rows)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        try:
            plots.training_curves(rows, run_dir / "training_curves.png", title=run_dir.name)
            plots.confusion_matrix(metrics["confusion_matrix"], list(dataset.classes), run_dir / "confusion_matrix.png")
        except Exception as exc:  # plots are a convenience; never lose a trained model over them
            runlog(f"Could not draw plots: {type(exc).__name__}: {exc}")
    result = RunResult(run_dir.name, run_dir, backbone.name, metrics, config, round(train_seconds, 2))
    return result, classifier


def apply_top(top, maps: dict, batch_size: int = 256) -> dict:
    """`top` over each view's cached maps [N,h,w,C] (any float dtype) -> float32 features [N, D]."""
    import numpy as np
    import tensorflow as tf

    channels, dim = int(top.input.shape[-1]), int(top.output.shape[-1])
    fn = tf.function(
        lambda x: top(x, training=False), input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)]
    )

    def run(m):
        out = [fn(tf.constant(m[i : i + batch_size], tf.float32)).numpy() for i in range(0, len(m), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    return {view: run(m) for view, m in maps.items()}


def fine_tune_cached(
    top,
    head,
    x_maps,
    y,
    val_maps: dict,
    y_val,
    *,
    recipe: Recipe,
    epochs: int,
    batch_size: int,
    seed: int,
    tta: bool,
    runlog: RunLog,
    rows: list,
):
    """Train `top` (BatchNorm frozen) and the head on cached maps; returns validation P(positive).

    Each epoch costs the top layers' share of a forward + backward pass (about a sixth of the
    network for EfficientNet-Lite), not a pass over images. The weights kept are the average of
    epochs `recipe.fine_tune_average_from`..`epochs` (SWA: the single epochs' validation accuracy
    jumps around, their mean does not), and only if that beats the head alone on validation loss.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    for layer in top.layers:  # `split_at` gives a model whose layers are the backbone's own, flat
        # BatchNorm keeps its ImageNet statistics: 1k photos cannot re-estimate them
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    maps_in = keras.Input(top.input.shape[1:], name="maps")
    model = keras.Model(maps_in, head(top(maps_in, training=False)), name="fine_tune")
    y_val = np.asarray(y_val, np.float64).ravel()
    val_x = [tf.constant(val_maps[v], tf.float32) for v in (("plain", "flip") if tta else ("plain",))]
    forward = tf.function(lambda x: model(x, training=False))

    def validate():
        p = np.mean([forward(x).numpy().ravel() for x in val_x], axis=0).astype(np.float64)
        return (p, *loss_and_accuracy(y_val, p, THRESHOLD))

    p_before, before, acc_before = validate()
    saved = [w.copy() for w in model.get_weights()]
    snapshots: list = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([w.copy() for w in model.get_weights()])
            _, loss, acc = validate()
            if logs is not None:
                logs["val_loss"], logs["val_accuracy"] = loss, acc

    n_trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    runlog(
        f"Fine-tuning the top of the backbone on cached maps ({n_trainable:,} weights, BatchNorm frozen), val_loss before {before:.4f}"
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x_maps, np.asarray(y, np.float32)))
        .shuffle(len(x_maps), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda x, t: (tf.cast(x, tf.float32), t))
        .prefetch(tf.data.AUTOTUNE)
    )
    steps = -(-len(x_maps) // batch_size)
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.fine_tune_lr), loss="binary_crossentropy", metrics=["accuracy"]
    )
    model.fit(
        data,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[Snapshot(), _epoch_logger("fine_tune", epochs, runlog, rows, steps)],
    )
    first = min(max(1, recipe.fine_tune_average_from), len(snapshots))
    model.set_weights([np.mean(ws, axis=0) for ws in zip(*snapshots[first - 1 :], strict=False)])
    p_after, after, acc_after = validate()
    if after < before:
        runlog(
            f"Fine-tuned: mean of epochs {first}..{len(snapshots)}, val_loss {before:.4f} -> {after:.4f}, accuracy {acc_before:.4f} -> {acc_after:.4f}"
        )
        result = p_after
    else:
        model.set_weights(saved)
        runlog(f"Fine-tuning did not beat the head alone (val_loss {after:.4f} >= {before:.4f}); kept the head")
        result = p_before
    for layer in top.layers:
        layer.trainable = False
    return result


def write_history(path: Path, rows: list[dict]) -> None:
    columns = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    columns += sorted({k for r in rows for k in r} - set(columns))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def fit_scratch(
    extractor,
    train_records,
    val_records,
    size: int,
    *,
    recipe: Recipe,
    epochs: int,
    batch_size: int,
    augment: bool,
    seed: int,
    runlog: RunLog,
    rows: list,
):
    """End-to-end training of a randomly initialised backbone + head; returns the head."""
    import keras
    import numpy as np

    runlog(f"Decoding {len(train_records) + len(val_records)} images at {size}px")
    advance = runlog.bar("decoding", len(train_records) + len(val_records))
    x_train = decode_images([r.path for r in train_records], size, dtype="float16", advance=advance)
    x_val = decode_images([r.path for r in val_records], size, advance=advance)
    y_train = np.array([r.label for r in train_records], np.float32)
    y_val = np.array([r.label for r in val_records], np.float32)
    head = build_head(int(extractor.output_shape[-1]), recipe.dropout)
    pixels = keras.Input((size, size, 3), name="pixels")
    model = keras.Model(pixels, head(extractor(pixels)), name="trainable")
    steps = int(np.ceil(len(x_train) / batch_size))
    schedule = _lr_schedule(recipe.lr, epochs * steps, recipe.warmup_epochs * steps)
    optimizer = (
        keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay)
        if recipe.weight_decay
        else keras.optimizers.Adam(schedule)
    )
    loss = (
        keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing)
        if recipe.label_smoothing
        else "binary_crossentropy"
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=recipe.patience, restore_best_weights=True)
    model.fit(
        _augmented_batches(
            x_train,
            y_train,
            batch_size=batch_size,
            seed=seed,
            augment=augment,
            size=size,
            min_area=recipe.crop_min_area,
        ),
        validation_data=(x_val, y_val),
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[stop, _epoch_logger("scratch", epochs, runlog, rows, steps)],
    )
    runlog(f"Best epoch {stop.best_epoch + 1} (val_loss {stop.best:.4f}), weights restored")
    return head


def fine_tune(
    backbone,
    extractor,
    head,
    train_records,
    val_records,
    size: int,
    *,
    recipe: Recipe,
    epochs: int,
    batch_size: int,
    augment: bool,
    seed: int,
    runlog: RunLog,
    rows: list,
):
    """Unfreeze the top of the backbone and train at a low LR; never ends worse than it started."""
    import keras
    import numpy as np

    x_train = decode_images([r.path for r in train_records], size, dtype="float16")
    x_val = decode_images([r.path for r in val_records], size)
    y_train = np.array([r.label for r in train_records], np.float32)
    y_val = np.array([r.label for r in val_records], np.float32)
    pixels = keras.Input((size, size, 3), name="pixels")
    model = keras.Model(pixels, head(extractor(pixels)), name="fine_tune")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    before = float(model.evaluate(x_val, y_val, batch_size=32, verbose=0))
    saved = [w.copy() for w in model.get_weights()]
    from pizzactl.train.backbones import unfreeze_top

    n = unfreeze_top(extractor, recipe.fine_tune_layers, backbone=backbone)
    runlog(
        f"Fine-tuning the top of the backbone ({n} trainable layers, BatchNorm frozen), val_loss before {before:.4f}"
    )
    steps = int(np.ceil(len(x_train) / batch_size))
    model.compile(
        optimizer=keras.optimizers.Adam(_lr_schedule(recipe.fine_tune_lr, epochs * steps, 0)),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=recipe.fine_tune_patience, restore_best_weights=True
    )
    model.fit(
        _augmented_batches(x_train, y_train, batch_size=batch_size, seed=seed, augment=augment, size=size),
        validation_data=(x_val, y_val),
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[stop, _epoch_logger("fine_tune", epochs, runlog, rows, steps)],
    )
    if stop.best is None or not np.isfinite(stop.best) or stop.best >= before:
        model.set_weights(saved)
        runlog(f"Fine-tuning did not beat the head alone (val_loss {stop.best:.4f} >= {before:.4f}); kept the head")
    else:
        runlog(f"Fine-tuned: best epoch {stop.best_epoch + 1}, val_loss {before:.4f} -> {stop.best:.4f}")
    extractor.get_layer("backbone").trainable = False


# --- several backbones ------------------------------------------------------------------------


def _check_images(records, per_class: int = 3) -> list[bytes]:
    picked: list[bytes] = []
    for label in sorted({r.label for r in records}):
        picked += [r.path.read_bytes() for r in [r for r in records if r.label == label][:per_class]]
    return picked


def train(settings, *, show_progress: bool = True) -> TrainResult:
    """Train every backbone in `settings.backbone` (comma-separated), export the best one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pizzactl.tfimport import require_tensorflow

    require_tensorflow()  # before any download or scan
    from pizzactl.data.dataset import load_dataset, stratified_split
    from pizzactl.data.download import resolve_data_dir
    from pizzactl.train.backbones import get_backbone

    start = time.perf_counter()
    names = [n.strip() for n in str(settings.backbone).split(",") if n.strip()]
    if not names:
        raise UsageError("No backbone given.", hint="Pass --backbone NAME (or several: a,b,c).")
    backbones = [get_backbone(n) for n in dict.fromkeys(names)]
    for backbone in backbones:
        resolve_weights(settings, backbone)  # fail before any work
    dataset = load_dataset(resolve_data_dir(settings))
    train_records, val_records = stratified_split(dataset, settings.val_split, settings.seed)
    from pizzactl.train.features import FeatureCache

    cache = FeatureCache(Path(settings.cache_dir).expanduser() / "features")
    trained = []
    for backbone in backbones:
        trained.append(
            train_one(settings, backbone, dataset, train_records, val_records, cache=cache, show_progress=show_progress)
        )
    trained.sort(key=lambda pair: _rank(pair[0]))
    leaderboard = tuple(result for result, _ in trained)
    best, best_classifier = trained[0]
    from pizzactl.export import export_model

    metadata = {
        "backbone": best.backbone,
        "weights": best.config["weights"],
        "image_size": best.config["image_size"],
        "classes": list(dataset.classes),
        "threshold": THRESHOLD,
        "metrics": best.metrics,
        "data_hash": dataset.data_hash,
        "run_id": best.run_id,
        "tta": best.config["tta"],
    }
    model_dir = export_model(best_classifier, settings.models_dir, metadata, _check_images(val_records))
    metrics = dict(best.metrics, model_dir=str(model_dir))
    (best.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    leaderboard = (
        RunResult(best.run_id, best.run_dir, best.backbone, metrics, best.config, best.train_seconds),
        *leaderboard[1:],
    )
    return TrainResult(
        leaderboard=leaderboard,
        model_dir=model_dir,
        total_seconds=round(time.perf_counter() - start, 2),
        classes=dataset.classes,
        features={"computed": len(cache.computed), "reused": len(cache.reused)},
    )


def _rank(result: RunResult):
    m = result.metrics
    return (-m["val_accuracy"], m.get("val_loss", 0.0), result.train_seconds)


def print_result(result: TrainResult) -> None:
    from rich.table import Column, Table

    from pizzactl.console import out

    table = Table("#", "backbone", "val acc", "f1", "roc auc", "val loss", "seconds", Column("run", no_wrap=True))
    for i, r in enumerate(result.leaderboard, 1):
        m = r.metrics
        auc = m.get("val_roc_auc")
        table.add_row(
            str(i),
            r.backbone,
            f"{m['val_accuracy']:.4f}",
            f"{m['val_f1']:.4f}",
            "-" if auc is None else f"{auc:.4f}",
            f"{m['val_loss']:.4f}",
            f"{r.train_seconds:.1f}",
            r.run_id,
        )
    out.print(table)
    if result.model_dir:
        out.print(
            f"Exported {result.best.backbone} ({result.best.val_accuracy:.4f} val accuracy) to {result.model_dir}"
        )
