"""Decoded images in memory and their on-the-fly augmentation: for the strategies that train
over images (from scratch, fine-tuning without a cached cut) rather than cached features."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pizzactl.train.views import image_dataset


def decode_images(paths: Sequence[Path], size: int, batch_size: int = 64, dtype: str = "float32", advance=None):
    """Decode and resize image files once (exactly as serving does) into one array."""
    import numpy as np

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


def augmented_batches(x, y, *, batch_size: int, seed: int, augment: bool, size: int, min_area: float = 0.35):
    """Shuffled batches of decoded images, augmented on the fly (`batch_augment`) when `augment`."""
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


def cosine_schedule(base_lr: float, total_steps: int, warmup_steps: int):
    """Cosine decay to 2% of `base_lr`, after a linear warm-up from 0 when `warmup_steps`."""
    import keras

    if warmup_steps > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, max(1, total_steps - warmup_steps), alpha=0.02, warmup_target=base_lr, warmup_steps=warmup_steps
        )
    return keras.optimizers.schedules.CosineDecay(base_lr, max(1, total_steps), alpha=0.02)
