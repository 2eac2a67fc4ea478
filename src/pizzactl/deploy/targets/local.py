"""`pizzactl deploy --target local`: the model server and gateway as background processes.

A small supervisor process (`pizzactl.serving.supervise`) runs detached (its own session, so it
outlives the `pizzactl deploy` command), starts both servers, restarts one that crashes (with
backoff, as Docker's `on-failure` policy and the kubelet do) and writes what it sees to
`state_dir/local/supervisor.json`. The shared state file records the supervisor's and the
servers' pids, the ports, the logs (`state_dir/local/*.log`) and where that status file is:
all `status` and `teardown` need. No Docker, no cluster: the quickest way to a real endpoint.

A new plan (`deploy --canary/--shadow` over what runs, `promote`, `abort`, `rollback`) is taken
without a restart when nothing else differs (`reconfigure`): the model server re-reads its model
config (it loads what the plan adds before it unloads what it drops) and the gateway its rollout
plan file, both written by atomic rename; every request is answered meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pizzactl import __version__, httpclient
from pizzactl.config import CONFIG_FILE, MODEL_NAME
from pizzactl.console import log
from pizzactl.deploy import rollout
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.rollout import Plan
from pizzactl.deploy.state import DeployState
from pizzactl.errors import DeployError, ModelNotFoundError
from pizzactl.files import atomic_write, wait_until, write_json
from pizzactl.model.store import latest_version_dir, list_versions, model_base
from pizzactl.serving import processes as proc
from pizzactl.serving import supervise
from pizzactl.serving.auth import key_env
from pizzactl.serving.modelserver.versions import model_config_text

TARGET = "local"
SUPERVISOR = "supervisor"
STATUS_FILE = "supervisor.json"
MODEL_CONFIG = "models.config"  # the model server's TF Serving model config (re-read when it changes)
PLAN_FILE = "rollout.json"  # the gateway's rollout plan (serving/rollout.PlanFile, re-read when it changes)
PLAN_ENV = ("PIZZACTL_CANARY_PERCENT", "PIZZACTL_SHADOW", "PIZZACTL_CANARY_VERSION", "PIZZACTL_STABLE_VERSION")
GRPC = "grpc"  # the model server's gRPC port in the state's ports, with model_protocol grpc


def log_dir(settings) -> Path:
    return Path(settings.state_dir).expanduser() / "local"


def describe(settings, plan: Plan | None = None) -> str:
    """What deploy would run (for --dry-run): the two commands, with the configured ports."""
    version_dir = latest_version_dir(settings.models_dir)
    model_url = f"http://127.0.0.1:{settings.model_port}"
    plan = plan or rollout.plan_for(settings, state_mod.load(settings))
    config_path = log_dir(settings) / MODEL_CONFIG
    model_args = ["--model-config-file", str(config_path)]
    gateway = shlex.join(proc.gateway_command(model_url, settings.port, settings.host, settings.allow_private_urls))
    lines = [
        f"# model {version_dir if not plan.pinned else model_base(settings.models_dir)}",
        "# both run under `python -m pizzactl.serving.supervise SPEC`, which restarts a crashed one",
        shlex.join(proc.modelserver_command(settings.models_dir, settings.model_port, extra=model_args)),
        " ".join(f"{k}={v}" for k, v in plan.gateway_env().items()) + " " + gateway if plan.trial else gateway,
    ]
    if plan.pinned:
        lines[1:1] = [
            f"# {plan.mode if plan.trial else 'pinned'}: {plan.describe()}",
            f"# {config_path}:",
            *("#   " + line for line in (_model_config(settings, plan) or "").splitlines()),
        ]
    return "\n".join([*lines, ""])


def _model_config(settings, plan: Plan) -> str:
    """The model server's TF Serving model config for the plan: its versions, labelled (none: the latest)."""
    base = model_base(Path(settings.models_dir).expanduser().resolve())
    return plan.model_config(base) or model_config_text(MODEL_NAME, str(base), (), {})


