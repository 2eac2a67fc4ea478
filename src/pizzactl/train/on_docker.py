"""`pizzactl train --on docker`: the training Job's pod, run as a container on this machine.

The rehearsal of `--on kind|CONTEXT`: the same trainer image, command, settings (PIZZACTL_*),
read-only root filesystem, dropped capabilities and no-new-privileges as the rendered Job's
pod. What differs is where files live: the dataset is bind-mounted read-only at its own path
(so the run's config.json names the local folder), the outputs go to a fresh local outbox
mounted at /out, and a named volume (`pizzactl-train-cache`) keeps Keras weights and the
feature cache between runs. The dataset is resolved here first (downloaded from Kaggle with
this machine's credentials if needed), so no credentials enter the container. It runs as the
calling user, or as uid 10001 when that is root, never as root. The log streams live; Ctrl-C
stops and removes the container; `remote.collect` then publishes the version atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
from collections import deque
from pathlib import Path
from typing import Any

from pizzactl.console import log
from pizzactl.errors import DataError, UsageError
from pizzactl.files import write_json
from pizzactl.train.remote import TrainingError, collect, container_env, local_weights_file, outbox_dir

OUTBOX = "/out"
CACHE = "/cache"
CACHE_VOLUME = "pizzactl-train-cache"
LABELS = {"dev.pizzactl.train": "1", "app.kubernetes.io/name": "pizzactl-train"}
TRAINER_UID = 10001


def train(settings, *, show_progress: bool = True) -> dict[str, Any]:
    """Build the trainer image, train in a container, publish the version and runs locally."""
    from pizzactl.data.download import resolve_data_dir
    from pizzactl.deploy.docker_daemon import docker_client
    from pizzactl.deploy.images import build_trainer

    _require_local_daemon()
    data_dir = Path(resolve_data_dir(settings)).expanduser().resolve()
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} is not a folder.", hint="Pass --data DIR, a folder with one sub-folder per class.")
    image = build_trainer(settings, gpu=settings.gpus > 0)
    name = "pizzactl-train-" + _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    outbox = outbox_dir(settings, name)
    spec = container_spec(settings, image.image, name, data_dir, outbox)
    if spec["user"] == f"{TRAINER_UID}:{TRAINER_UID}":
        os.chown(outbox, TRAINER_UID, TRAINER_UID)  # root calls: the container's user writes the outbox
    client = docker_client()
    write_json(_cache_record(settings), {"volume": CACHE_VOLUME})  # teardown removes the volume
    log(f"Training in container {name} ({image.image}) ...")
    try:
        code, tail, oom = _run(client, spec)
        if code != 0:
            raise _failure(code, tail, oom)
        result = collect(
            settings,
            outbox,
            container={"models": f"{OUTBOX}/models", "runs": f"{OUTBOX}/runs"},
            trained_on={"on": "docker", "image": image.image, "container": name},
        )
    finally:
        shutil.rmtree(outbox, ignore_errors=True)
    log(f"[green]✓[/] version {result['version']} in {result['model_dir']}")
    return result


def container_spec(settings, image: str, name: str, data_dir: Path, outbox: Path) -> dict[str, Any]:
    """docker `containers.create` keyword arguments, from the pod of the Job `--on kind` would run."""
    from docker.types import DeviceRequest, Mount

    from pizzactl.deploy import jobs

    env = container_env(settings, data_dir=str(data_dir), models_dir=f"{OUTBOX}/models", runs_dir=f"{OUTBOX}/runs")
    pod = jobs.render_job(jobs.plan_from_settings(settings, name=name, image=image, env=env))["spec"]["template"]
    container = pod["spec"]["containers"][0]
    sc = container["securityContext"]
    environment = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    environment.update(OUTPUT_DIR=OUTBOX, PIZZACTL_CACHE_DIR=CACHE, KERAS_HOME=f"{CACHE}/keras")
    mounts = [
        Mount(str(data_dir), str(data_dir), type="bind", read_only=True),
        Mount(OUTBOX, str(outbox), type="bind"),
        Mount(CACHE, CACHE_VOLUME, type="volume"),
    ]
    weights = local_weights_file(settings)
    if weights is not None:
        if not weights.is_file():
            raise UsageError(f"--weights {weights} is not a file.", hint="Pass imagenet, none or a weights file.")
        mounts.append(Mount(str(weights), str(weights), type="bind", read_only=True))
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    user = f"{uid}:{os.getegid()}" if uid != 0 else f"{TRAINER_UID}:{TRAINER_UID}"
    spec: dict[str, Any] = {
        "image": image,
        "name": name,
        "entrypoint": container["command"],
        "environment": environment,
        "user": user,
        "mounts": mounts,
        "working_dir": "/tmp",
        "read_only": bool(sc.get("readOnlyRootFilesystem")),
        "tmpfs": {"/tmp": "rw,mode=1777"},
        "cap_drop": list(sc.get("capabilities", {}).get("drop", [])),
        "security_opt": ["no-new-privileges:true"] if sc.get("allowPrivilegeEscalation") is False else [],
        "init": True,  # tini as PID 1: Ctrl-C's SIGTERM stops the trainer instead of being ignored
        "labels": dict(LABELS),
    }
    if settings.gpus > 0:
        spec["device_requests"] = [DeviceRequest(count=settings.gpus, capabilities=[["gpu"]])]
    return spec


def _run(client, spec: dict[str, Any]) -> tuple[int, list[str], bool]:
    """Run to the end, streaming its output to stderr: (exit code, last lines, OOM-killed)."""
    tail: deque[str] = deque(maxlen=40)
    container = client.containers.create(**spec)
    try:
        container.start()
        buffered = b""
        for chunk in container.logs(stream=True, follow=True):
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
            buffered = (buffered + chunk)[-8192:]
        tail.extend(buffered.decode(errors="replace").splitlines())
        code = int(container.wait().get("StatusCode", 1))
        container.reload()
        return code, list(tail), bool(container.attrs.get("State", {}).get("OOMKilled"))
    except KeyboardInterrupt:
        log(f"Stopping the training container {spec['name']} ...")
        container.stop(timeout=10)
        raise
    finally:
        container.remove(force=True)


def _failure(code: int, tail: list[str], oom: bool) -> TrainingError:
    if oom or code == 137:
        return TrainingError(
            f"The training container was killed (exit code {code}{', out of memory' if oom else ''}).",
            hint="Give Docker more memory (Docker Desktop, Colima: their resource settings) or lower --batch-size.",
        )
    errors = [line.split("Error:", 1)[1].strip() for line in tail if "Error:" in line]
    hints = [line.split("Hint:", 1)[1].strip() for line in tail if "Hint:" in line]
    what = errors[-1] if errors else "\n".join(tail[-10:])
    return TrainingError(
        f"Training in the container failed (exit code {code}): {what}",
        hint=hints[-1] if hints else "Read the trainer's log above.",
    )


def _cache_record(settings) -> Path:
    return Path(settings.state_dir).expanduser() / "train-docker.json"


def teardown(settings) -> dict[str, Any] | None:
    """Remove the cache volume `train --on docker` created; None if it never ran here."""
    import json

    from pizzactl.deploy.docker_daemon import docker_client

    record = _cache_record(settings)
    try:
        volume = json.loads(record.read_text())["volume"]
    except (OSError, ValueError, KeyError):
        return None
    try:
        docker_client(30).volumes.get(volume).remove()
        message = f"Removed the Docker volume {volume} (the trainer's weights and feature cache)."
    except Exception as exc:  # gone already, or in use by a training container that still runs
        if "in use" in str(exc):
            return {"message": f"Kept the Docker volume {volume}: a training container still uses it."}
        message = f"The Docker volume {volume} was already gone."
    record.unlink(missing_ok=True)
    return {"message": message}


def _require_local_daemon() -> None:
    """Bind mounts name folders on the daemon's machine: a remote daemon would see other folders."""
    from pizzactl.deploy.docker_daemon import docker_endpoint

    endpoint = docker_endpoint()
    url = endpoint.base_url or ""
    if url.startswith("ssh://") or (url.startswith(("tcp://", "http")) and not _loopback(url)):
        raise UsageError(
            f"`train --on docker` mounts local folders, but Docker runs elsewhere ({endpoint.source}: {url}).",
            hint="Use a Docker daemon on this machine, or train on a cluster: --on CONTEXT.",
        )


def _loopback(url: str) -> bool:
    host = url.split("://", 1)[1].split(":", 1)[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1")
