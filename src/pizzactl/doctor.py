"""`pizzactl doctor`: is this machine ready for the default path (train -> build -> kind)?

Each check is cheap (no TensorFlow import, no network beyond the local Docker socket) and a
failed one names the command that fixes it. `required` marks what the default path needs;
the CLI exits non-zero when one of those fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pizzactl.config import Settings
from pizzactl.errors import MissingDependencyError, PizzaError, missing_extra
from pizzactl.kube.docker_daemon import daemon_platform, docker_client, docker_endpoint

MIN_PYTHON = (3, 11)  # asyncio.timeout, tomllib
MIN_FREE_GB = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _python() -> Check:
    v = sys.version_info
    ok = (v.major, v.minor) >= MIN_PYTHON
    return Check(
        "python",
        ok,
        f"{v.major}.{v.minor}.{v.micro} ({sys.executable})",
        "" if ok else "Install Python >= 3.11 and reinstall pizzactl in it.",
    )


def _tensorflow() -> Check:
    spec = importlib.util.find_spec("tensorflow")
    if spec is None:
        return Check(
            "tensorflow",
            False,
            "not installed (needed to train, export and evaluate)",
            missing_extra("tensorflow").hint,
        )
    version = _dist_version("tensorflow") or _dist_version("tensorflow-cpu") or "installed"
    return Check("tensorflow", True, version)


def _dist_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _docker() -> tuple[Check, Any]:
    """The daemon at the active endpoint (DOCKER_HOST, else the docker context), and its client."""

    try:
        client = docker_client(5)
        info = client.version()
        return Check("docker", True, f"daemon {info.get('Version', '?')} at {client.api.base_url}"), client
    except MissingDependencyError as exc:  # a base install: no docker SDK to ask the daemon with
        return Check("docker", False, exc.message, exc.hint), None
    except PizzaError as exc:
        cli = shutil.which("docker")
        fix = (
            "Start the daemon: `sudo systemctl start docker` (Linux), open Docker Desktop or `colima start`; "
            "check `docker context ls` and DOCKER_HOST."
            if cli
            else "Install Docker: https://docs.docker.com/engine/install/"
        )
        try:
            where = docker_endpoint().source
        except PizzaError:
            where = "docker context"
        return Check("docker", False, f"daemon unreachable ({where}): {exc.message[-160:]}", fix), None


def _architecture(client) -> Check:
    """arm64 (Apple Silicon, Graviton): no tensorflow/serving image, so the builtin model server."""
    import platform

    where = daemon_platform(client.api) if client is not None else f"linux/{platform.machine()}"
    if where.endswith("arm64"):
        return Check(
            "architecture",
            True,
            f"{where}: tensorflow/serving has no arm64 image, so images use the builtin model server "
            "(with the `tensorflow` wheel; tensorflow-cpu has no aarch64 build)",
            required=False,
        )
    return Check("architecture", True, f"{where}: the tensorflow/serving model server", required=False)


def _tool(name: str, version_args: list[str], fix: str, required: bool) -> Check:
    path = shutil.which(name)
    if not path:
        return Check(name, False, "not found on PATH", fix, required)
    try:
        proc = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=10)
        line = (proc.stdout or proc.stderr).strip().splitlines()
        detail = line[0][:120] if line else path
        if proc.returncode != 0:
            return Check(name, False, f"{path} failed: {detail}", fix, required)
        return Check(name, True, detail, "", required)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, False, f"{path}: {exc}", fix, required)


def _kaggle(settings: Settings) -> Check:
    if settings.data_dir is not None:
        return Check("kaggle", True, f"not needed: data_dir = {settings.data_dir}", required=False)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return Check("kaggle", True, "KAGGLE_USERNAME / KAGGLE_KEY set", required=False)
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    token = config_dir / "kaggle.json"
    if token.is_file():
        try:
            json.loads(token.read_text())
        except (OSError, ValueError):
            return Check(
                "kaggle",
                False,
                f"{token} is not valid JSON",
                "Download a new token at https://www.kaggle.com/settings (API -> Create New Token).",
                required=False,
            )
        mode = token.stat().st_mode & 0o077
        detail = f"{token}" + (" (readable by others: chmod 600 it)" if mode else "")
        return Check("kaggle", True, detail, required=False)
    return Check(
        "kaggle",
        False,
        "no credentials: the public dataset is downloaded anonymously when possible",
        f"Save a token as {token} (https://www.kaggle.com/settings -> Create New Token), "
        "or set KAGGLE_USERNAME and KAGGLE_KEY.",
        required=False,
    )


def _port(host: str, port: int, what: str, required: bool) -> Check:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("localhost",) else "127.0.0.1", port))
            return Check(f"port {port}", True, f"free ({what})", required=required)
        except OSError:
            return Check(
                f"port {port}",
                False,
                f"in use ({what})",
                f"`pizzactl teardown` if it is ours, else free it (`ss -ltnp 'sport = :{port}'`) "
                f"or pass --port {port + 1}.",
                required=required,
            )


def _disk(settings: Settings) -> Check:
    path = Path(settings.cache_dir).expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    free_gb = shutil.disk_usage(path).free / 1e9
    ok = free_gb >= MIN_FREE_GB
    return Check(
        "disk",
        ok,
        f"{free_gb:.1f} GB free at {path}",
        ""
        if ok
        else f"Free at least {MIN_FREE_GB:.0f} GB (images and the dataset): `docker system prune` reclaims old images.",
    )


def doctor(settings: Settings) -> list[Check]:
    """Every check, in the order a user fixes them."""
    kind_needed = settings.target == "kind" and not settings.context
    docker_check, client = _docker()
    return [
        _python(),
        _tensorflow(),
        docker_check,
        _architecture(client),
        _tool(
            "kind",
            ["version"],
            "Install kind: `go install sigs.k8s.io/kind@v0.27.0` or `brew install kind` "
            "(https://kind.sigs.k8s.io/docs/user/quick-start/#installation).",
            required=kind_needed,
        ),
        _tool(
            "kubectl",
            ["version", "--client"],
            "Install kubectl: https://kubernetes.io/docs/tasks/tools/ "
            "(pizzactl itself does not need it; it helps to look inside the cluster).",
            required=False,
        ),
        _kaggle(settings),
        _port(settings.host, settings.port, "gateway", required=True),
        _port("127.0.0.1", settings.model_port, "model server (local target)", required=False),
        _disk(settings),
    ]
