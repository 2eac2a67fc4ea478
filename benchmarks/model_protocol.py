#!/usr/bin/env python3
"""The gateway's two wires to the model server side by side: TF Serving's REST API (JSON, base64)
and its gRPC PredictionService (`model_protocol` rest | grpc), end to end, in alternating rounds.

Usage: benchmarks/model_protocol.py [--models DIR] [--data DIR] [--rounds N] [--concurrency N]
                                    [--requests N] [--sequential N]
Both pairs (model server + gateway, as `pizzactl serve --model-protocol X` starts them) run at
once and are measured in turn, so on a shared machine both see the same CPU. Prints one JSON
object, per protocol: e2e images/s (median of the rounds, `concurrency` uploads in flight), p50
one upload at a time, the overhead p50 (that minus the model server's own p50 for the same
request over REST, asked directly), and the gateway's and model server's CPU ms per image
during the throughput runs.
"""

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

from pizzactl import httpclient
from pizzactl.bench.load import cpu_snapshot, direct_latencies, percentile, run_async, upload_load
from pizzactl.bench.serve import data_dir, pick_photos, servers
from pizzactl.config import load_settings
from pizzactl.model.store import latest_version_dir
from pizzactl.serving import processes as proc
from pizzactl.serving.prepare import prepare_image

PROTOCOLS = ("rest", "grpc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="models directory (default: the models_dir setting)")
    parser.add_argument("--data", help="photos to upload (default: as `pizzactl bench serve`)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96, help="uploads per protocol and round, under load")
    parser.add_argument("--sequential", type=int, default=30, help="uploads one at a time per protocol and round")
    args = parser.parse_args()
    settings = load_settings({"models_dir": args.models, "data_dir": args.data})
    photos = [(p.name, p.read_bytes()) for p in pick_photos(data_dir(settings))]
    version_dir = latest_version_dir(settings.models_dir)
    figures: dict[str, dict[str, list[float]]] = {
        p: {"tp": [], "seq": [], "direct": [], "gw": [], "ms": []} for p in PROTOCOLS
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        started = {p: stack.enter_context(servers(version_dir, Path(tmp), p, (), p)) for p in PROTOCOLS}
        size = httpclient.json_or_none(started["rest"].url + "/readyz", timeout=10)["image_size"]
        jpegs = [prepare_image(data, size) for _, data in photos]  # what the gateway sends
        for pair in started.values():
            run_async(upload_load(pair.url, photos, 2 * args.concurrency, args.concurrency))  # warm up
        with httpclient.session() as client:
            for r in range(args.rounds):
                for protocol, pair in started.items():
                    f = figures[protocol]
                    pids = {"gateway": pair.pids[proc.GATEWAY], "model server": pair.pids[proc.MODELSERVER]}
                    before = cpu_snapshot(pids)
                    seconds, _, errors = run_async(upload_load(pair.url, photos, args.requests, args.concurrency))
                    after = cpu_snapshot(pids)
                    f["tp"].append((args.requests - errors) / seconds)
                    f["gw"].append((after["gateway"] - before["gateway"]) / args.requests)
                    f["ms"].append((after["model server"] - before["model server"]) / args.requests)
                    f["seq"].extend(run_async(upload_load(pair.url, photos, args.sequential, 1))[1])
                    f["direct"].extend(
                        direct_latencies(client, pair.model_url, jpegs, args.sequential, offset=r * args.sequential)
                    )
    result = {}
    for protocol, f in figures.items():
        p50 = percentile(f["seq"], 50)
        result[protocol] = {
            "e2e_img_per_s": round(statistics.median(f["tp"]), 2),
            "e2e_img_per_s_rounds": [round(x, 2) for x in f["tp"]],
            "p50_ms": round(p50, 2),
            "modelserver_p50_ms": round(percentile(f["direct"], 50), 2),
            "overhead_p50_ms": round(p50 - percentile(f["direct"], 50), 2),
            "gateway_cpu_ms_per_image": round(1000 * statistics.median(f["gw"]), 2),
            "modelserver_cpu_ms_per_image": round(1000 * statistics.median(f["ms"]), 2),
        }
    json.dump({"concurrency": args.concurrency, "rounds": args.rounds, **result}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
