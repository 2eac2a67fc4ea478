#!/usr/bin/env python3
"""What shadow mode costs users: stable-only vs shadow gateway, side by side, in alternating rounds.

Usage: benchmarks/shadow_ab.py [--model VERSION_DIR] [--data DIR] [--rounds N] [--concurrency N]
                               [--requests N] [--sequential N]
One builtin model server serves two copies of the model (versions 1 and 2, labels stable and
canary, through a TF Serving model config file); two gateways in front of it: one without a
rollout (every call to the latest version), one with PIZZACTL_SHADOW=1 (users get stable, the
candidate gets the same images in the background). Each round sends the same uploads to each
gateway in turn (the order rotates), so both see the same machine. Prints one JSON object:
per gateway the median images/s at `--concurrency`, p50/p99 one request at a time, errors; and
the shadow gateway's /rollout (pairs compared, skipped shadow calls).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pizzactl.bench.load import percentile, run_async, upload_load
from pizzactl.bench.serve import data_dir, pick_photos
from pizzactl.config import MODEL_NAME, load_settings
from pizzactl.model.store import latest_version_dir
from pizzactl.ports import free_port
from pizzactl.serving.modelserver.versions import model_config_text


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            sys.exit(f"a server exited before {url} was ready (see the logs)")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit(f"{url} not ready within {timeout:g}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an exported version dir (default: the latest under models_dir)")
    parser.add_argument("--data", help="photos to upload (default: as `pizzactl bench serve`)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160, help="requests per gateway and round")
    parser.add_argument("--sequential", type=int, default=40, help="one-at-a-time requests per gateway and round")
    args = parser.parse_args()
    settings = load_settings({"data_dir": args.data})
    version_dir = Path(args.model) if args.model else latest_version_dir(settings.models_dir)
    photos = [(p.name, p.read_bytes()) for p in pick_photos(data_dir(settings))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PIZZACTL_MAX_CONNECTIONS_PER_CLIENT="0")
    load_before, started_at = os.getloadavg(), time.time()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="pizzactl-shadow-") as tmp:
        models = Path(tmp) / "models"
        for version in (1, 2):
            shutil.copytree(version_dir, models / MODEL_NAME / str(version))
        config = Path(tmp) / "models.config"
        config.write_text(model_config_text(MODEL_NAME, str(models / MODEL_NAME), [1, 2], {"stable": 1, "canary": 2}))
        model_port = free_port()
        model_url = f"http://127.0.0.1:{model_port}"
        gateways = {"stable only": (free_port(), {}), "shadow": (free_port(), {"PIZZACTL_SHADOW": "1"})}
        try:
            with open(Path(tmp) / "modelserver.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "pizzactl.serving.modelserver", "--models", str(models)),
                            *("--port", str(model_port), "--model-config-file", str(config)),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
            for port, extra in gateways.values():
                gw_env = dict(env, PIZZACTL_ROLLOUT_DIR=str(Path(tmp) / "rollout"), **extra)
                with open(Path(tmp) / f"gateway-{port}.log", "wb") as log:
                    procs.append(
                        subprocess.Popen(
                            [
                                *(sys.executable, "-m", "pizzactl.serving.gateway", "--model-url", model_url),
                                *("--port", str(port)),
                            ],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=gw_env,
                        )
                    )
            wait_ready(f"{model_url}/v1/models/{MODEL_NAME}/labels/canary", procs)
            for port, _ in gateways.values():
                wait_ready(f"http://127.0.0.1:{port}/readyz", procs)
                run_async(upload_load(f"http://127.0.0.1:{port}", photos, 2 * args.concurrency, args.concurrency))
            samples = {name: {"img_per_s": [], "latency_ms": [], "errors": 0} for name in gateways}
            names = list(gateways)
            for r in range(args.rounds):
                for name in names[r % 2 :] + names[: r % 2]:
                    url = f"http://127.0.0.1:{gateways[name][0]}"
                    seconds, _, failed = run_async(upload_load(url, photos, args.requests, args.concurrency))
                    samples[name]["img_per_s"].append((args.requests - failed) / seconds)
                    _, latencies, failed_seq = run_async(upload_load(url, photos, args.sequential, 1))
                    samples[name]["latency_ms"].extend(latencies)
                    samples[name]["errors"] += failed + failed_seq
                    print(
                        f"round {r + 1}/{args.rounds} {name}: {samples[name]['img_per_s'][-1]:.1f} img/s",
                        file=sys.stderr,
                    )
            time.sleep(2)  # the last shadow calls finish
            rollout = httpx.get(f"http://127.0.0.1:{gateways['shadow'][0]}/rollout", timeout=10).json()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    results = {
        name: {
            "img_per_s": round(statistics.median(s["img_per_s"]), 2),
            "img_per_s_rounds": [round(x, 2) for x in s["img_per_s"]],
            "p50_ms": round(percentile(s["latency_ms"], 50), 2),
            "p99_ms": round(percentile(s["latency_ms"], 99), 2),
            "errors": s["errors"],
        }
        for name, s in samples.items()
    }
    base = results["stable only"]
    results["shadow"]["vs_stable_only"] = {
        "img_per_s": round(results["shadow"]["img_per_s"] / base["img_per_s"], 3),
        "p50_ms_added": round(results["shadow"]["p50_ms"] - base["p50_ms"], 2),
        "p99_ms_added": round(results["shadow"]["p99_ms"] - base["p99_ms"], 2),
    }
    out = {
        "gateways": results,
        "shadow_rollout": {k: rollout[k] for k in ("comparison", "shadow_skipped", "shadow_skipped_by_reason")},
        "model_dir": str(version_dir),
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "sequential_per_round": args.sequential,
        "photos": len(photos),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.time() - started_at, 1),
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
