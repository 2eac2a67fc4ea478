"""Start, watch and stop the model server and gateway processes (serve, deploy --target local, bench).

Each server runs as `python -m pizzactl.serving.<name>` in its own process group, so stopping it
(SIGTERM, then SIGKILL after a grace period) takes whatever it spawned along. Liveness checks
use only the standard library (`os.kill(pid, 0)`, /proc when there is one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pizzactl import httpclient
from pizzactl.errors import DeployError, PortInUseError
from pizzactl.files import wait_until
from pizzactl.pids import pid_alive, proc_file
from pizzactl.ports import free_port, port_free
from pizzactl.tfimport import quiet_tf_logs

MODELSERVER = "modelserver"
GATEWAY = "gateway"
_OUR_MODULES = (b"pizzactl.serving.modelserver", b"pizzactl.serving.gateway", b"pizzactl.serving.supervise")


# --- ports ---------------------------------------------------------------------------------


def require_free_port(host: str, port: int, what: str = "gateway") -> None:
    if not port_free(host, port):
        raise PortInUseError(
            f"Port {port} on {host} is already in use, so the {what} cannot listen there.",
            hint="Choose another port with `--port N`, or stop what runs there (`pizzactl teardown` if pizzactl deployed it).",
        )


def pick_model_port(host: str, preferred: int, avoid: Sequence[int] = ()) -> int:
    """The configured model server port if it is free, else any free one."""
    if preferred not in avoid and port_free(host, preferred):
        return preferred
    while True:
        port = free_port(host)
        if port not in avoid:
            return port


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server listening on `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def http_url(host: str, port: int) -> str:
    host = client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- commands ------------------------------------------------------------------------------


def modelserver_command(
    models_dir: Path | str, port: int, host: str = "127.0.0.1", extra: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pizzactl.serving.modelserver",
        "--models",
        str(Path(models_dir).expanduser().resolve()),
        "--port",
        str(port),
        "--host",
        host,
        *extra,
    ]


def gateway_command(model_url: str, port: int, host: str = "127.0.0.1", allow_private_urls: bool = False) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pizzactl.serving.gateway",
        "--model-url",
        model_url,
        "--port",
        str(port),
        "--host",
        host,
    ]
    if allow_private_urls:
        cmd.append("--allow-private-urls")
    return cmd


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file / terminal as they happen
    quiet_tf_logs(env)
    env.update(extra or {})
    return env


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(
    cmd: Sequence[str], *, stdout: IO | int | None, attached: bool, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start a server in its own process group.

    attached=True (serve, bench): the child dies with us (PR_SET_PDEATHSIG on Linux).
    attached=False (deploy): a new session, so it outlives the `pizzactl deploy` process.
    """
    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=child_env(env),
        start_new_session=True,
        preexec_fn=die_with_parent if attached and sys.platform.startswith("linux") else None,
    )


# --- liveness and stopping -----------------------------------------------------------------


def is_our_server(pid: int) -> bool:
    """Guard against pid reuse: is `pid` still a pizzactl server process? (True where /proc is missing.)"""
    if not os.path.isdir("/proc"):
        return pid_alive(pid)
    cmdline = proc_file(pid, "cmdline")
    if cmdline is None:
        return False
    return any(module in cmdline for module in _OUR_MODULES)


def stop_group(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group led by `pid`, SIGKILL it after `grace` seconds. True if it had to be killed."""

    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    if not pid_alive(pid) and not _group_alive(pid):
        return False
    signal_group(signal.SIGTERM)
    if _wait_gone(pid, grace):
        return False
    signal_group(signal.SIGKILL)
    _wait_gone(pid, 5.0)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    return wait_until(
        lambda: not pid_alive(pid) and not _group_alive(pid), timeout, 0.05, what=f"pid {pid} to exit", error=None
    )


def stop_all(pids: Sequence[int], grace: float = 10.0) -> None:
    """Stop several process groups at once: SIGTERM all, wait, then SIGKILL the stragglers."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    wait_until(
        lambda: not any(pid_alive(p) or _group_alive(p) for p in pids), grace, 0.05, what="them to exit", error=None
    )
    for pid in pids:
        if pid_alive(pid) or _group_alive(pid):
            stop_group(pid, grace=0.0)


# --- readiness -----------------------------------------------------------------------------


def tail(path: Path | str | None, lines: int = 20) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            return b"".join(deque(fh, maxlen=lines)).decode(errors="replace").rstrip()
    except OSError:
        return ""


