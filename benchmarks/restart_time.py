"""Restart time of `deploy --target local`: `kill -9` of a server -> the first 200 from /predict.

    python benchmarks/restart_time.py --models MODELS [--rounds 3] [--photo PHOTO.jpg]

Deploys MODELS locally (its own state dir and free ports), then per round and per server
(model server, gateway): waits out the supervisor's backoff reset (a run of 60 s), kills the
server with SIGKILL and times until POST /predict answers 200 again. Prints one line per
kill and the median; tears down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--photo", help="a JPEG to predict (default: a generated one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=61.0, help="seconds between kills (the backoff resets at 60)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="restart-time-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(PIZZACTL_STATE_DIR=str(root), PIZZACTL_MODELS_DIR=args.models, PIZZACTL_PORT=str(free_port()))
    env.update(PIZZACTL_MODEL_PORT=str(free_port()), TF_CPP_MIN_LOG_LEVEL="2")
    if args.photo:
        photo = Path(args.photo).read_bytes()
    else:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 80, 40)).save(buf, "JPEG")
        photo = buf.getvalue()

    def pizzactl(*argv: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "pizzactl", *argv], env=env, capture_output=True, text=True, check=True
        ).stdout

    url = json.loads(pizzactl("deploy", "--target", "local", "--json"))["url"]

    def ok() -> bool:
        try:
            headers = {"content-type": "image/jpeg"}
            return httpx.post(url + "/predict", content=photo, headers=headers, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    times: dict[str, list[float]] = {"modelserver": [], "gateway": []}
    try:
        for _ in range(args.rounds):
            for name in times:
                time.sleep(args.settle)
                pid = json.loads(pizzactl("status", "--json"))["pids"][name]
                assert ok()
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                while not ok():
                    time.sleep(0.05)
                times[name].append(time.monotonic() - killed)
                print(f"{name}: kill -9 -> 200 in {times[name][-1]:.2f} s", flush=True)
        for name, values in times.items():
            print(
                f"{name}: median {statistics.median(values):.2f} s over {len(values)} kills ({min(values):.2f}-{max(values):.2f})"
            )
        print(pizzactl("status"))
    finally:
        subprocess.run([sys.executable, "-m", "pizzactl", "teardown"], env=env, check=False)


if __name__ == "__main__":
    main()
