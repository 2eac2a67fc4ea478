"""Frozen head: a pretrained backbone stays frozen; heads train on its cached pooled features.

The backbone's features of every photo and view are computed once (`features.FeatureCache`)
and reused by every later run on the same photos, so a run costs one forward pass at most and
each head epoch milliseconds. Augmentation is the cached augmented views.
"""

from __future__ import annotations

import time

from pizzactl.train.context import TrainContext
from pizzactl.train.features import compute_features
from pizzactl.train.heads import as_probabilities
from pizzactl.train.strategies.common import (
    Fitted,
    build_extractor,
    cached_views,
    finish,
    log_features,
    record_indices,
    serving_extractor,
    train_heads,
    training_views,
)


def fit(ctx: TrainContext) -> Fitted:
    extractor = build_extractor(ctx)
    head, serving, val_views = fit_on_features(ctx, extractor)
    p_val = as_probabilities(head.predict(val_views["plain"], verbose=0))
    if ctx.recipe.tta:
        p_val = (p_val + as_probabilities(head.predict(val_views["flip"], verbose=0))) / 2
    return finish(ctx, serving or extractor, head, p_val)


def fit_on_features(ctx: TrainContext, extractor):
    """(averaged head, extractor at the model's size or None, validation features per view).

    Validation features come from the model's size (uncached: a few seconds), so validation
    measures what serving will answer.
    """

    started = time.perf_counter()
    train_idx, val_idx = record_indices(ctx)
    views = cached_views(ctx)
    serving = serving_extractor(ctx, extractor)
    by_view = {
        view: ctx.cache.get(
            extractor=extractor,
            backbone=ctx.backbone.name,
            weights=ctx.weights.id,
            image_size=ctx.train_size,
            dataset=ctx.dataset,
            view=view,
            progress=ctx.log.bar,
        )
        for view in views
    }
    if serving is not None:
        val_paths = [r.path for r in ctx.val_records]
        val_views = {v: compute_features(serving, val_paths, ctx.image_size, view=v) for v in ("plain", "flip")}
    else:
        val_views = {v: by_view[v][val_idx] for v in ("plain", "flip") if v in by_view}
    log_features(ctx, started)
    train_features = {v: by_view[v][train_idx] for v in training_views(ctx, views)}
    head = train_heads(ctx, train_features, val_views["plain"])
    return head, serving, val_views
