"""From scratch: a randomly initialised backbone and its head, trained end to end on decoded
images with on-the-fly augmentation and a warm-up + cosine learning-rate schedule.

For backbones without pretrained weights (small_cnn). Early stopping on validation loss
restores the best epoch.
"""

from __future__ import annotations

import time

from pizzactl.train.context import TrainContext
from pizzactl.train.heads import build_head, compile_args, targets
from pizzactl.train.pixels import augmented_batches, cosine_schedule, decode_images
from pizzactl.train.recipes import Recipe
from pizzactl.train.run_log import RunLog, epoch_logger
from pizzactl.train.strategies.common import Fitted, build_extractor, finish


def fit(ctx: TrainContext) -> Fitted:
    extractor = build_extractor(ctx)
    started = time.perf_counter()
    head = fit_scratch(
        extractor,
        ctx.train_records,
        ctx.val_records,
        ctx.train_size,
        recipe=ctx.recipe,
        n_classes=ctx.n_classes,
        epochs=ctx.epochs,
        batch_size=ctx.batch_size,
        augment=ctx.augment,
        seed=ctx.seed,
        runlog=ctx.log,
        rows=ctx.history,
    )
    ctx.timings["fit_seconds"] = time.perf_counter() - started
    if ctx.train_size != ctx.image_size:
        extractor = ctx.backbone.resized(extractor, ctx.image_size)
    return finish(ctx, extractor, head)


def fit_scratch(
    extractor,
    train_records,
    val_records,
    size: int,
    *,
    recipe: Recipe,
    n_classes: int = 2,
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
    y_train = targets([r.label for r in train_records], n_classes)
    y_val = targets([r.label for r in val_records], n_classes)
    head = build_head(int(extractor.output_shape[-1]), recipe.dropout, n_classes)
    pixels = keras.Input((size, size, 3), name="pixels")
    model = keras.Model(pixels, head(extractor(pixels)), name="trainable")
    steps = int(np.ceil(len(x_train) / batch_size))
    schedule = cosine_schedule(recipe.lr, epochs * steps, recipe.warmup_epochs * steps)
    optimizer = (
        keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay)
        if recipe.weight_decay
        else keras.optimizers.Adam(schedule)
    )
    model.compile(optimizer=optimizer, **compile_args(n_classes, recipe.label_smoothing))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=recipe.patience, restore_best_weights=True)
    model.fit(
        augmented_batches(
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
        callbacks=[stop, epoch_logger("scratch", epochs, runlog, rows, steps)],
    )
    runlog(f"Best epoch {stop.best_epoch + 1} (val_loss {stop.best:.4f}), weights restored")
    return head
