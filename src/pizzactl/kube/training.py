"""What remote training leaves behind, and how `status` and `teardown` reach it without importing train.

`train --on kind|CONTEXT` records its cluster, namespace and Job in `state_dir/train.json`;
everything it applies carries the labels `app.kubernetes.io/component=training` and
`app.kubernetes.io/managed-by=pizzactl`; `train --on docker` records its cache volume in
`state_dir/train-docker.json`. Here are that record, a Job's progress (phase, attempts, epoch,
last log line, read as the Job controller writes it) and the cleanup by label: train/remote
writes the record and deploy's `status`/`teardown` read it and clean up, so the two never import
each other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pizzactl.console import log
from pizzactl.errors import DeployError
from pizzactl.files import write_json
from pizzactl.kube import diagnosis, k8s
from pizzactl.kube.docker_daemon import docker_client
from pizzactl.kube.kind import clusters, created_clusters, delete_cluster

CONTAINER = "train"
LABELS = {"app.kubernetes.io/component": "training", "app.kubernetes.io/managed-by": "pizzactl"}
JOB_LABEL = "batch.kubernetes.io/job-name"  # the Job controller puts it on the Job's pods
STATE_FILE = "train.json"
CACHE_VOLUME = "pizzactl-train-cache"
EPOCH = re.compile(r"epoch (\d+)/(\d+)")


# --- a training Job, read ------------------------------------------------------------------------


def job_pods(core, namespace: str, job: str) -> list:
    """The Job's pods, oldest first."""
    items = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={job}").items
    mine = [p for p in items if (p.metadata.labels or {}).get(JOB_LABEL) == job]  # a selector the server ignored
    return sorted(mine, key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))


def terminal(job) -> Any | None:
    """The Job's Complete or Failed condition when it is True, else None."""
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition
    return None


# --- a Job's progress, for `status` -------------------------------------------------------------------------------------------


def progress(api_client, namespace: str, job: str) -> dict[str, Any]:
    """A Job's phase, attempts, epoch and last log line, for `pizzactl status`."""
    from kubernetes import client

    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    obj = k8s.call_api(f"Reading job {job}", batch.read_namespaced_job, job, namespace)
    if obj is None:
        return {"phase": "gone"}
    pods = k8s.call_api(f"Listing the pods of job {job}", job_pods, core, namespace, job) or []
    condition = terminal(obj)
    if condition is not None:
        phase = "Succeeded" if condition.type == "Complete" else f"Failed ({condition.reason})"
    else:
        phase = (pods[-1].status.phase if pods and pods[-1].status else None) or "Pending"  # the attempt now
    info: dict[str, Any] = {"phase": phase, "attempts": len(pods)}
    lines = diagnosis.last_log_lines(core, namespace, pods[-1].metadata.name, CONTAINER) if pods else []
    epochs = [m for line in lines for m in EPOCH.finditer(line)]
    if epochs:
        info["epoch"] = f"{epochs[-1].group(1)}/{epochs[-1].group(2)}"
    if lines:
        info["last_line"] = lines[-1]
    return info


# --- the record, and what training left in the cluster ------------------------------------------------------------


def state_path(settings) -> Path:
    return Path(settings.state_dir).expanduser() / STATE_FILE


def load_state(settings) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("namespace") else None


def save_state(settings, state: dict[str, Any]) -> None:
    write_json(state_path(settings), state)


def training_status(settings) -> dict[str, Any] | None:
    """The last training Job: phase, attempts, epoch and last log line (None: no training recorded)."""
    st = load_state(settings)
    if st is None or not st.get("job"):
        return None
    info: dict[str, Any] = {"job": st["job"], "context": st.get("context"), "namespace": st["namespace"]}
    try:
        api = k8s.connect(st.get("context"))
        info.update(progress(api, st["namespace"], st["job"]))
    except DeployError as exc:
        info.update(phase="unknown", error=exc.message)
    return info


def teardown(
    settings, keep_cluster: bool = False, deployment: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Delete the Jobs (with their pods), the Secret, the files pod and the volume training
    created, only those (by label), and the namespace if training created it; None when there
    is nothing recorded. `deployment`: where a deployment still runs ({"context", "namespace"}),
    whose namespace and kind cluster stay."""
    st = load_state(settings)
    if st is None:
        return None
    cluster = st.get("cluster")
    if cluster:
        gone = _kind_cluster_gone(settings, cluster, keep_cluster, _deployed_in(deployment, st))
        if gone is not None:
            state_path(settings).unlink(missing_ok=True)
            return {"message": gone}
    api = k8s.connect(st.get("context"))
    namespace = st["namespace"]
    deleted = delete_labelled(api, namespace)
    message = f"Deleted {len(deleted)} training objects in {st.get('context')}"
    if st.get("created_namespace") and not _deployed_in(deployment, st):
        k8s.delete_namespace(api, namespace)
        message += f" and namespace {namespace}"
    state_path(settings).unlink(missing_ok=True)
    log(f"  {message}.")
    return {"message": message + ".", "deleted": deleted}


# kind: (API class, plural of its namespaced list/delete methods)
_CLEANED = {
    "Job": ("BatchV1Api", "job"),
    "Pod": ("CoreV1Api", "pod"),
    "Secret": ("CoreV1Api", "secret"),
    "PersistentVolumeClaim": ("CoreV1Api", "persistent_volume_claim"),
}


def delete_labelled(api_client, namespace: str) -> list[str]:
    """Delete the Jobs, pods, Secrets and volumes in the namespace that carry training's labels;
    "Kind/name" of each. Propagation Background: a Job deleted without it orphans its pods."""
    from kubernetes import client

    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
    deleted = []
    for kind, (api_class, plural) in _CLEANED.items():
        api = getattr(client, api_class)(api_client)
        listing = getattr(api, f"list_namespaced_{plural}")
        found = k8s.call_api(f"Listing {kind}s in {namespace}", listing, namespace, label_selector=selector)
        for obj in found.items if found is not None else []:
            labels = obj.metadata.labels or {}
            if any(labels.get(k) != v for k, v in LABELS.items()):  # a selector the API server ignored
                continue
            delete = getattr(api, f"delete_namespaced_{plural}")
            name = obj.metadata.name
            if k8s.call_api(f"Deleting {kind}/{name}", delete, name, namespace, propagation_policy="Background"):
                deleted.append(f"{kind}/{name}")
    return deleted


def _kind_cluster_gone(settings, cluster: str, keep_cluster: bool, deployed: bool) -> str | None:
    """A kind cluster that is gone, or that pizzactl created for training alone (deleted unless
    --keep-cluster): what teardown did; None when the objects in it are to be deleted one by one."""
    if cluster not in clusters():
        return f"The kind cluster {cluster!r} is already gone."
    if cluster in created_clusters(settings) and not keep_cluster and not deployed:
        delete_cluster(settings, cluster)
        return f"Deleted the kind cluster {cluster!r} (pizzactl created it for training)."
    return None


def _deployed_in(deployment: Mapping[str, Any] | None, st: dict[str, Any]) -> bool:
    """Whether a deployment still runs in the namespace training made."""
    return (
        deployment is not None
        and deployment.get("context") == st.get("context")
        and deployment.get("namespace") == st["namespace"]
    )


# --- `train --on docker`'s cache volume --------------------------------------------------------


def docker_cache_record(settings) -> Path:
    return Path(settings.state_dir).expanduser() / "train-docker.json"


def docker_teardown(settings) -> dict[str, Any] | None:
    """Remove the cache volume `train --on docker` created; None if it never ran here."""
    record = docker_cache_record(settings)
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