def _fingerprint(settings) -> str:
    """All a running deployment was started with but its plan: equal, a new plan is taken in place
    (`reconfigure`). A digest of the settings, the directory and the PIZZACTL_* environment the
    servers inherit, so the record holds no key."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIZZACTL_") and k not in PLAN_ENV}
    started_with = {
        "host": settings.host,
        "port": settings.port,
        "model_port": settings.model_port,
        "models_dir": str(Path(settings.models_dir).expanduser().resolve()),
        "allow_private_urls": settings.allow_private_urls,
        "model_protocol": settings.model_protocol,
        "grpc_port": settings.grpc_port,
        "keys": key_env(settings),
        "cwd": os.getcwd(),
        "config_file": _digest(Path(CONFIG_FILE)),
        "python": sys.executable,
        "pizzactl": __version__,
        "env": env,
    }
    return hashlib.sha256(json.dumps(started_with, sort_keys=True, default=str).encode()).hexdigest()[:32]


def preflight(settings, previous: DeployState | None) -> None:
    """Fail early if the gateway port is taken by anything but the deployment we will replace."""
    if previous is not None and previous.ports.get(proc.GATEWAY) == settings.port:
        return
    proc.require_free_port(settings.host, settings.port)


def deploy(settings, timeout: float = 300.0, plan: Plan | None = None) -> dict[str, Any]:
    """Start the supervisor (which starts both servers), record it, wait for the gateway's /readyz.

    With a trial (`--canary P`, `--shadow`): the model server serves the newest version (label
    `canary`) beside the stable one (label `stable`) through a TF Serving model config, and the
    gateway splits or shadows (deploy/rollout.py). A pinned plan (after `abort`) serves one version."""
    version_dir = latest_version_dir(settings.models_dir)
    plan = plan or rollout.plan_for(settings, state_mod.load(settings))
    models_dir = Path(settings.models_dir).expanduser().resolve()
    proc.require_free_port(settings.host, settings.port)
    model_port = proc.pick_model_port("127.0.0.1", settings.model_port, avoid=[settings.port])
    if model_port != settings.model_port:
        log(f"Port {settings.model_port} is taken; the model server listens on {model_port} instead.")

    logs_at = log_dir(settings)
    logs_at.mkdir(parents=True, exist_ok=True)
    logs = {name: str(logs_at / f"{name}.log") for name in (proc.MODELSERVER, proc.GATEWAY, SUPERVISOR)}
    for path in logs.values():
        Path(path).write_bytes(b"")  # a fresh log per deploy; restarts append to it
    model_url = f"http://127.0.0.1:{model_port}"
    spec_path, status_path = logs_at / "supervise.json", logs_at / STATUS_FILE
    status_path.unlink(missing_ok=True)
    config_path, plan_path = logs_at / MODEL_CONFIG, logs_at / PLAN_FILE
    atomic_write(config_path, _model_config(settings, plan))  # both re-read while they run: reconfigure
    write_json(plan_path, plan.gateway_plan(_plan_id()))
    model_args = ["--model-config-file", str(config_path)]
    if plan.pinned:
        log(f"{plan.mode.capitalize() if plan.trial else 'Pinned'}: {plan.describe()}.")
    ports = {proc.GATEWAY: settings.port, proc.MODELSERVER: model_port}
    protocol_env: dict[str, str] = {}
    if settings.model_protocol == "grpc":  # the gateway calls TF Serving's gRPC API (docs/serve.md)
        ports[GRPC] = proc.pick_model_port(
            "127.0.0.1", settings.grpc_port or proc.free_port(), avoid=list(ports.values())
        )
        model_args += ["--grpc-port", str(ports[GRPC])]
        protocol_env = {"PIZZACTL_MODEL_PROTOCOL": "grpc", "PIZZACTL_MODEL_GRPC_URL": f"127.0.0.1:{ports[GRPC]}"}
    write_json(
        spec_path,
        {
            "children": [
                {
                    "name": proc.MODELSERVER,
                    "cmd": proc.modelserver_command(models_dir, model_port, "127.0.0.1", model_args),
                    "log": logs[proc.MODELSERVER],
                },
                {
                    "name": proc.GATEWAY,
                    "cmd": proc.gateway_command(model_url, settings.port, settings.host, settings.allow_private_urls),
                    "log": logs[proc.GATEWAY],
                },
            ],
            "status_file": str(status_path),
        },
    )
    with open(logs[SUPERVISOR], "ab") as sup_log:
        # the servers inherit the supervisor's environment: the keys' digests, never a key
        env = {**key_env(settings), **plan.gateway_env(), **protocol_env, "PIZZACTL_ROLLOUT_PLAN_FILE": str(plan_path)}
        supervisor = proc.spawn(supervise.command(spec_path), stdout=sup_log, attached=False, env=env)
    url = proc.http_url(settings.host, settings.port)
    record = DeployState(
        target=TARGET,
        url=url,
        model_version=plan.stable if plan.pinned else int(version_dir.name),
        model_dir=str(models_dir),
        pids={SUPERVISOR: supervisor.pid},
        ports=ports,
        logs=logs,
        extra={
            "host": settings.host,
            "model_url": model_url,
            "allow_private_urls": settings.allow_private_urls,
            "supervisor_status": str(status_path),
            "fingerprint": _fingerprint(settings),
            **({"api_key_hashes": env["PIZZACTL_API_KEY_HASHES"]} if env["PIZZACTL_API_KEY_HASHES"] else {}),
            **({"rollout": plan.record()} if plan.trial else {}),
            **({"pinned_version": plan.stable} if plan.pinned and not plan.trial else {}),
        },
    )
    state_mod.save(settings, record)  # before waiting: an interrupted deploy can still be torn down
    log(f"Started the supervisor (pid {supervisor.pid}) of the model server and gateway; waiting for {url}/readyz ...")
    try:
        proc.wait_until_ready(
            url,
            timeout,
            check=lambda: _check_starting(settings, record, supervisor, status_path),
            details=lambda: "".join(proc._log_excerpt(n, p) for n, p in logs.items()),
            hint="Give it more time with --timeout, or read the logs. " + proc._log_hint(logs),
        )
    except BaseException:
        _stop_everything(record)
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=5)
        state_mod.clear(settings)
        raise
    _record_pids(settings, record, status_path)
    served = _served_version(model_url)
    if not plan.pinned and served is not None and served != record.model_version:
        record.model_version = served
        state_mod.save(settings, record)
    return {
        "target": TARGET,
        "url": url,
        "model_version": record.model_version,
        "pids": record.pids,
        "ports": record.ports,
        "logs": record.logs,
        **({"rollout": record.extra["rollout"]} if plan.trial else {}),
    }


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _plan_id() -> str:
    return str(time.time_ns())


def reconfigure(settings, previous: DeployState, plan: Plan, timeout: float = 300.0) -> dict[str, Any] | None:
    """Take `plan` into the running deployment without a restart; None when a restart is needed
    (the same plan: a redeploy was asked for; it was started with anything else; it is not healthy).

    The model config first (the model server loads what the plan adds, moves the labels, then
    unloads what it drops; until the gateway takes the plan, a call to a label it dropped falls
    back to stable: canary.py), then the gateway's plan; each is waited for, so the command
    returns once the new plan answers. The record says what `deploy` would have written."""
    model_url = previous.extra.get("model_url")
    logs_at = log_dir(settings)
    config_path, plan_path = logs_at / MODEL_CONFIG, logs_at / PLAN_FILE
    if (
        previous.target != TARGET
        or Plan.of_record(previous) == plan
        or previous.extra.get("fingerprint") != _fingerprint(settings)
        or not (model_url and config_path.exists() and plan_path.exists())
        or not _healthy(previous)
        or not _ready(previous.url)
        or rollout.read_summary(previous.url, settings.api_key) is None  # how we see the gateway take the plan
    ):
        return None
    version_dir = latest_version_dir(settings.models_dir)
    log(f"{plan.describe().capitalize()}: changing the running deployment in place (no restart).")
    hint = "Read the logs: " + proc._log_hint(previous.logs) + " `pizzactl teardown` then deploy starts afresh."
    atomic_write(config_path, _model_config(settings, plan))
    want = sorted(plan.versions() if plan.pinned else (int(version_dir.name),), reverse=True)
    wait_until(
        lambda: _served_versions(model_url) == want and _labelled(model_url, plan.labels()),
        timeout,
        0.1,
        what=f"the model server to serve version{'s' * (len(want) > 1)} {', '.join(map(str, want))}",
        hint=hint,
        error=DeployError,
    )
    plan_id = _plan_id()
    write_json(plan_path, plan.gateway_plan(plan_id))
    wait_until(
        lambda: (rollout.read_summary(previous.url, settings.api_key) or {}).get("plan") == plan_id,
        timeout,
        0.1,
        what=f"the gateway at {previous.url} to take the new rollout plan",
        hint=hint,
        error=DeployError,
    )
    kept = {k: v for k, v in previous.extra.items() if k not in ("rollout", "pinned_version", "rollouts")}
    record = replace(
        previous,
        model_version=plan.stable if plan.pinned else int(version_dir.name),
        extra={
            **kept,
            **({"rollout": plan.record()} if plan.trial else {}),
            **({"pinned_version": plan.stable} if plan.pinned and not plan.trial else {}),
        },
    )
    state_mod.save(settings, record)
    return {
        "target": TARGET,
        "url": record.url,
        "model_version": record.model_version,
        "pids": record.pids,
        "ports": record.ports,
        "logs": record.logs,
        **({"rollout": record.extra["rollout"]} if plan.trial else {}),
    }


def _healthy(st: DeployState) -> bool:
    """The supervisor and both servers run (a crashed or stopped one: restart as a fresh deploy)."""
    supervised = supervise.read_status(st.extra.get("supervisor_status")) or {}
    children = supervised.get("children") or {}
    return (
        proc.pid_alive(st.pids.get(SUPERVISOR))
        and (supervised.get("supervisor") or {}).get("state") == "running"
        and set(children) >= {proc.MODELSERVER, proc.GATEWAY}
        and all(child.get("state") == "running" for child in children.values())
    )


def _labelled(model_url: str, labels: dict[str, int]) -> bool:
    """Every label of the plan points at its version (the model server moves one only to a loaded version)."""
    for label, version in labels.items():
        body = httpclient.json_or_none(f"{model_url}/v1/models/{MODEL_NAME}/labels/{label}", timeout=2.0) or {}
        if [e.get("version") for e in body.get("model_version_status", [])] != [str(version)]:
            return False
    return True


LABELS = {proc.MODELSERVER: "model server", proc.GATEWAY: "gateway", SUPERVISOR: "supervisor"}


def _check_starting(settings, record: DeployState, supervisor: subprocess.Popen, status_path: Path) -> None:
    """While deploy waits: a server that exits before it is ready fails the deploy (with its log),
    rather than going into a crash loop nobody watches; the children's pids go into the record."""
    code = supervisor.poll()
    if code is not None:
        raise DeployError(
            f"The supervisor exited with code {code} before the servers were ready."
            + proc._log_excerpt(SUPERVISOR, record.logs.get(SUPERVISOR)),
            hint=proc._log_hint(record.logs),
        )
    children = (supervise.read_status(status_path) or {}).get("children") or {}
    for name, child in children.items():
        if child.get("last_exit"):
            label = LABELS.get(name, name)
            raise DeployError(
                f"The {label} stopped ({child['last_exit']['exit']}) before it was ready."
                + proc._log_excerpt(label, record.logs.get(name)),
                hint=proc._log_hint(record.logs),
            )
    _record_pids(settings, record, status_path)


