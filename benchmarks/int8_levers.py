#!/usr/bin/env python3
"""The int8 artefact of a trained run under each calibration lever, judged by export's own rule.

For a run (runs/<id>) and its exported version, converts `litert-int8` again in a scratch copy of
the version with each calibration set and prints what export's check (`convert.judge`) wrote:
held-out photos flipped against / for it, the one-sided p-value, |dp| at p50 / p95 / max, and
held-out accuracy beside the SavedModel's. Levers (every one reported, not the best):
  plain-N      N training photos, decoded as serving decodes them (export's default: 100), each
               class in its share (train.reexport.calibration_records), all N used
  aug-N        the same N photos plus their augmented views as training cached them (views.py)

usage: python benchmarks/int8_levers.py RUN_DIR VERSION_DIR [--levers plain-100,plain-400,aug-400]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path


def augmented(images: list[bytes], size: int, views: int) -> list[bytes]:
    """The training's augmented views (crop, flip, colour) of each image, as lossless PNGs of `size` px."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from pizzactl.train.views import view_fn, view_names

    out = []
    for view in view_names(views):
        fn = view_fn(view, size)
        for index, data in enumerate(images):
            pixels = fn(tf.constant(data), index).numpy()
            buf = io.BytesIO()
            Image.fromarray(np.clip(np.round(pixels), 0, 255).astype("uint8")).save(buf, "PNG")
            out.append(buf.getvalue())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--levers", default="plain-100,plain-400,aug-400")
    parser.add_argument("--views", type=int, default=2, help="augmented views per photo for aug-N")
    args = parser.parse_args(argv)

    from pizzactl.tfimport import import_quietly

    import_quietly()
    from pizzactl.model.card import ModelCard
    from pizzactl.model.litert import convert_runtimes
    from pizzactl.train.reexport import load_run_classifier, run_check_images, run_split

    config = json.loads((args.run_dir / "config.json").read_text())
    classifier = load_run_classifier(args.run_dir)
    card = ModelCard.load(args.version_dir)
    rows = []
    for lever in args.levers.split(","):
        kind, n = lever.split("-")
        calibration, holdout = run_split(config, calibration_size=int(n))
        if kind == "aug":
            calibration = calibration + augmented(calibration, int(card.image_size or 0), args.views)
        with tempfile.TemporaryDirectory() as scratch:
            version = Path(scratch) / "1"
            shutil.copytree(args.version_dir, version, ignore=shutil.ignore_patterns("*.tflite"))
            started = time.perf_counter()
            entry = convert_runtimes(
                version,
                classifier,
                run_check_images(config),
                holdout=holdout,
                calibration=calibration,
                runtimes=("litert-int8",),
                max_calibration=len(calibration),  # every image of the lever, not export's default cap
            )["litert-int8"]
            seconds = time.perf_counter() - started
        acc, flips, dp = entry["holdout_accuracy"], entry["flips"], entry["abs_diff"]
        rows.append(
            f"| {lever} ({len(calibration)} images) | {flips['worse']} / {flips['better']} | {flips['p_worse']:.3g} "
            f"| {dp['p50']:.3f} / {dp['p95']:.3f} / {entry['max_abs_diff']:.3f} | {acc['litert-int8']:.4f} vs "
            f"{acc['savedmodel']:.4f} (n={acc['n']}) | {'kept' if entry['ok'] else 'left out'} | {seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    print(
        "| calibration | flips against / for | p (worse) | abs dp p50 / p95 / max | held-out accuracy | rule | convert+check |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
