"""CPU milliseconds per image of each serving process (gateway, model server), not images/s.

On a shared machine throughput says how busy the neighbours were; the CPU time a process spends
per image hardly moves with them, so a change to the gateway or the model server can be judged by
it while other jobs run. The servers start as `pizzactl serve` starts them (`bench.serve.servers`),
photos are uploaded as `pizzactl predict` does (`bench.load.upload_load`, `concurrency` in flight),
and each process's user + system CPU is read from /proc before and after each round.

    python benchmarks/cpu_per_image.py MODELS [--data PHOTOS] [--requests 300] [--rounds 3]
    python benchmarks/cpu_per_image.py MODELS --py-spy 20     # + a py-spy profile of each server

It also prints the mean batch the model server formed and its CPU per image thread by thread.

With `--py-spy SECONDS` (py-spy installed by hand, not a dependency) both servers are profiled
under load for that long and the top functions by own and total time are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pizzactl.bench.load import batch_stats, cpu_snapshot, run_async, upload_load
from pizzactl.bench.serve import pick_photos, servers
from pizzactl.model.store import latest_version_dir

IDLE = ("Condition.wait", "Queue.get", "_worker (concurrent/futures/thread.py")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid` so far ("main" is the event loop's; the others by id:
    the batch thread, LiteRT's interpreter threads and TensorFlow's pools), from /proc."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() if tid != str(pid) else "main"
        out[name if name == "main" else f"{name}-{tid}"] = (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK"
        )
    return out


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--threads",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def top_functions(raw: Path, n: int = 40) -> list[str]:
    """py-spy's collapsed stacks -> the functions with the most samples (self and total), idle waits left out."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(IDLE):  # a worker thread waiting for work, sampled anyway
            continue
        k = int(count)
        samples += k
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            total[f] = total.get(f, 0) + k
    lines = [f"{samples} samples"]
    lines += [f"self {100 * v / samples:5.1f}%  {f}" for f, v in sorted(own.items(), key=lambda x: -x[1])[:n]]
    lines += [f"total {100 * v / samples:5.1f}%  {f}" for f, v in sorted(total.items(), key=lambda x: -x[1])[:n]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pizza_not_pizza"))
    parser.add_argument("--requests", type=int, default=300, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()

    version_dir = latest_version_dir(args.models)
    photos = [(p.name, p.read_bytes()) for p in pick_photos(args.data)]
    with tempfile.TemporaryDirectory(prefix="pizzactl-cpu-") as tmp, servers(version_dir, Path(tmp), "cpu") as started:
        pids = started.pids
        run_async(upload_load(started.url, photos, 2 * args.concurrency, args.concurrency))  # warm up
        per_round: dict[str, list[float]] = {name: [] for name in pids}
        rates, batches, threads = [], [], []
        for _ in range(args.rounds):
            before, stats, tb = cpu_snapshot(pids), batch_stats(started.model_url), thread_cpu(pids["modelserver"])
            seconds, _, errors = run_async(upload_load(started.url, photos, args.requests, args.concurrency))
            after, stats2, ta = cpu_snapshot(pids), batch_stats(started.model_url), thread_cpu(pids["modelserver"])
            if errors:
                sys.exit(f"{errors} requests failed")
            rates.append(args.requests / seconds)
            if stats and stats2 and stats2[0] > stats[0]:
                batches.append(round((stats2[1] - stats[1]) / (stats2[0] - stats[0]), 2))
            ms = {t: 1000 * (v - tb.get(t, 0.0)) / args.requests for t, v in ta.items()}
            threads.append({t: round(v, 2) for t, v in sorted(ms.items(), key=lambda x: -x[1]) if v >= 0.05})
            for name in pids:
                per_round[name].append(1000 * (after[name] - before[name]) / args.requests)  # type: ignore[operator]
        result = {
            "cpu_ms_per_image": {name: round(statistics.median(v), 2) for name, v in per_round.items()},
            "rounds": {name: [round(x, 2) for x in v] for name, v in per_round.items()},
            "img_per_s": [round(r, 1) for r in rates],
            "mean_batch": batches,  # images per batch the model server formed
            "modelserver_threads_ms_per_image": threads,
            "load_average": os.getloadavg(),
        }
        print(json.dumps(result))
        if args.py_spy and shutil.which("py-spy"):
            outs = {name: Path(tmp) / f"{name}.txt" for name in pids}
            spies = [profile(pid, args.py_spy, outs[name]) for name, pid in pids.items()]
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    run_async(upload_load(started.url, photos, 100, args.concurrency))

            driver = threading.Thread(target=load, daemon=True)
            driver.start()
            for spy in spies:
                spy.wait()
            stop.set()
            driver.join()
            for name, out in outs.items():
                print(f"--- {name}")
                print("\n".join(top_functions(out)) if out.exists() else "no profile")


if __name__ == "__main__":
    main()
