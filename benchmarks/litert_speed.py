#!/usr/bin/env python3
"""Images/s of exported models' LiteRT classifiers, side by side: the cost of a backbone choice.

Runs each model directory's LiteRT artefacts (float32 `litert`, `litert-int8`, whether or not
export's check kept them) on random pixels at the model's size, one image per invoke as the model server does, in
alternating rounds so every model sees the same machine. Decoding is left out: it costs the
same whatever the backbone.

usage: python benchmarks/litert_speed.py MODEL_DIR [MODEL_DIR ...] [--threads 2] [--images 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import numpy as np

    from pizzactl.errors import ModelNotFoundError
    from pizzactl.model.runtimes import LiteRTRuntime

    runtimes = {}
    for path in args.models:
        for name in ("litert", "litert-int8"):
            try:
                runtimes[(str(path), name)] = LiteRTRuntime.load(path, 0, name, threads=args.threads)
            except ModelNotFoundError as exc:
                print(f"{path} {name}: {exc}")
    speeds: dict = {key: [] for key in runtimes}
    for _ in range(args.rounds):
        for key, runtime in runtimes.items():
            size = int(runtime.pizzactl["image_size"])
            pixels = np.random.default_rng(0).uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
            started = time.perf_counter()
            runtime.classify(pixels)
            speeds[key].append(args.images / (time.perf_counter() - started))
    for (path, name), values in speeds.items():
        meta = runtimes[(path, name)].pizzactl
        print(
            f"{path} {meta['backbone']} {meta['image_size']}px {name}: {statistics.median(values):.1f} images/s "
            f"(rounds {', '.join(f'{v:.1f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
