"""What the strategies share: the result type, building the extractor, the heads, the finish."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pizzactl.train.context import TrainContext
from pizzactl.train.heads import as_probabilities, build_classifier, fit_heads
from pizzactl.train.pixels import decode_images
from pizzactl.train.views import view_names


@dataclass(frozen=True)
class Fitted:
    """A strategy's result."""

    classifier: Any  # keras.Model: float32 0..255 pixels [N, S, S, 3] at ctx.image_size -> [N, 1] or [N, K]
    p_val: Any  # numpy [N_val] or [N_val, K]: that classifier's validation probabilities, in ctx.val_records order


def build_extractor(ctx: TrainContext):
    """The backbone's feature model at the training size, with the run's weights."""
    extractor = ctx.backbone.build(ctx.weights, ctx.train_size)
    if ctx.train_size != ctx.image_size:
        ctx.log(
            f"Training at {ctx.train_size}px for a {ctx.image_size}px model (FixRes: testing at x{ctx.recipe.test_size_factor} undoes the zoom of random crops)"
        )
    return extractor


def serving_extractor(ctx: TrainContext, extractor):
    """The same weights at the model's size, when it differs from the training size (else None).

    Validation runs at the model's size, so it measures what serving will answer.
    """
    return ctx.backbone.resized(extractor, ctx.image_size) if ctx.train_size != ctx.image_size else None


def record_indices(ctx: TrainContext):
    """Positions of the train and validation records in the dataset (the cache's row order)."""
    import numpy as np

    index = {r.path: i for i, r in enumerate(ctx.dataset.records)}
    return np.array([index[r.path] for r in ctx.train_records]), np.array([index[r.path] for r in ctx.val_records])


def cached_views(ctx: TrainContext) -> list[str]:
    """The views cached per photo: plain, its mirror (test-time flip) and the augmented ones."""

    n = ctx.augmented_views
    return ["plain", "flip", *view_names(n)] if ctx.recipe.tta or n else ["plain"]


def training_views(ctx: TrainContext, views: list[str]) -> list[str]:
    return views if ctx.augment else ["plain"]


def log_features(ctx: TrainContext, started: float) -> None:
    ctx.timings["feature_seconds"] = time.perf_counter() - started
    ctx.log(
        f"Features: {len(ctx.cache.computed)} view(s) computed, {len(ctx.cache.reused)} reused from the cache ({ctx.timings['feature_seconds']:.1f}s)"
    )


def train_heads(ctx: TrainContext, train_features: dict, x_val_plain):
    """`recipe.head_seeds` heads on the training rows' features of each training view (all
    views stacked, each with the training labels), averaged into one (`heads.fit_heads`).

    Takes `train_features` over (it is emptied), so that at most two copies of the features
    exist at any time, whatever their size.
    """
    import numpy as np
    import tensorflow as tf

    started = time.perf_counter()
    views = list(train_features)
    first = train_features[views[0]]
    n = len(first)
    x = np.empty((n * len(views), *first.shape[1:]), np.float32)
    del first
    for i, view in enumerate(views):  # each view's array is let go as soon as it is copied
        x[i * n : (i + 1) * n] = train_features.pop(view)
    x = tf.convert_to_tensor(x)  # the one copy the heads train on; the numpy one is freed here
    head = fit_heads(
        x,
        np.concatenate([ctx.labels(ctx.train_records)] * len(views)),
        x_val_plain,
        ctx.labels(ctx.val_records),
        n=ctx.recipe.head_seeds,
        epochs=ctx.epochs,
        batch_size=ctx.batch_size,
        lr=ctx.recipe.lr,
        dropout=ctx.recipe.dropout,
        patience=ctx.recipe.patience,
        seed=ctx.seed,
        runlog=ctx.log,
        rows=ctx.history,
    )
    ctx.timings["head_seconds"] = time.perf_counter() - started
    return head


def finish(ctx: TrainContext, extractor, head, p_val=None) -> Fitted:
    """The classifier at the model's size; its validation answers, computed here if not given."""

    classifier = build_classifier(extractor, head, ctx.image_size, tta=ctx.recipe.tta)
    if p_val is None:
        x_val = decode_images([r.path for r in ctx.val_records], ctx.image_size)
        p_val = as_probabilities(classifier.predict(x_val, batch_size=32, verbose=0))
    return Fitted(classifier, p_val)
