"""`pizzactl deploy --target local`: the model server and gateway as background processes.

Both run detached (their own session, logs in `state_dir/local/*.log`), so they outlive the
`pizzactl deploy` command; the shared state file records their pids, ports and logs, which is
all `status` and `teardown` need. No Docker, no cluster: the quickest way to a real endpoint.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pizzactl.config import MODEL_NAME
from pizzactl.console import log
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.state import DeployState
from pizzactl.errors import DeployError
from pizzactl.model_store import latest_version_dir
from pizzactl.serving import processes as proc
from pizzactl.serving.auth import key_env

TARGET = "local"


def log_dir(settings) -> Path:
    return Path(settings.state_dir).expanduser() / "local"


def describe(settings) -> str:
    """What deploy would run (for --dry-run): the two commands, with the configured ports."""
    version_dir = latest_version_dir(settings.models_dir)
    model_url = f"http://127.0.0.1:{settings.model_port}"
    lines = [
        f"# model {version_dir}",
        shlex.join(proc.modelserver_command(settings.models_dir, settings.model_port)),
        shlex.join(proc.gateway_command(model_url, settings.port, settings.host, settings.allow_private_urls)),
        "",
    ]
    return "\n".join(lines)


def preflight(settings, previous: DeployState | None) -> None:
    """Fail early if the gateway port is taken by anything but the deployment we will replace."""
    if previous is not None and previous.ports.get(proc.GATEWAY) == settings.port:
        return
    proc.require_free_port(settings.host, settings.port)


def deploy(settings, timeout: float = 300.0) -> dict[str, Any]:
    """Start both servers in the background, record them, wait for the gateway's /readyz."""
    version_dir = latest_version_dir(settings.models_dir)
    models_dir = Path(settings.models_dir).expanduser().resolve()
    proc.require_free_port(settings.host, settings.port)
    model_port = proc.pick_model_port("127.0.0.1", settings.model_port, avoid=[settings.port])
    if model_port != settings.model_port:
        log(f"Port {settings.model_port} is taken; the model server listens on {model_port} instead.")

    logs_at = log_dir(settings)
    logs_at.mkdir(parents=True, exist_ok=True)
    logs = {proc.MODELSERVER: str(logs_at / "modelserver.log"), proc.GATEWAY: str(logs_at / "gateway.log")}
    with open(logs[proc.MODELSERVER], "wb") as ms_log, open(logs[proc.GATEWAY], "wb") as gw_log:
        started = proc.start_pair(
            models_dir,
            host=settings.host,
            port=settings.port,
            model_port=model_port,
            allow_private_urls=settings.allow_private_urls,
            attached=False,
            logs={proc.MODELSERVER: ms_log, proc.GATEWAY: gw_log},
            env=key_env(settings),
        )
    record = DeployState(
        target=TARGET,
        url=started.url,
        model_version=int(version_dir.name),
        model_dir=str(models_dir),
        pids=started.pids,
        ports={proc.GATEWAY: settings.port, proc.MODELSERVER: model_port},
        logs=logs,
        extra={
            "host": settings.host,
            "model_url": started.model_url,
            "allow_private_urls": settings.allow_private_urls,
        },
    )
    state_mod.save(settings, record)  # before waiting: an interrupted deploy can still be torn down
    log(
        f"Started the model server (pid {started.modelserver.pid}) and gateway (pid {started.gateway.pid}); waiting for {started.url}/readyz ..."
    )
    try:
        proc.wait_ready(
            started.url,
            {"model server": started.modelserver, "gateway": started.gateway},
            timeout,
            logs={"model server": logs[proc.MODELSERVER], "gateway": logs[proc.GATEWAY]},
        )
    except BaseException:
        started.stop(grace=5.0)
        state_mod.clear(settings)
        raise
    served = _served_version(started.model_url)
    if served is not None and served != record.model_version:
        record.model_version = served
        state_mod.save(settings, record)
    return {
        "target": TARGET,
        "url": started.url,
        "model_version": record.model_version,
        "pids": record.pids,
        "ports": record.ports,
        "logs": record.logs,
    }


def _served_version(model_url: str) -> int | None:
    """The version the model server reports as AVAILABLE (it serves the newest on disk)."""
    import httpx

    try:
        body = httpx.get(f"{model_url}/v1/models/{MODEL_NAME}", timeout=2.0, trust_env=False).json()
        versions = [int(e["version"]) for e in body.get("model_version_status", []) if e.get("state") == "AVAILABLE"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return max(versions) if versions else None


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/readyz", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def status(settings, st: DeployState) -> dict[str, Any]:
    alive = {name: proc.pid_alive(pid) and proc.is_our_server(pid) for name, pid in st.pids.items()}
    info: dict[str, Any] = {
        "ready": _ready(st.url),
        "processes": alive,
        "pids": dict(st.pids),
        "ports": dict(st.ports),
        "logs": dict(st.logs),
    }
    model_url = st.extra.get("model_url")
    if model_url and alive.get(proc.MODELSERVER):
        served = _served_version(model_url)
        if served is not None:
            info["model_version"] = served  # it hot-reloads newer exports
    return info


def teardown(settings, st: DeployState) -> dict[str, Any]:
    """SIGTERM both process groups, SIGKILL what is left after a grace period."""
    mine = [pid for pid in st.pids.values() if proc.pid_alive(pid) and proc.is_our_server(pid)]
    proc.stop_all(mine, grace=10.0)
    left = [pid for pid in mine if proc.pid_alive(pid)]
    if left:
        raise DeployError(
            f"Processes {left} did not stop.", hint=f"Kill them by hand: kill -9 {' '.join(map(str, left))}"
        )
    stopped = len(mine)
    what = f"stopped {stopped} process{'es' if stopped != 1 else ''}" if stopped else "its processes were already gone"
    return {"message": f"Tore down the local deployment at {st.url} ({what}).", "stopped_pids": mine}