def poll_ready(
    url: str, timeout: float, *, check: Callable[[], None] = lambda: None, path: str = "/readyz", interval: float = 0.5
) -> str | None:
    """Poll `url + path` until it answers 200 (then None) or `timeout` passes (then the last answer).

    `check()` runs before every attempt and raises to stop early (a process or container died):
    every deploy target waits this way and words its own error around what comes back.
    """
    import requests

    last = "no answer yet"
    with httpclient.session() as client:

        def ready() -> bool:
            nonlocal last
            check()
            try:
                response = client.get(url.rstrip("/") + path, timeout=2.0)
                if response.status_code == 200:
                    return True
                last = f"{response.status_code} {response.text[:200]}"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            return False

        return None if wait_until(ready, timeout, interval, what=url + path, error=None) else last


def wait_until_ready(
    url: str,
    timeout: float,
    *,
    check: Callable[[], None] = lambda: None,
    details: Callable[[], str] = lambda: "",
    what: str = "",
    hint: str = "Give it more time with --timeout.",
    path: str = "/readyz",
) -> None:
    """Every deploy target's wait: poll `url + path` until 200, else DeployError saying what was
    waited for, the last answer and `details()` (log lines); `check()` stops early (a process or
    container died)."""
    last = poll_ready(url, timeout, check=check, path=path)
    if last is not None:
        subject = f"{what} ({url}{path})" if what else f"{url}{path}"
        raise DeployError(f"{subject} was not ready after {timeout:g}s (last answer: {last})." + details(), hint=hint)


def wait_ready(
    url: str,
    procs: Mapping[str, subprocess.Popen],
    timeout: float,
    logs: Mapping[str, str] | None = None,
    path: str = "/readyz",
) -> None:
    """Wait for local server processes: DeployError when one exits or time runs out, with their logs."""
    logs = logs or {}

    def check() -> None:
        for name, proc in procs.items():
            code = proc.poll()
            if code is not None:
                raise DeployError(
                    f"The {name} exited with code {code} before it was ready." + _log_excerpt(name, logs.get(name)),
                    hint=_log_hint(logs),
                )

    wait_until_ready(
        url,
        timeout,
        check=check,
        details=lambda: "".join(_log_excerpt(n, p) for n, p in logs.items()),
        hint="Give it more time with --timeout, or read the logs. " + _log_hint(logs),
        path=path,
    )


def _log_excerpt(name: str, path: str | None) -> str:
    text = tail(path, 15)
    return f"\n--- last lines of the {name} log ({path}) ---\n{text}" if text else ""


def _log_hint(logs: Mapping[str, str]) -> str:
    if not logs:
        return "See the output above."
    return "Logs: " + ", ".join(str(p) for p in logs.values())


@dataclass
class Started:
    """A model server + gateway pair started together."""

    modelserver: subprocess.Popen
    gateway: subprocess.Popen
    model_port: int
    port: int
    url: str
    model_url: str

    @property
    def pids(self) -> dict[str, int]:
        return {MODELSERVER: self.modelserver.pid, GATEWAY: self.gateway.pid}

    def stop(self, grace: float = 10.0) -> None:
        stop_all([self.gateway.pid, self.modelserver.pid], grace)
        for proc in (self.gateway, self.modelserver):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)


def start_pair(
    models_dir: Path | str,
    *,
    host: str,
    port: int,
    model_port: int,
    allow_private_urls: bool,
    attached: bool,
    logs: Mapping[str, IO | int | None] | None = None,
    modelserver_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    model_protocol: str = "rest",
) -> Started:
    """Start the model server, then the gateway pointing at it. The caller waits for readiness.

    `env` is added to both environments (API key digests: `auth.key_env`). With `model_protocol`
    grpc the model server also serves gRPC on a free port and the gateway calls it there."""
    logs = logs or {}
    model_url = f"http://127.0.0.1:{model_port}"
    gateway_env = dict(env or {})
    if model_protocol == "grpc":
        grpc_port = free_port("127.0.0.1")
        while grpc_port in (model_port, port):
            grpc_port = free_port("127.0.0.1")
        modelserver_args = [*modelserver_args, "--grpc-port", str(grpc_port)]
        gateway_env.update(PIZZACTL_MODEL_PROTOCOL="grpc", PIZZACTL_MODEL_GRPC_URL=f"127.0.0.1:{grpc_port}")
    modelserver = spawn(
        modelserver_command(models_dir, model_port, "127.0.0.1", modelserver_args),
        stdout=logs.get(MODELSERVER),
        attached=attached,
        env=env,
    )
    try:
        gateway = spawn(
            gateway_command(model_url, port, host, allow_private_urls),
            stdout=logs.get(GATEWAY),
            attached=attached,
            env=gateway_env,
        )
    except BaseException:
        stop_group(modelserver.pid, 5.0)
        raise
    return Started(modelserver, gateway, model_port, port, http_url(host, port), model_url)
