#!/usr/bin/env python3
"""Model server settings side by side, end to end, in alternating rounds (pizzactl.bench.compare).

Usage: benchmarks/serve_ab.py [--models DIR] [--data DIR] [--rounds N] [--concurrency N]
                              [--requests N] NAME=FLAGS NAME=FLAGS ...
  e.g. benchmarks/serve_ab.py --models models "tf=--runtime tensorflow" "int8=--runtime litert-int8"
       benchmarks/serve_ab.py "1 thread=--intra-op-threads 1" "2 threads=--intra-op-threads 2"
FLAGS are the model server's own (`python -m pizzactl.serving.modelserver --help`). Prints one
JSON object: per variant the median images/s, each round's, the ratio to the first variant,
p50/p95 one request at a time, the mean server-side batch and CPU ms per image per process.
"""

import argparse
import json
import sys

from pizzactl.bench.compare import compare_servers, parse_variant
from pizzactl.bench.serve import data_dir, pick_photos
from pizzactl.config import load_settings
from pizzactl.model.store import latest_version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=FLAGS, the first is the baseline")
    parser.add_argument("--models", help="models directory (default: the models_dir setting)")
    parser.add_argument("--data", help="photos to upload (default: as `pizzactl bench serve`)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160, help="requests per variant and round")
    args = parser.parse_args()
    settings = load_settings({"models_dir": args.models, "data_dir": args.data})
    photos = [(p.name, p.read_bytes()) for p in pick_photos(data_dir(settings))]
    result = compare_servers(
        latest_version_dir(settings.models_dir),
        [parse_variant(v) for v in args.variants],
        photos,
        rounds=args.rounds,
        concurrency=args.concurrency,
        requests=args.requests,
    )
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
