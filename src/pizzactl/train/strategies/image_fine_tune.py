"""Fine-tune on images: frozen heads first (as `frozen_head`), then the top of the backbone
unfrozen and trained over decoded images at a low learning rate.

For backbones without a `tune_from` cut; every fine-tuning epoch is a full forward and
backward pass over the photos. BatchNormalization stays frozen (1k photos cannot re-estimate
ImageNet statistics). The result is kept only if it lowers the validation loss.
"""

from __future__ import annotations

import time

from pizzactl.train.backbones.top import unfreeze_top
from pizzactl.train.context import TrainContext
from pizzactl.train.heads import compile_args
from pizzactl.train.pixels import augmented_batches, cosine_schedule, decode_images
from pizzactl.train.run_log import epoch_logger
from pizzactl.train.strategies.common import Fitted, build_extractor, finish
from pizzactl.train.strategies.frozen_head import fit_on_features


def fit(ctx: TrainContext) -> Fitted:
    extractor = build_extractor(ctx)
    head, serving, _ = fit_on_features(ctx, extractor)
    started = time.perf_counter()
    fine_tune(ctx, extractor, head)
    ctx.timings["fine_tune_seconds"] = time.perf_counter() - started
    if serving is not None:
        serving.set_weights(extractor.get_weights())  # the fine-tuned weights, at the model's size
    return finish(ctx, serving or extractor, head)


def fine_tune(ctx: TrainContext, extractor, head) -> None:
    """Unfreeze the top of the backbone and train at a low LR; never ends worse than it started."""
    import keras
    import numpy as np

    recipe, size, epochs = ctx.recipe, ctx.train_size, ctx.fine_tune_epochs
    x_train = decode_images([r.path for r in ctx.train_records], size, dtype="float16")
    x_val = decode_images([r.path for r in ctx.val_records], size)
    y_train, y_val = ctx.labels(ctx.train_records), ctx.labels(ctx.val_records)
    pixels = keras.Input((size, size, 3), name="pixels")
    model = keras.Model(pixels, head(extractor(pixels)), name="fine_tune")
    model.compile(optimizer="adam", loss=compile_args(ctx.n_classes)["loss"])
    before = float(model.evaluate(x_val, y_val, batch_size=32, verbose=0))
    saved = [w.copy() for w in model.get_weights()]
    n = unfreeze_top(extractor, recipe.fine_tune_layers, backbone=ctx.backbone)
    ctx.log(
        f"Fine-tuning the top of the backbone ({n} trainable layers, BatchNorm frozen), val_loss before {before:.4f}"
    )
    steps = int(np.ceil(len(x_train) / ctx.batch_size))
    model.compile(
        optimizer=keras.optimizers.Adam(cosine_schedule(recipe.fine_tune_lr, epochs * steps, 0)),
        **compile_args(ctx.n_classes),
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=recipe.fine_tune_patience, restore_best_weights=True
    )
    model.fit(
        augmented_batches(x_train, y_train, batch_size=ctx.batch_size, seed=ctx.seed, augment=ctx.augment, size=size),
        validation_data=(x_val, y_val),
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[stop, epoch_logger("fine_tune", epochs, ctx.log, ctx.history, steps)],
    )
    if stop.best is None or not np.isfinite(stop.best) or stop.best >= before:
        model.set_weights(saved)
        ctx.log(f"Fine-tuning did not beat the head alone (val_loss {stop.best:.4f} >= {before:.4f}); kept the head")
    else:
        ctx.log(f"Fine-tuned: best epoch {stop.best_epoch + 1}, val_loss {before:.4f} -> {stop.best:.4f}")
    extractor.get_layer("backbone").trainable = False
