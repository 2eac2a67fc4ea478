#!/usr/bin/env python3
"""The decode's share of CPU per image in front of the LiteRT classifier, as the model server runs it.

For each photo (real JPEGs, as clients send them), times LiteRTRuntime's decode of the bytes
(`decode_resize` in a tf.function, what serving_default runs) and then the classifier's invoke,
one image after the other, so both see the same machine load; prints ms per image of each, the
decode's share, and the photos' sizes. `--batch` decodes that many images per call (the model
server decodes a batch at a time).

usage: python benchmarks/decode_share.py VERSION_DIR PHOTOS_DIR [--runtime litert-int8] [--images 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", type=Path)
    parser.add_argument("photos", type=Path)
    parser.add_argument("--runtime", default="litert-int8")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    from PIL import Image

    from pizzactl.model.runtimes import LiteRTRuntime

    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = files[:: max(1, len(files) // args.images)][: args.images]
    blobs = [p.read_bytes() for p in files]
    sizes = [Image.open(p).size for p in files]
    runtime = LiteRTRuntime.load(args.version, 0, args.runtime, threads=args.threads)
    runtime.classify(runtime._decode_batch(blobs[:2]))  # trace and plan outside the timing
    decode, invoke = [], []
    for i in range(0, len(blobs), args.batch):
        batch = blobs[i : i + args.batch]
        started = time.perf_counter()
        pixels = runtime._decode_batch(batch)
        decoded = time.perf_counter()
        runtime.classify(pixels)
        done = time.perf_counter()
        decode.append((decoded - started) / len(batch))
        invoke.append((done - decoded) / len(batch))
    d, c = statistics.median(decode) * 1000, statistics.median(invoke) * 1000
    pixels_m = statistics.median(w * h for w, h in sizes) / 1e6
    print(
        f"{args.version} {args.runtime} threads={args.threads} batch={args.batch} on {len(blobs)} photos "
        f"(median {pixels_m:.2f} Mpx): decode {d:.1f} ms/img, classifier {c:.1f} ms/img, "
        f"decode share {d / (d + c):.0%} (means {statistics.mean(decode) * 1000:.1f} / {statistics.mean(invoke) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
