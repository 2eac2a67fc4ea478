"""Render the shipped Kubernetes manifests (k8s/) once, for every target that runs the pods.

The YAML files in the top-level `k8s/` are the single source: `kubectl apply -k k8s/` uses
them through kustomization.yaml, `pizzactl deploy` renders the same files here (same resource
order, same image substitution as kustomize's `images:`), and `deploy --target docker` runs
the very pod specs rendered here as containers. What rendering adds is what only a deploy
knows: images, namespace, model version, gateway options, a pull secret, and thread counts
sized to the model container's CPU limit (TensorFlow would otherwise size its pools to the
node's cores, not the pod's share of them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from pizzactl.config import MODEL_NAME, MODEL_PORT, Settings
from pizzactl.deploy.rollout import Plan
from pizzactl.errors import ModelNotFoundError
from pizzactl.kube.shipped import K8S_DIR, MODEL_CONFIG_IN_IMAGE, MODEL_VERSION_LABEL, MODEL_VERSIONS_ANNOTATION
from pizzactl.model.card import ModelCard
from pizzactl.model.store import model_base
from pizzactl.serving.auth import accepted_hashes, hashes_setting

MODEL_VERSION_ANNOTATION = "pizzactl.dev/model-version"
# tensorflow_model_server flags of docker/model.Dockerfile's CMD; Kubernetes `args` replace CMD,
# so the rendered pod repeats them before adding its thread counts.
TFSERVING_FLAGS = [
    "--enable_batching",
    "--batching_parameters_file=/models/batching_parameters.txt",
    "--rest_api_timeout_in_ms=30000",
]


# The Settings fields `render` reads besides the images, namespace and models directory: a
# deploy records them (`render_options`), and rollback and the rollout after `train --on`
# render with the recorded ones, not with the flags of that later command. Under server-side
# apply a field the same manager leaves out is deleted (an imagePullSecrets, an env value).
RENDER_OPTIONS = ("pull_secret", "allow_private_urls")


def render_options(settings: Settings) -> dict[str, Any]:
    """`RENDER_OPTIONS`, and the API keys as the digests the gateway accepts (never a key): a
    rollback from a shell without PIZZACTL_API_KEY must not render an empty keys Secret, which
    would open the gateway."""

    digests = accepted_hashes(settings.api_key, settings.api_key_hashes)
    return {
        **{name: getattr(settings, name) for name in RENDER_OPTIONS},
        "api_key": None,
        "api_key_hashes": hashes_setting(digests) or None,
    }


def kustomization(k8s_dir: Path = K8S_DIR) -> dict[str, Any]:
    return yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())


def load_documents(k8s_dir: Path = K8S_DIR) -> list[dict[str, Any]]:
    """Every object of the kustomization's resources, in its order (anchors resolved, unshared)."""
    docs: list[dict[str, Any]] = []
    for name in kustomization(k8s_dir)["resources"]:
        for doc in yaml.safe_load_all((k8s_dir / name).read_text()):
            if doc:
                docs.append(json.loads(json.dumps(doc)))  # break YAML anchor sharing
    return docs


def cpu_count(quantity: str | int | float) -> int:
    """Whole CPUs of a Kubernetes CPU quantity ("2", "1500m", 0.5), at least 1."""
    text = str(quantity)
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(value))


def render(
    settings: Settings,
    gateway_image: str,
    model_image: str,
    *,
    model_version: int | None = None,
    model_server: str = "builtin",
    k8s_dir: Path = K8S_DIR,
    plan: Plan | None = None,
) -> list[dict[str, Any]]:
    """The objects to apply: namespace set, images filled in, gateway options from settings.

    A pinned `plan` (a canary or shadow trial, or one version after `abort`, deploy/rollout.py):
    the model server starts with the model config baked into its image (`kube.images.Pinned`),
    and the gateway gets the plan's settings as env. A plain Plan() renders nothing more."""
    images = {"pizzactl-gateway": gateway_image, "pizzactl-model": model_image}
    namespace = settings.namespace
    classes = model_classes(settings, model_version) if model_server == "tfserving" else ""
    docs = load_documents(k8s_dir)
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if doc["kind"] == "Namespace":
            meta["name"] = namespace
        else:
            meta["namespace"] = namespace
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]
        if model_version is not None:
            meta.setdefault("annotations", {})[MODEL_VERSION_ANNOTATION] = str(model_version)
            if meta["name"] == "pizzactl-model":  # each pod says which version it serves (`status`)
                pod["metadata"].setdefault("labels", {})[MODEL_VERSION_LABEL] = str(model_version)
        if settings.pull_secret:
            pod["spec"]["imagePullSecrets"] = [{"name": settings.pull_secret}]
        for container in pod["spec"]["containers"]:
            name = container["image"].split(":")[0]
            if name in images:
                container["image"] = images[name]
            for env in container.get("env", []):
                if env["name"] == "PIZZACTL_ALLOW_PRIVATE_URLS":
                    env["value"] = "true" if settings.allow_private_urls else "false"
                elif env["name"] == "PIZZACTL_MODEL_URL":
                    env["value"] = f"http://pizzactl-model.{namespace}.svc:{MODEL_PORT}"
            if name == "pizzactl-model":
                _size_threads(container, model_server)
            if name == "pizzactl-gateway" and classes:
                container.setdefault("env", []).append({"name": "PIZZACTL_CLASSES", "value": classes})
            if plan is not None and plan.pinned:
                _pin(pod, container, name, model_server, plan)
    return with_api_keys(docs, settings)


