"""Backbone features computed once per image and view, cached on disk.

A frozen backbone gives every image the same features at every epoch, so computing them
every epoch (what `model.fit` over images does) wastes nearly all of a training run. Here
each (backbone, weights, image size, dataset, view) is computed once and stored as
`cache_dir/features/<key>.npz`; training the head on it then costs milliseconds per epoch.

Views: "plain" is exactly what serving sees (`decode_resize` of the file bytes), "flip" is
its mirror image (for test-time flip averaging), "augN" are fixed random augmentations
(crop, flip, colour) that play the role of data augmentation for the cached head.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Bump when the augmentation recipe changes: it is part of every augmented view's cache key.
AUGMENT_VERSION = 1


def view_names(n_augmented: int) -> list[str]:
    return [f"aug{i}" for i in range(1, n_augmented + 1)]


def feature_key(backbone: str, weights: str, image_size: int, data_hash: str, view: str) -> str:
    """Cache key: everything the features depend on. `weights` is a `weights_id`."""
    view_id = f"{view}-v{AUGMENT_VERSION}" if view.startswith("aug") else view
    blob = json.dumps(
        {"backbone": backbone, "weights": weights, "image_size": int(image_size), "data": data_hash, "view": view_id},
        sort_keys=True,
    )
    return f"{backbone}-{image_size}-{view}-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


# --- the views ------------------------------------------------------------------------------


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

    from pizzactl.decode import decode_resize

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


# --- the cache ------------------------------------------------------------------------------


@dataclass
class FeatureCache:
    """Features on disk under `root`; counts what it computed and what it reused."""

    root: Path
    computed: list[str] = field(default_factory=list)  # keys computed by this instance
    reused: list[str] = field(default_factory=list)  # keys loaded from disk
    compute_seconds: float = 0.0

    def path(self, key: str) -> Path:
        return Path(self.root) / f"{key}.npz"

    def load(self, key: str, relpaths: Sequence[str]):
        import numpy as np

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if list(data["paths"]) != list(relpaths):
                    return None
                return data["features"]
        except (OSError, ValueError, KeyError):
            return None  # truncated or foreign file: compute again

    def save(self, key: str, relpaths: Sequence[str], features) -> Path:
        import numpy as np

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, features=features, paths=np.asarray(list(relpaths)))
        os.replace(tmp, path)
        return path

    def get(
        self,
        *,
        extractor,
        backbone: str,
        weights: str,
        image_size: int,
        dataset,
        view: str,
        batch_size: int = 64,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        dtype: str = "float32",
    ):
        """Features [N, ...] of every record of `dataset` (in its order) for one view.

        `backbone` names what `extractor` computes (a backbone, or a backbone cut at a layer);
        `dtype` float16 halves the disk and memory of feature maps.
        """
        import time

        relpaths = [r.path.relative_to(dataset.root).as_posix() for r in dataset.records]
        key = feature_key(backbone, weights, image_size, dataset.data_hash, view)
        cached = self.load(key, relpaths)
        if cached is not None:
            self.reused.append(key)
            return cached
        start = time.perf_counter()
        features = compute_features(
            extractor,
            [r.path for r in dataset.records],
            image_size,
            view=view,
            batch_size=batch_size,
            advance=progress(f"features {backbone} {view}", len(relpaths)) if progress else None,
            dtype=dtype,
        )
        self.compute_seconds += time.perf_counter() - start
        self.save(key, relpaths, features)
        self.computed.append(key)
        return features


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward(model, size: int):
    """One compiled inference function per model (traced once, whatever the view or batch)."""
    import tensorflow as tf

    fn = _FORWARD.get(model)
    if fn is None:
        fn = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
        )
        _FORWARD[model] = fn
    return fn


def compute_features(
    model,
    paths: Sequence[Path],
    size: int,
    *,
    view: str = "plain",
    batch_size: int = 64,
    advance=None,
    dtype: str = "float32",
):
    """Run the frozen feature extractor once over a view of these images."""
    import numpy as np

    forward = _forward(model, size)
    chunks = []
    for batch in image_dataset(paths, size, batch_size, view):
        chunks.append(forward(batch).numpy().astype(dtype))
        if advance:
            advance(int(batch.shape[0]))
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), dtype)
