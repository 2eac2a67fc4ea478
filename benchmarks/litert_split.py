#!/usr/bin/env python3
"""CPU per image of the LiteRT runtime in-process: decode and invoke, threads vs a split batch.

The model server's own runtime (`LiteRTRuntime`) on the very JPEG bytes the gateway sends (the
shared photos through the gateway's `prepare`), at the batch size the server forms under 16 users
(~8, `cpu_per_image.py` prints it): the decode alone, then decode + invoke on one interpreter with
1 or 2 threads and on `--split` one-thread interpreters, in alternating rounds. CPU time
(`process_time`, every thread) is the figure to read on a shared machine; images/s are printed too.

    python benchmarks/litert_split.py MODELS [--data PHOTOS] [--runtime litert-int8] [--batch 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from pizzactl.bench.serve import pick_photos
from pizzactl.model.runtimes import SIGNATURE, LiteRTRuntime
from pizzactl.model.store import latest_version_dir
from pizzactl.serving.pipeline import prepare
from pizzactl.serving.prepare import ImageLimits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pizza_not_pizza"))
    parser.add_argument("--runtime", default="litert-int8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--split", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    version_dir = latest_version_dir(args.models)
    size = 296
    runtimes = {
        "1 interpreter, 1 thread": LiteRTRuntime.load(version_dir, 1, args.runtime, 1),
        "1 interpreter, 2 threads": LiteRTRuntime.load(version_dir, 1, args.runtime, 2),
        f"split over {args.split} x 1 thread": LiteRTRuntime.load(version_dir, 1, args.runtime, 2, args.split),
    }
    size = int(next(iter(runtimes.values())).card.image_size or size)
    wire = [prepare(p.read_bytes(), ImageLimits(), size).jpeg or b"" for p in pick_photos(args.data)]
    batches = [wire[i : i + args.batch] for i in range(0, len(wire), args.batch)]
    decoder = runtimes["1 interpreter, 1 thread"]
    cells = {"decode only": lambda: [decoder._decode_batch(b) for b in batches]}
    for name, runtime in runtimes.items():
        runtime.run(SIGNATURE, {"image_bytes": batches[0]})  # warm up
        cells[name] = lambda rt=runtime: [rt.run(SIGNATURE, {"image_bytes": b}) for b in batches]
    cpu: dict[str, list[float]] = {name: [] for name in cells}
    rate: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(args.rounds):
        for name, cell in cells.items():
            c, w = time.process_time(), time.perf_counter()
            cell()
            cpu[name].append(1000 * (time.process_time() - c) / len(wire))
            rate[name].append(len(wire) / (time.perf_counter() - w))
    print(f"{len(wire)} photos, {sum(map(len, wire)) // len(wire)} bytes each on average, batch {args.batch}")
    for name in cells:
        print(
            f"{name:28s} CPU ms/img {statistics.median(cpu[name]):5.2f} ({', '.join(f'{v:.2f}' for v in cpu[name])})"
            f"  img/s {statistics.median(rate[name]):6.1f}"
        )


if __name__ == "__main__":
    main()
