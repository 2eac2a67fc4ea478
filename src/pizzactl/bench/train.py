"""`pizzactl bench train`: what training costs, measured side by side.

The default compares the same frozen-backbone head trained two ways, on the backbone and
weights `pizzactl train` uses by default:

* plain: what the seed notebook did, `model.fit` of frozen backbone + head over decoded images,
  so every epoch pays a full forward pass through the backbone;
* cached: one forward pass to compute the features (`pizzactl.train.features`), then the
  head trains on them.

Goals: speedup (plain / cached) >= 10, and cached_seconds <= 1.3 x forward_pass_seconds (the
head epochs together cost less than a third of one forward pass).

`bench_scaling` (`--scale N,N,...`) runs the whole default `pizzactl train` on N photos each, in
a fresh process with an empty cache, and reports wall time, CPU time and peak memory: how the
cost grows with the data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pizzactl.bench.photos import make_photos
from pizzactl.console import log
from pizzactl.data.dataset import load_dataset, stratified_split
from pizzactl.data.download import resolve_data_dir
from pizzactl.errors import WeightsError
from pizzactl.model.decode import decode_resize
from pizzactl.tfimport import quiet_tf_logs, require_tensorflow
from pizzactl.train.backbones import get_backbone, resolve_weights
from pizzactl.train.backbones.weights import NONE
from pizzactl.train.features import compute_features
from pizzactl.train.heads import build_head


def pick_interleaved(records, limit: int | None):
    """At most `limit` records, classes interleaved so a small limit keeps both classes."""
    if not limit or limit >= len(records):
        return list(records)
    by_label: dict[int, list] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    picked: list = []
    i = 0
    while len(picked) < limit:
        for group in by_label.values():
            if i < len(group) and len(picked) < limit:
                picked.append(group[i])
        i += 1
    return picked


def default_backbone(settings) -> str:
    """What `pizzactl train` trains by default (the first of several)."""
    return str(settings.backbone).split(",")[0].strip()


def _build(backbone, weights, size: int, explicit: bool):
    """The extractor and the weights actually used: ImageNet, else (if not asked for) random."""

    try:
        return backbone.build(weights, size), weights
    except WeightsError:
        if explicit or weights == NONE:
            raise
        return backbone.build(NONE, size), NONE


def bench_train(settings, backbone: str | None = None, epochs: int = 20, limit: int | None = None) -> dict[str, Any]:
    """The same frozen-backbone head trained plain and cached, on the same photos and seed."""
    quiet_tf_logs()
    import numpy as np

    require_tensorflow()  # the missing [train] extra is named before the data is read

    bb = get_backbone(backbone or default_backbone(settings))
    size = int(settings.image_size or bb.input_size)
    explicit = settings.explicit("weights")
    weights = resolve_weights(settings.weights, bb, explicit=explicit)
    dataset = load_dataset(resolve_data_dir(settings))
    train_records, val_records = stratified_split(dataset, settings.val_split, settings.seed)
    n_val = max(1, round((limit or len(dataset)) * settings.val_split))
    train_records = pick_interleaved(train_records, (limit - n_val) if limit else None)
    val_records = pick_interleaved(val_records, n_val if limit else None)
    batch = int(settings.batch_size)
    n_images = len(train_records) + len(val_records)

    extractor, weights_used = _build(bb, weights, size, explicit)
    extractor.trainable = False
    extractor(np.zeros((2, size, size, 3), np.float32), training=False)  # graph and oneDNN set-up, out of both timings

    log(f"bench train: {bb.name} ({weights_used} weights, {size}px), {n_images} images, {epochs} epochs")
    run = {"extractor": extractor, "size": size, "epochs": epochs, "batch": batch, "seed": int(settings.seed)}
    cached_seconds, forward_seconds, cached_accuracy, dim = _time_cached(run, train_records, val_records)
    log(f"  cached: {cached_seconds:.1f}s (forward pass {forward_seconds:.1f}s)")
    plain_seconds, plain_accuracy = _time_plain(run, dim, train_records, val_records)
    log(f"  plain: {plain_seconds:.1f}s")

    return {
        "backbone": bb.name,
        "weights": str(weights_used),
        "image_size": size,
        "n_images": n_images,
        "epochs": epochs,
        "batch_size": batch,
        "plain_seconds": round(plain_seconds, 2),
        "cached_seconds": round(cached_seconds, 2),
        "forward_pass_seconds": round(forward_seconds, 2),
        "speedup": round(plain_seconds / cached_seconds, 2),
        "cached_over_forward": round(cached_seconds / forward_seconds, 3),
        "plain_val_accuracy": plain_accuracy,
        "cached_val_accuracy": cached_accuracy,
        "goals": {
            "speedup >= 10": plain_seconds / cached_seconds >= 10,
            "cached <= 1.3 x forward": cached_seconds <= 1.3 * forward_seconds,
        },
    }


def _labels(records):
    import numpy as np

    return np.array([r.label for r in records], np.float32)


def _time_cached(run: dict, train_records, val_records) -> tuple[float, float, float, int]:
    """One forward pass to features, then the head on them: (seconds, forward seconds, val accuracy, dim)."""
    import keras

    keras.utils.set_random_seed(run["seed"])
    t0 = time.perf_counter()
    f_train = compute_features(run["extractor"], [r.path for r in train_records], run["size"], batch_size=64)
    f_val = compute_features(run["extractor"], [r.path for r in val_records], run["size"], batch_size=64)
    forward_seconds = time.perf_counter() - t0
    head = build_head(f_train.shape[1], 0.2)
    head.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"], steps_per_execution=32
    )
    hist = head.fit(
        f_train,
        _labels(train_records),
        validation_data=(f_val, _labels(val_records)),
        epochs=run["epochs"],
        batch_size=run["batch"],
        shuffle=True,
        verbose=0,
    )
    seconds = time.perf_counter() - t0
    return seconds, forward_seconds, float(hist.history["val_accuracy"][-1]), int(f_train.shape[1])


def _time_plain(run: dict, dim: int, train_records, val_records) -> tuple[float, float]:
    """Frozen backbone + head fed decoded images every epoch (the seed notebook): (seconds, val accuracy)."""
    import keras
    import tensorflow as tf

    size, seed = run["size"], run["seed"]
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((size, size, 3), name="pixels")
    model = keras.Model(pixels, build_head(dim, 0.2)(run["extractor"](pixels, training=False)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])

    def images(records, shuffle: bool):
        """(decoded pixels, label) batches, decoded from the files again at every epoch."""
        ds = tf.data.Dataset.from_tensor_slices(([str(r.path) for r in records], _labels(records)))
        if shuffle:
            ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (decode_resize(tf.io.read_file(p), size), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(run["batch"]).prefetch(tf.data.AUTOTUNE)

    t0 = time.perf_counter()
    hist = model.fit(
        images(train_records, True),
        validation_data=images(val_records, False),
        epochs=run["epochs"],
        verbose=0,
        shuffle=False,
    )
    return time.perf_counter() - t0, float(hist.history["val_accuracy"][-1])


def bench_scaling(
    settings, sizes: Sequence[int], backbone: str | None = None, work: Path | str | None = None
) -> dict[str, Any]:
    """`pizzactl train` on each number of photos, cold: wall and CPU seconds, peak memory.

    Each size runs in its own process (so its peak resident memory is its own, from
    `wait4`), with its own empty cache, deleted afterwards. Photos past the dataset's own are
    re-crops of them (`bench.photos.make_photos`), kept in `work` for the next run.
    """
    import json
    import shutil
    import subprocess
    import sys

    source = resolve_data_dir(settings)
    work = Path(work).expanduser() if work else Path(settings.cache_dir).expanduser() / "bench-train"
    name = backbone or default_backbone(settings)
    rows = []
    for n in sizes:
        data = make_photos(source, work / f"photos-{n}", n, seed=int(settings.seed))
        run = work / f"run-{n}"
        shutil.rmtree(run, ignore_errors=True)
        env = {
            **os.environ,
            "PIZZACTL_CACHE_DIR": str(run / "cache"),
            "PIZZACTL_RUNS_DIR": str(run / "runs"),
            "PIZZACTL_MODELS_DIR": str(run / "models"),
        }
        command = [sys.executable, "-m", "pizzactl", "train", "--data", str(data), "--backbone", name, "--json"]
        if settings.explicit("weights"):
            command += ["--weights", str(settings.weights)]
        log(f"bench train --scale: {n} photos ({data})")
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"pizzactl train on {n} photos exited {proc.returncode}")
        metrics = json.loads(out)["metrics"]
        rows.append(
            {
                "photos": n,
                "wall_seconds": round(wall, 1),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux: kilobytes
                **{k: metrics.get(k) for k in ("feature_seconds", "head_seconds", "fine_tune_seconds")},
                "val_accuracy": metrics.get("val_accuracy"),
            }
        )
        log(f"  {rows[-1]}")
        shutil.rmtree(run, ignore_errors=True)
    first = rows[0]
    for row in rows:
        row["time_per_photo_ratio"] = round(
            (row["wall_seconds"] / row["photos"]) / (first["wall_seconds"] / first["photos"]), 2
        )
    return {"backbone": name, "sizes": list(sizes), "rows": rows}
