"""Training as a Kubernetes Job: the objects pizzactl applies, what it remembers, status and cleanup.

`render(plan)` fills in the templates of `k8s/training/` (a PersistentVolumeClaim, a Job, the
short-lived files pod that copies data in and results out) from a `JobPlan`, plus a Secret
with the Kaggle credentials when the Job downloads the dataset itself: credentials never go
into the image or the Job, the pod reads them from the Secret. Every object carries the labels
`app.kubernetes.io/component=training` and `app.kubernetes.io/managed-by=pizzactl`, and
`state_dir/train.json` records the cluster, namespace and job, so `status` can show the run and
`teardown` removes exactly what training created (Jobs, their pods, the Secret, the volume,
and the namespace if training created it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pizzactl.console import log
from pizzactl.deploy.manifests import K8S_DIR
from pizzactl.errors import UsageError
from pizzactl.files import write_json

TRAINING_DIR = K8S_DIR / "training"
VOLUME = "pizzactl-train"
SECRET = "pizzactl-kaggle"
FILES_POD = "pizzactl-train-files"
CONTAINER = "train"
WORKSPACE = "/workspace"
DATA_MOUNT = "/data"
LABELS = {"app.kubernetes.io/component": "training", "app.kubernetes.io/managed-by": "pizzactl"}
JOB_LABEL = "batch.kubernetes.io/job-name"  # the Job controller puts it on the Job's pods
GPU_RESOURCE = "nvidia.com/gpu"
STATE_FILE = "train.json"
REDACTED = "<redacted: read from your Kaggle credentials when applied>"


def output_dir(job: str) -> str:
    """Where a Job writes its outbox on the volume (models/, runs/, result.json)."""
    return f"{WORKSPACE}/jobs/{job}"


def data_dir(data_hash: str) -> str:
    """Where an uploaded dataset lives on the volume: one folder per content hash."""
    return f"{WORKSPACE}/data/{data_hash}"


@dataclass(frozen=True)
class JobPlan:
    """Everything that decides the objects of one training run."""

    name: str  # the Job: pizzactl-train-<UTC time>
    namespace: str
    image: str
    env: dict[str, str]  # PIZZACTL_* training settings
    data_hash: str | None = None  # uploaded dataset (read-only at /data); None: the Job downloads it
    kaggle: dict[str, str] | None = None  # the Secret's data (downloads only)
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    backoff_limit: int = 2
    deadline: int = 21600
    volume_size: str = "10Gi"
    pull_secret: str | None = None


def plan_from_settings(settings, *, name: str, image: str, env: dict[str, str], **kw: Any) -> JobPlan:
    return JobPlan(
        name=name,
        namespace=settings.namespace,
        image=image,
        env=env,
        cpu=settings.train_cpu,
        memory=settings.train_memory,
        gpus=settings.gpus,
        node_selector=parse_node_selector(settings.node_selector),
        tolerations=parse_tolerations(settings.tolerations, settings.gpus),
        backoff_limit=settings.backoff_limit,
        deadline=settings.train_deadline,
        volume_size=settings.train_volume_size,
        pull_secret=settings.pull_secret,
        **kw,
    )


def parse_node_selector(text: str | None) -> dict[str, str]:
    """ "key=value,key2=value2" -> {key: value, ...}."""
    selector = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(
                f"Bad --node-selector {item!r}.",
                hint="Use KEY=VALUE, e.g. --node-selector cloud.google.com/gke-spot=true.",
            )
        selector[key.strip()] = value.strip()
    return selector


_TOLERATION = re.compile(r"^(?P<key>[^=:]+)(=(?P<value>[^:]*))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$")


def parse_tolerations(text: str | None, gpus: int = 0) -> list[dict[str, str]]:
    """ "key[=value]:Effect,..." -> tolerations; GPUs add the taint GPU node pools carry (nvidia.com/gpu)."""
    tolerations = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        match = _TOLERATION.match(item)
        if not match:
            raise UsageError(
                f"Bad --toleration {item!r}.",
                hint="Use KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute, "
                "e.g. --toleration dedicated=ml:NoSchedule.",
            )
        toleration = {"key": match["key"], "effect": match["effect"]}
        toleration.update({"operator": "Equal", "value": match["value"]} if match["value"] else {"operator": "Exists"})
        tolerations.append(toleration)
    if gpus > 0 and not any(t["key"] == GPU_RESOURCE for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


# --- rendering ----------------------------------------------------------------------------------


def _template(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((TRAINING_DIR / name).read_text())
    return json.loads(json.dumps(doc))  # YAML anchors unshared


def _labelled(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    meta = doc.setdefault("metadata", {})
    meta["namespace"] = namespace
    meta.setdefault("labels", {}).update(LABELS)
    return doc


def render(plan: JobPlan) -> list[dict[str, Any]]:
    """The objects of a run, in apply order: volume, (Secret), Job. The files pod: `files_pod`."""
    volume = _labelled(_template("volume.yaml"), plan.namespace)
    volume["spec"]["resources"]["requests"]["storage"] = plan.volume_size
    docs = [volume]
    if plan.kaggle:
        docs.append(kaggle_secret(plan.namespace, plan.kaggle))
    docs.append(render_job(plan))
    return docs


def kaggle_secret(namespace: str, data: dict[str, str]) -> dict[str, Any]:
    """The Secret with `data` (base64), not `stringData`: the API server folds stringData into
    data and never stores it, so under server-side apply the fields pizzactl owns would be
    stringData's, and a key left out later (KAGGLE_KEY after switching to KAGGLE_API_TOKEN)
    would stay in data for good (kubernetes/kubernetes#108008)."""
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": namespace, "labels": {"app.kubernetes.io/name": SECRET, **LABELS}},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def render_job(plan: JobPlan) -> dict[str, Any]:
    job = _labelled(_template("job.yaml"), plan.namespace)
    job["metadata"]["name"] = plan.name
    spec = job["spec"]
    spec["backoffLimit"] = plan.backoff_limit
    spec["activeDeadlineSeconds"] = plan.deadline
    pod = spec["template"]["spec"]
    spec["template"]["metadata"].setdefault("labels", {}).update(LABELS)
    container = pod["containers"][0]
    container["image"] = plan.image
    container["env"] = [
        *container.get("env", []),
        {"name": "OUTPUT_DIR", "value": output_dir(plan.name)},
        *({"name": k, "value": v} for k, v in sorted(plan.env.items())),
    ]
    if plan.data_hash:  # the plan's env says PIZZACTL_DATA_DIR=/data
        container["volumeMounts"].append(
            {"name": "workspace", "mountPath": DATA_MOUNT, "subPath": f"data/{plan.data_hash}", "readOnly": True}
        )
    if plan.kaggle:
        container["envFrom"] = [{"secretRef": {"name": SECRET}}]
    resources = {"requests": {"cpu": plan.cpu, "memory": plan.memory}, "limits": {"memory": plan.memory}}
    if plan.gpus:
        resources["limits"][GPU_RESOURCE] = str(plan.gpus)
    container["resources"] = resources
    if plan.node_selector:
        pod["nodeSelector"] = dict(plan.node_selector)
    if plan.tolerations:
        pod["tolerations"] = [dict(t) for t in plan.tolerations]
    if plan.pull_secret:
        pod["imagePullSecrets"] = [{"name": plan.pull_secret}]
    return job


def files_pod(plan: JobPlan) -> dict[str, Any]:
    """The pod that copies files to and from the volume, on the nodes the Job may use: a new
    volume is created where its first pod lands (WaitForFirstConsumer) and a zonal disk cannot
    follow a Job to another zone ("volume node affinity conflict")."""
    pod = _labelled(_template("files.yaml"), plan.namespace)
    pod["spec"]["containers"][0]["image"] = plan.image
    if plan.pull_secret:
        pod["spec"]["imagePullSecrets"] = [{"name": plan.pull_secret}]
    if plan.node_selector:
        pod["spec"]["nodeSelector"] = dict(plan.node_selector)
    if plan.tolerations:
        pod["spec"]["tolerations"] = [dict(t) for t in plan.tolerations]
    return pod


def redacted(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects as --dry-run prints them: a Secret's values replaced (its keys stay)."""
    shown = []
    for doc in docs:
        if doc["kind"] == "Secret":
            shown_doc = {k: v for k, v in doc.items() if k != "data"}  # readable: stringData, values hidden
            doc = {**shown_doc, "stringData": dict.fromkeys(doc.get("data", {}), REDACTED)}
        shown.append(doc)
    return shown


# --- what training left in the cluster ------------------------------------------------------------


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
    from pizzactl.deploy import job_watch, k8s
    from pizzactl.errors import DeployError

    st = load_state(settings)
    if st is None or not st.get("job"):
        return None
    info: dict[str, Any] = {"job": st["job"], "context": st.get("context"), "namespace": st["namespace"]}
    try:
        api = k8s.connect(st.get("context"))
        info.update(job_watch.progress(api, st["namespace"], st["job"]))
    except DeployError as exc:
        info.update(phase="unknown", error=exc.message)
    return info


def teardown(settings, keep_cluster: bool = False) -> dict[str, Any] | None:
    """Delete the Jobs (with their pods), the Secret, the files pod and the volume training
    created, only those (by label), and the namespace if training created it; None when there
    is nothing recorded."""
    from pizzactl.deploy import k8s

    st = load_state(settings)
    if st is None:
        return None
    cluster = st.get("cluster")
    if cluster:
        gone = _kind_cluster_gone(settings, cluster, keep_cluster, _deployed_in(settings, st))
        if gone is not None:
            state_path(settings).unlink(missing_ok=True)
            return {"message": gone}
    api = k8s.connect(st.get("context"))
    namespace = st["namespace"]
    deleted = delete_labelled(api, namespace)
    message = f"Deleted {len(deleted)} training objects in {st.get('context')}"
    if st.get("created_namespace") and not _deployed_in(settings, st):
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

    from pizzactl.deploy import k8s

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
    from pizzactl.deploy.targets import kind

    if cluster not in kind.clusters():
        return f"The kind cluster {cluster!r} is already gone."
    if cluster in kind.created_clusters(settings) and not keep_cluster and not deployed:
        kind.delete_cluster(settings, cluster)
        return f"Deleted the kind cluster {cluster!r} (pizzactl created it for training)."
    return None


def _deployed_in(settings, st: dict[str, Any]) -> bool:
    """Whether a deployment still runs in the namespace training made."""
    from pizzactl.deploy import state as state_mod

    deployed = state_mod.load(settings)
    return (
        deployed is not None
        and deployed.extra.get("context") == st.get("context")
        and deployed.extra.get("namespace") == st["namespace"]
    )
