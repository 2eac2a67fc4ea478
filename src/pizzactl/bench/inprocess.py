"""The model alone: what this machine can do with an exported version, found by trying settings.

Each setting runs in a fresh process (TensorFlow's thread pools are fixed once it starts), a
worker that loads the version on one runtime and then answers commands on stdin, one JSON
object a line: `{"throughput": IMAGES, "batch": B}` -> images/s and CPU seconds,
`{"latency": N}` -> milliseconds per lone image. It runs the model server's own code
(`model.runtimes`) on the very JPEG bytes the gateway would send, so the best of
the sweep is the limit the servers are measured against, not a handicapped baseline.

    python -m pizzactl.bench.inprocess VERSION_DIR JPEGS_FILE RUNTIME INTRA INTER
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.errors import UsageError
from pizzactl.model.runtimes import SIGNATURE, LiteRTRuntime, TensorFlowRuntime, configure_tf_threads
from pizzactl.serving.processes import child_env, die_with_parent
from pizzactl.tfimport import import_quietly, quiet_tf_logs

THREADS = (0, 1, 2)  # TensorFlow: intra-op x inter-op, 0 its own default; LiteRT: interpreter threads
BATCHES = (16, 32)


@dataclass(frozen=True)
class Setting:
    runtime: str
    intra: int
    inter: int

    def label(self) -> str:
        if self.runtime == "tensorflow":
            return f"intra {self.intra or 'default'}, inter {self.inter or 'default'}"
        if self.intra > 1:  # as the model server runs it (`litert_split`: one interpreter per CPU)
            return f"{self.intra} threads, a batch split over {self.intra} interpreters"
        return "1 thread"


def settings_for(runtime: str, threads: Sequence[int] = THREADS) -> list[Setting]:
    """The settings a sweep tries: TensorFlow every intra-op x inter-op pair of `threads`; LiteRT
    each count once, 0 as 1 (the interpreter has no default of its own to fall back on)."""
    counts = list(dict.fromkeys(threads))
    if runtime == "tensorflow":
        return [Setting(runtime, intra, inter) for intra in counts for inter in counts]
    return [Setting(runtime, n, 1) for n in sorted({max(1, n) for n in counts})]


def parse_threads(text: str) -> tuple[int, ...]:
    """`--threads 0,1,2` as counts; anything else is a usage error, before any process starts."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 0:
        raise UsageError(
            f"--threads {text!r} is not a list of thread counts.",
            hint="Pass comma-separated counts >= 0, e.g. --threads 0,1,2 (0: TensorFlow's own default).",
        )
    return counts


def write_jpegs(path: Path, jpegs: Sequence[bytes]) -> None:
    """The photos a worker feeds the model, as one file of length-prefixed JPEGs."""
    with open(path, "wb") as fh:
        for data in jpegs:
            fh.write(len(data).to_bytes(4, "big") + data)


def read_jpegs(path: Path) -> list[bytes]:
    blob, out, i = Path(path).read_bytes(), [], 0
    while i < len(blob):
        n = int.from_bytes(blob[i : i + 4], "big")
        out.append(blob[i + 4 : i + 4 + n])
        i += 4 + n
    return out


