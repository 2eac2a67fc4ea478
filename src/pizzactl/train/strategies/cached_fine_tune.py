"""Fine-tune on cached maps: the backbone is cut at its `tune_from` layer; the maps at the cut
are cached per photo and view, heads train on the top's pooled output, then the top (the last
block and the top conv for EfficientNet-Lite) trains on the cached maps.

An epoch then costs the top's share of a forward and backward pass (about a sixth of the
network for EfficientNet-Lite) instead of a pass over images, so fine-tuning fits in minutes
on a CPU. Fine-tuning memorises fixed views, which is why the recipe caches many per photo.
"""

from __future__ import annotations

import time

from pizzactl.train.backbones.top import split_at
from pizzactl.train.context import TrainContext
from pizzactl.train.features import Rows, compute_features
from pizzactl.train.heads import as_probabilities, compile_args
from pizzactl.train.metrics import THRESHOLD, loss_and_accuracy
from pizzactl.train.recipes import Recipe
from pizzactl.train.run_log import RunLog, epoch_logger
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
    import numpy as np

    cut = ctx.tune_from
    if cut is None:  # `strategies.choose` picks this strategy only for a backbone with a cut
        raise ValueError(f"{ctx.backbone.name} has no tune_from layer to fine-tune from")
    extractor = build_extractor(ctx)
    started = time.perf_counter()
    train_idx, val_idx = record_indices(ctx)
    views = cached_views(ctx)
    serving = serving_extractor(ctx, extractor)
    bottom, top = split_at(extractor, cut)
    maps = {
        view: ctx.cache.get(
            extractor=bottom,
            backbone=f"{ctx.backbone.name}.{cut}",
            weights=ctx.weights.id,
            image_size=ctx.train_size,
            dataset=ctx.dataset,
            view=view,
            progress=ctx.log.bar,
            dtype="float16",
        )
        for view in views
    }
    train_views = training_views(ctx, views)
    # the heads train on the top's pooled output of the training rows, computed a chunk at a time
    train_features = {v: apply_top(top, Rows(((maps[v], train_idx),))) for v in train_views}
    val_names = ("plain", "flip") if ctx.recipe.tta else ("plain",)
    if serving is not None:  # validation at the model's size (uncached: a few seconds)
        serving_bottom, _ = split_at(serving, cut)
        val_paths = [r.path for r in ctx.val_records]
        val_maps = {
            v: compute_features(serving_bottom, val_paths, ctx.image_size, view=v, dtype="float16") for v in val_names
        }
    else:
        val_maps = {v: maps[v][val_idx] for v in val_names}
    log_features(ctx, started)
    head = train_heads(ctx, train_features, apply_top(top, Rows.of(val_maps["plain"])))
    started = time.perf_counter()
    p_val = fine_tune_cached(
        top,
        head,
        Rows(tuple((maps[v], train_idx) for v in train_views)),
        np.concatenate([ctx.labels(ctx.train_records)] * len(train_views)),
        val_maps,
        ctx.labels(ctx.val_records),
        recipe=ctx.recipe,
        epochs=ctx.fine_tune_epochs,
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        tta=ctx.recipe.tta,
        runlog=ctx.log,
        rows=ctx.history,
    )
    ctx.timings["fine_tune_seconds"] = time.perf_counter() - started
    if serving is not None:
        serving.set_weights(extractor.get_weights())  # the fine-tuned top, at the model's size
    return finish(ctx, serving or extractor, head, p_val)


def apply_top(top, maps: Rows, batch_size: int = 256):
    """`top` over cached maps [N,h,w,C] (any float dtype), a chunk at a time -> float32 features [N, D]."""
    import numpy as np
    import tensorflow as tf

    channels, dim = int(top.input.shape[-1]), int(top.output.shape[-1])
    fn = tf.function(
        lambda x: top(x, training=False), input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)]
    )
    out = np.empty((len(maps), dim), np.float32)
    for i, chunk in enumerate(maps.chunks(batch_size)):
        out[i * batch_size : i * batch_size + len(chunk)] = fn(tf.constant(chunk, tf.float32)).numpy()
    return out


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
    """Train `top` (BatchNorm frozen) and the head on cached maps; returns validation probabilities.

    Each epoch costs the top layers' share of a forward + backward pass (about a sixth of the
    network for EfficientNet-Lite), not a pass over images. The weights kept are the average of
    epochs `recipe.fine_tune_average_from`..`epochs` (SWA: the single epochs' validation accuracy
    jumps around, their mean does not), and only if that beats the head alone on validation loss.
    """
    import keras
    import numpy as np

    for layer in top.layers:  # `split_at` gives a model whose layers are the backbone's own, flat
        # BatchNorm keeps its ImageNet statistics: 1k photos cannot re-estimate them
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    maps_in = keras.Input(top.input.shape[1:], name="maps")
    model = keras.Model(maps_in, head(top(maps_in, training=False)), name="fine_tune")
    validate = validator(model, val_maps, y_val, tta)
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
    maps = x_maps if isinstance(x_maps, Rows) else Rows.of(x_maps)
    data = _batches(maps, y, batch_size, seed)
    steps = -(-len(maps) // batch_size)
    keras.utils.set_random_seed(seed)
    n_classes = y.shape[1] if y.ndim == 2 else 2
    model.compile(optimizer=keras.optimizers.Adam(recipe.fine_tune_lr), **compile_args(n_classes))
    model.fit(
        data,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[Snapshot(), epoch_logger("fine_tune", epochs, runlog, rows, steps)],
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


def validator(model, val_maps: dict, y_val, tta: bool, batch_size: int = 256):
    """() -> (validation probabilities, loss, accuracy) of `model` now, averaged over the mirror with `tta`.

    The maps go through the model `batch_size` at a time: one pass over all of them would hold
    the top's activations for every validation photo at once (about 1 MB per photo for
    EfficientNet-Lite0's top conv and its last block), the memory that grew with the data.
    """
    import numpy as np
    import tensorflow as tf

    views = [val_maps[v] for v in (("plain", "flip") if tta else ("plain",))]
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def probabilities(maps):
        chunks = [
            as_probabilities(forward(tf.constant(maps[i : i + batch_size], tf.float32)).numpy())
            for i in range(0, max(len(maps), 1), batch_size)  # an empty set still has its shape
        ]
        return np.concatenate(chunks, axis=0)

    def validate():
        p = np.mean([probabilities(maps) for maps in views], axis=0).astype(np.float64)
        return (p, *loss_and_accuracy(y_val, p, THRESHOLD))

    return validate


def _batches(maps: Rows, y, batch_size: int, seed: int):
    """Float32 batches of the cached (float16) maps and their targets, in a new order every epoch.

    Read from the cache batch by batch, so memory holds a few batches, not the maps.
    """
    import itertools

    import numpy as np
    import tensorflow as tf

    y = np.asarray(y, np.float32)
    epochs = itertools.count()

    def generate():
        order = np.random.default_rng([seed, next(epochs)]).permutation(len(maps))
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            yield maps.take(positions), y[positions]

    signature = (
        tf.TensorSpec((None, *maps.row_shape), tf.as_dtype(maps.dtype)),
        tf.TensorSpec((None, *y.shape[1:]), tf.float32),  # [N] for two classes, one-hot [N, K] for more
    )
    return (
        tf.data.Dataset.from_generator(generate, output_signature=signature)
        .apply(tf.data.experimental.assert_cardinality(-(-len(maps) // batch_size)))  # Keras knows an epoch's end
        .map(lambda x, t: (tf.cast(x, tf.float32), t))
        .prefetch(2)
    )