def _pin(pod: dict[str, Any], container: dict[str, Any], name: str, model_server: str, plan: Plan) -> None:
    """The model server reads the image's model config (TF Serving: `--model_config_file`, the
    builtin server: PIZZACTL_MODEL_CONFIG_FILE) and is ready once stable is; the gateway gets
    the plan's settings. The pods say which versions they hold (`status`)."""
    if name == "pizzactl-model":
        if model_server == "tfserving":  # args replace the image's CMD: repeat its flags
            container["args"] = [
                *(container.get("args") or TFSERVING_FLAGS),
                f"--model_config_file={MODEL_CONFIG_IN_IMAGE}",
            ]
        else:
            container.setdefault("env", []).append(
                {"name": "PIZZACTL_MODEL_CONFIG_FILE", "value": MODEL_CONFIG_IN_IMAGE}
            )
        for probe in ("startupProbe", "readinessProbe"):  # TF Serving's status URL of one version
            get = (container.get(probe) or {}).get("httpGet")
            if get:
                get["path"] = f"/v1/models/{MODEL_NAME}/versions/{plan.stable}"
        annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[MODEL_VERSIONS_ANNOTATION] = ",".join(str(v) for v in plan.versions())
    elif name == "pizzactl-gateway":
        container.setdefault("env", []).extend({"name": k, "value": v} for k, v in plan.gateway_env().items())


def model_config_comment(plan: Plan | None) -> str:
    """For --dry-run: the model config the model image holds (as YAML comments)."""
    config = plan.in_image() if plan is not None else None
    if config is None:
        return ""
    lines = [
        f"# {plan.mode if plan.trial else 'pinned'}: {plan.describe()}",  # type: ignore[union-attr]
        f"# the model image holds versions {', '.join(map(str, config.versions))} and {MODEL_CONFIG_IN_IMAGE}:",
    ]
    return "\n".join([*lines, *("#   " + line for line in config.model_config.splitlines()), ""])


API_KEYS_SECRET = "pizzactl-api-keys"
API_KEYS_ANNOTATION = "pizzactl.dev/api-keys"


def with_api_keys(docs: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """The key digests in the Secret the gateway reads them from (k8s/api-keys.yaml), and an
    annotation on the gateway's pods that changes with them (a Secret in env is read at pod start:
    new keys roll the pods). Deploy owns this Secret: without keys it is empty and the gateway
    open. Only SHA-256 digests, never a key."""
    import base64
    import hashlib

    hashes = hashes_setting(accepted_hashes(settings.api_key, settings.api_key_hashes))
    fingerprint = hashlib.sha256(hashes.encode()).hexdigest()[:16] if hashes else "none"
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == API_KEYS_SECRET:
            doc["data"] = {"hashes": base64.b64encode(hashes.encode()).decode()}
        elif doc["kind"] == "Deployment" and doc["metadata"]["name"] == "pizzactl-gateway":
            pod_meta = doc["spec"]["template"].setdefault("metadata", {})
            pod_meta.setdefault("annotations", {})[API_KEYS_ANNOTATION] = fingerprint
    return docs


def without_namespace(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects without the Namespace: for a namespace pizzactl did not create, which it
    leaves as it is (no labels of ours, no Pod Security level forced on other workloads)."""
    return [d for d in docs if d["kind"] != "Namespace"]


def model_classes(settings: Settings, model_version: int | None) -> str:
    """The deployed version's class names, comma-separated, for a gateway in front of TF Serving
    (which serves no pizzactl.json, so the gateway could not name the probabilities otherwise)."""

    if model_version is None:
        return ""
    try:
        card = ModelCard.load(model_base(settings.models_dir) / str(model_version))
    except ModelNotFoundError:  # no pizzactl.json (exported elsewhere): the gateway numbers the columns
        return ""
    return ",".join(card.classes)


def _size_threads(container: dict[str, Any], model_server: str) -> None:
    """TensorFlow's thread pools sized to the container's CPU limit (one op at a time)."""
    limit = (container.get("resources", {}).get("limits") or {}).get("cpu")
    if limit is None:
        return
    cpus = cpu_count(limit)
    env = [e for e in container.get("env", []) if e["name"] != "OMP_NUM_THREADS"]
    env.append({"name": "OMP_NUM_THREADS", "value": str(cpus)})
    if model_server == "tfserving":
        container["args"] = [
            *TFSERVING_FLAGS,
            f"--tensorflow_intra_op_parallelism={cpus}",
            "--tensorflow_inter_op_parallelism=1",
        ]
    else:
        env += [
            {"name": "PIZZACTL_TF_INTRA_OP_THREADS", "value": str(cpus)},
            {"name": "PIZZACTL_TF_INTER_OP_THREADS", "value": "1"},
        ]
    container["env"] = env


def deployments(docs: list[dict[str, Any]]) -> list[str]:
    return [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, as `kubectl apply -f -` reads it."""
    return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)