class Worker:
    """A worker process for one setting (stopped by `close`, or with the bench: it dies with us)."""

    def __init__(self, version_dir: Path, jpegs_file: Path, setting: Setting, wait: bool = True):

        self.setting = setting
        argv = [str(version_dir), str(jpegs_file), setting.runtime, str(setting.intra), str(setting.inter)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pizzactl.bench.inprocess", *argv],
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_env(),
        )
        self.ready = self._read() if wait else {}  # loaded and warmed up (else: `start_workers` waits)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process worker for {self.setting} exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def throughput(self, images: int, batch: int) -> float:
        return float(self.ask(throughput=images, batch=batch)["img_per_s"])

    def latencies(self, n: int) -> list[float]:
        return list(self.ask(latency=n)["ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_workers(version_dir: Path, jpegs_file: Path, settings: Sequence[Setting]) -> list[Worker]:
    """A worker per setting, all started at once, then each waited for until ready.

    A worker's start is mostly TensorFlow's import and the model's load and tracing, mostly on one
    core: started one after the other, they leave the other cores idle. Nothing is measured before
    every worker is ready, so the figures do not change.
    """
    workers: list[Worker] = []
    try:
        for setting in settings:
            workers.append(Worker(version_dir, jpegs_file, setting, wait=False))
        for worker in workers:
            worker.ready = worker._read()
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return workers


def sweep(
    version_dir: Path, jpegs_file: Path, runtime: str, images: int, rounds: int = 3, threads: Sequence[int] = THREADS
) -> list[dict[str, Any]]:
    """Images/s of every setting and batch size, each setting in a fresh process, in alternating rounds.

    Every setting's process is started first and the cells then take turns, so that on a shared
    machine a busy minute does not crown or sink one setting: each row holds the median and the
    rounds. (With the default threads, 9 TensorFlow processes hold the model at once: ~0.5 GB each.)
    """
    workers = start_workers(version_dir, jpegs_file, settings_for(runtime, threads))
    try:
        cells = [(worker, batch) for worker in workers for batch in BATCHES]
        measured = alternate(cells, images, rounds)
    finally:
        for worker in workers:
            worker.close()
    return [
        {
            "runtime": runtime,
            "intra": worker.setting.intra,
            "inter": worker.setting.inter,
            "batch": batch,
            "img_per_s": round(statistics.median(figures), 2),
            "rounds": figures,
        }
        for (worker, batch), figures in zip(cells, measured, strict=True)
    ]


def alternate(cells: Sequence[tuple[Worker, int]], images: int, rounds: int) -> list[list[float]]:
    """Images/s of each (worker, batch size) cell in each round; the order shifts every round."""
    out: list[list[float]] = [[] for _ in cells]
    for r in range(rounds):
        shift = r * len(cells) // max(1, rounds)
        for i in [*range(shift, len(cells)), *range(shift)]:
            worker, batch = cells[i]
            out[i].append(round(worker.throughput(max(images, 2 * batch), batch), 2))
    return out


def side_by_side(version_dir: Path, jpegs_file: Path, best: dict[str, dict[str, Any]], images: int, rounds: int):
    """Each runtime's best setting (a `sweep` row) in alternating rounds: {runtime: images/s per round}.

    The sweeps run one after the other, so on a shared machine their figures are not comparable;
    these are.
    """
    started = start_workers(
        version_dir, jpegs_file, [Setting(name, row["intra"], row["inter"]) for name, row in best.items()]
    )
    workers = dict(zip(best, started, strict=True))
    try:
        cells = [(workers[runtime], int(row["batch"])) for runtime, row in best.items()]
        return dict(zip(best, alternate(cells, images, rounds), strict=True))
    finally:
        for worker in workers.values():
            worker.close()


# --- the worker process ------------------------------------------------------------------------


def _serve(version_dir: Path, jpegs: list[bytes], runtime_name: str, intra: int, inter: int) -> None:

    quiet_tf_logs()  # before runtimes' TensorFlow import

    import_quietly()
    configure_tf_threads(intra, inter)
    version = int(version_dir.name) if version_dir.name.isdigit() else 0
    runtime: Any
    if runtime_name == "tensorflow":
        runtime = TensorFlowRuntime.load(version_dir, version)
    else:
        runtime = LiteRTRuntime.load(version_dir, version, runtime_name, threads=intra, split=intra)
    name = runtime.input_names(SIGNATURE)[0]

    def run(batch: list[bytes]) -> None:
        runtime.run(SIGNATURE, {name: batch})

    for size in (1, *BATCHES):  # trace every batch shape once
        run([jpegs[i % len(jpegs)] for i in range(size)])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "throughput" in command:
            size = int(command["batch"])
            batches = [[jpegs[(i + j) % len(jpegs)] for j in range(size)] for i in range(0, len(jpegs), size)]
            done, started, cpu = 0, time.perf_counter(), time.process_time()
            while done < int(command["throughput"]):
                run(batches[(done // size) % len(batches)])
                done += size
            seconds = time.perf_counter() - started
            print(
                json.dumps({"img_per_s": done / seconds, "images": done, "cpu_s": time.process_time() - cpu}),
                flush=True,
            )
        else:
            ms = []
            for i in range(int(command["latency"])):
                t0 = time.perf_counter()
                run([jpegs[i % len(jpegs)]])
                ms.append((time.perf_counter() - t0) * 1000)
            print(json.dumps({"ms": ms}), flush=True)


if __name__ == "__main__":
    _dir, _jpegs, _runtime, _intra, _inter = sys.argv[1:6]
    _serve(Path(_dir), read_jpegs(Path(_jpegs)), _runtime, int(_intra), int(_inter))
