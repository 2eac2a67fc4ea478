"""Memory of the model server with one version loaded vs two side by side (issue 23).

    python benchmarks/version_memory.py --version-dir MODELS/pizza/1 [--runtime auto|tensorflow|litert]

Copies the version into a temp folder as version 1 (and, for the second run, also as version 2
with a model config serving both), starts `python -m pizzactl.serving.modelserver`, waits until
every version is AVAILABLE, answers one predict per version (so lazily built state is counted)
and reads the process's VmRSS and VmHWM from /proc. Prints one line per run and the difference.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import socket
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


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def jpeg() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 120, 40)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def run(version_dir: Path, versions: list[int], runtime: str) -> tuple[int, int]:
    with tempfile.TemporaryDirectory(prefix="pizzactl-vmem-") as tmp:
        models = Path(tmp) / "models"
        for v in versions:
            shutil.copytree(version_dir, models / "pizza" / str(v))
        config = Path(tmp) / "models.config"
        config.write_text(
            'model_config_list { config { name: "pizza" model_version_policy { specific { '
            + " ".join(f"versions: {v}" for v in versions)
            + " } } } }"
        )
        port = free_port()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
        args = ["--models", str(models), "--port", str(port), "--runtime", runtime, "--model-config-file", str(config)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pizzactl.serving.modelserver", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/v1/models/pizza"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    states = httpx.get(url, timeout=2).json().get("model_version_status", [])
                    if sorted(int(s["version"]) for s in states if s["state"] == "AVAILABLE") == versions:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.5)
            else:
                raise SystemExit("the model server did not load every version")
            body = {"instances": [{"b64": jpeg()}]}
            for v in versions:
                httpx.post(f"{url}/versions/{v}:predict", json=body, timeout=120).raise_for_status()
            return rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, required=True)
    parser.add_argument("--runtime", default="auto")
    a = parser.parse_args()
    one = run(a.version_dir, [1], a.runtime)
    two = run(a.version_dir, [1, 2], a.runtime)
    mib = lambda kib: kib / 1024  # noqa: E731
    print(f"runtime {a.runtime}: one version RSS {mib(one[0]):.0f} MiB (peak {mib(one[1]):.0f})")
    print(f"runtime {a.runtime}: two versions RSS {mib(two[0]):.0f} MiB (peak {mib(two[1]):.0f})")
    print(f"the second version costs {mib(two[0] - one[0]):.0f} MiB RSS")


if __name__ == "__main__":
    main()