def _record_pids(settings, record: DeployState, status_path: Path) -> None:
    """The servers' pids, as the supervisor started them, into the deploy state."""
    children = (supervise.read_status(status_path) or {}).get("children") or {}
    pids = {name: child["pid"] for name, child in children.items() if child.get("pid")}
    if pids and any(record.pids.get(name) != pid for name, pid in pids.items()):
        record.pids.update(pids)
        state_mod.save(settings, record)


def _served_versions(model_url: str) -> list[int]:
    """The versions the model server reports as AVAILABLE, highest first."""
    body = httpclient.json_or_none(f"{model_url}/v1/models/{MODEL_NAME}", timeout=2.0)
    try:
        versions = [int(e["version"]) for e in body.get("model_version_status", []) if e.get("state") == "AVAILABLE"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    return sorted(versions, reverse=True)


def _served_version(model_url: str) -> int | None:
    """The version the model server answers with (it serves the newest on disk)."""
    versions = _served_versions(model_url)
    return versions[0] if versions else None


def _ready(url: str) -> bool:
    response = httpclient.get(url.rstrip("/") + "/readyz", timeout=2.0)
    return response is not None and response.status_code == 200


def status(settings, st: DeployState) -> dict[str, Any]:
    """Ready or not, each process alive or not (the current pids, after restarts), and what the
    supervisor saw: restarts per server, the last exit, a crash loop."""
    supervised = supervise.read_status(st.extra.get("supervisor_status"))
    pids = _current_pids(st, supervised)
    alive = {name: proc.pid_alive(pid) and proc.is_our_server(pid) for name, pid in pids.items()}
    for name in (supervised or {}).get("children") or {}:
        alive.setdefault(name, False)  # waiting to restart, or stopped
    info: dict[str, Any] = {
        "ready": _ready(st.url),
        "processes": alive,
        "pids": pids,
        "ports": dict(st.ports),
        "logs": dict(st.logs),
    }
    if supervised is not None:
        info.update(supervision_summary(supervised, supervisor_alive=alive.get(SUPERVISOR, False)))
    model_url = st.extra.get("model_url")
    trial = rollout.in_flight(st)
    plan = rollout.Plan.of_record(st)
    if model_url and alive.get(proc.MODELSERVER):
        served = _served_versions(model_url)
        if served and not plan.pinned:
            info["model_version"] = served[0]  # it hot-reloads newer exports
        if trial is not None:
            info["rollout"] = {**trial, "available": served}  # both versions, as the model server reports them
    elif trial is not None:
        info["rollout"] = {**trial, "available": []}
    return info


def _current_pids(st: DeployState, supervised: dict[str, Any] | None) -> dict[str, int]:
    """The recorded pids, with each child's current one from the supervisor's status file (a
    restart gives it a new pid)."""
    pids = dict(st.pids)
    for name, child in ((supervised or {}).get("children") or {}).items():
        if child.get("pid"):
            pids[name] = child["pid"]
        else:
            pids.pop(name, None)  # waiting to restart or stopped: the old pid may belong to someone else by now
    return pids


def supervision_summary(supervised: dict[str, Any], supervisor_alive: bool) -> dict[str, Any]:
    """status fields from the supervisor's file: `restarts` and `last_exit` per server, a
    `crash_loop` entry per server in one (only when there is one), and the whole record as
    `supervision` (for --json)."""
    children = supervised.get("children") or {}
    restarts = {name: int(child.get("restarts", 0)) for name, child in children.items()}
    last_exit = {}
    crash_loop = {}
    for name, child in children.items():
        exit_ = child.get("last_exit")
        if exit_:
            what = "restarted" if exit_.get("restarted") else "not restarted"
            last_exit[name] = f"{exit_['exit']} at {str(exit_.get('at', ''))[11:19]} UTC ({what})"
        if child.get("crash_loop"):
            crash_loop[name] = (
                f"{child.get('quick_exits')} quick exits in a row (last: {exit_['exit'] if exit_ else '?'}); "
                f"{_next_try(child)}; log {child.get('log')}"
            )
    info: dict[str, Any] = {
        "supervisor": "alive" if supervisor_alive else "gone: nothing restarts a crashed server (deploy again)",
        "restarts": restarts,
    }
    if last_exit:
        info["last_exit"] = last_exit
    if crash_loop:
        info["crash_loop"] = crash_loop
    info["supervision"] = supervised
    return info


def _next_try(child: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    if child.get("state") == "running":
        return "running again, for now"
    try:
        at = datetime.fromisoformat(str(child.get("next_restart_at")))
    except ValueError:
        return str(child.get("state"))
    return f"next try in {max(0.0, (at - datetime.now(UTC)).total_seconds()):.0f}s (waits double up to the cap)"


def _stop_everything(st: DeployState) -> list[int]:
    """SIGTERM the supervisor and the servers (it restarts nothing once told to stop, and a server
    stopped by SIGTERM is never restarted), SIGKILL what is left after 10 s; then once more for a
    server the supervisor started meanwhile. Returns the pids that were running."""
    stopped: list[int] = []
    for _ in range(2):
        pids = set(st.pids.values()) | set(
            _current_pids(st, supervise.read_status(st.extra.get("supervisor_status"))).values()
        )
        mine = sorted(pid for pid in pids if pid not in stopped and proc.pid_alive(pid) and proc.is_our_server(pid))
        if not mine:
            break
        proc.stop_all(mine, grace=10.0)
        stopped += mine
    return stopped


def teardown(settings, st: DeployState) -> dict[str, Any]:
    """Stop the supervisor and both servers (their process groups), SIGKILL what is left after a grace period."""
    mine = _stop_everything(st)
    left = [pid for pid in mine if proc.pid_alive(pid)]
    if left:
        raise DeployError(
            f"Processes {left} did not stop.", hint=f"Kill them by hand: kill -9 {' '.join(map(str, left))}"
        )
    stopped = len(mine)
    what = f"stopped {stopped} process{'es' if stopped != 1 else ''}" if stopped else "its processes were already gone"
    return {"message": f"Tore down the local deployment at {st.url} ({what}).", "stopped_pids": mine}


def rollback(settings, st: DeployState, to: int | None, timeout: float) -> dict[str, Any]:
    """Serve one version, pinned by a model config: `to`; else, during a trial, the stable one;
    else the newest version on disk below the one serving. In place when only the plan changes
    (`reconfigure`); else the servers restart on the recorded ports (seconds without answers)."""
    versions = [v for v, _ in list_versions(st.model_dir or settings.models_dir, MODEL_NAME)]
    trial = rollout.Plan.of_record(st)
    serving = trial.candidate if trial.trial else st.model_version
    if to is None:
        lower = [v for v in versions if serving is not None and v < serving]
        if trial.trial:
            to = trial.stable
        elif not lower:
            return {"message": f"Version {serving} is the oldest in {st.model_dir}; there is none to roll back to."}
        else:
            to = lower[-1]
    if to not in versions:
        raise ModelNotFoundError(
            f"There is no version {to} in {st.model_dir} to roll back to (it has {versions}).",
            hint="Give one of those with --to.",
        )
    again = rollout.settings_of_record(settings, st)
    result = reconfigure(again, st, Plan(to), timeout)
    if result is None:
        teardown(again, st)
        result = deploy(again, timeout=timeout, plan=Plan(to))
    return {**result, "rolled_back_from": serving, "model_version": to}
