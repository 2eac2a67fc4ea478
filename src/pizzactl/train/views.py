"""The views of a photo that training caches features of, each computed in the graph.

"plain" is exactly what serving sees (`decode_resize` of the file bytes), "flip" its mirror
image (for test-time flip averaging), "augN" fixed random augmentations (crop, flip, colour)
that play the role of data augmentation for heads trained on cached features. An augmented
view is a function of (view name, photo index): the same on every run and machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from pizzactl.model.decode import decode_resize

# Bump when the augmentation recipe changes: it is part of every augmented view's cache key.
AUGMENT_VERSION = 1


def view_names(n_augmented: int) -> list[str]:
    return [f"aug{i}" for i in range(1, n_augmented + 1)]


def _view_seed(view: str) -> int:
    return int(hashlib.sha256(view.encode()).hexdigest()[:7], 16)


def augment_image(image_bytes, size: int, seed):
    """One random augmented view of an encoded image: crop, flip, colour. Stateless (seeded)."""
    import tensorflow as tf

    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=seeds[0],
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.45, 1.0),
        max_attempts=20,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return color_jitter(tf.image.stateless_random_flip_left_right(image, seeds[1]), seeds[2:])


def color_jitter(image, seeds):
    """Brightness, contrast and saturation jitter on 0..255 float pixels ([S,S,3] or a batch)."""
    import tensorflow as tf

    image = tf.image.stateless_random_brightness(image, 0.12 * 255.0, seeds[0])
    image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[1])
    gray = tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    factor = tf.random.stateless_uniform([], seeds[2], 0.75, 1.25)
    image = gray + factor * (image - gray)
    return tf.clip_by_value(image, 0.0, 255.0)


def view_fn(view: str, size: int) -> Callable:
    """(encoded bytes, index) -> float32 [size, size, 3] 0..255 pixels of that view."""
    import tensorflow as tf

    if view == "plain":
        return lambda data, index: decode_resize(data, size)
    if view == "flip":
        return lambda data, index: tf.image.flip_left_right(decode_resize(data, size))
    if view.startswith("aug"):
        base = _view_seed(view)

        def fn(data, index):
            seed = tf.stack([tf.constant(base, tf.int64), tf.cast(index, tf.int64)])
            return augment_image(data, size, seed)

        return fn
    raise ValueError(f"unknown view {view!r}")


def image_dataset(paths: Sequence[Path], size: int, batch_size: int, view: str = "plain"):
    """Batched tf.data of a view of these image files (read, decode, resize in the graph)."""
    import tensorflow as tf

    fn = view_fn(view, size)
    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], list(range(len(paths)))))
    ds = ds.map(lambda p, i: fn(tf.io.read_file(p), i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
