"""Render the shipped Kubernetes manifests (k8s/) with the images and settings of one deploy.

The YAML files in `pizzactl/k8s/` are the single source: `kubectl apply -k k8s/` uses them
through kustomization.yaml, and `pizzactl deploy` renders the same files here (same resource
order, same image substitution as kustomize's `images:`), so both paths deploy identical objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

import pizzactl
from pizzactl.config import Settings

K8S_DIR = Path(pizzactl.__file__).resolve().parent / "k8s"
GATEWAY_NODE_PORT = 30096
FIELD_MANAGER = "pizzactl"
CLUSTER_SCOPED = {"Namespace"}
MODEL_VERSION_ANNOTATION = "pizzactl.dev/model-version"


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


def render(
    settings: Settings,
    gateway_image: str,
    model_image: str,
    *,
    model_version: int | None = None,
    k8s_dir: Path = K8S_DIR,
) -> list[dict[str, Any]]:
    """The objects to apply: namespace set, images filled in, gateway options from settings."""
    images = {"pizzactl-gateway": gateway_image, "pizzactl-model": model_image}
    namespace = settings.namespace
    docs = load_documents(k8s_dir)
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if doc["kind"] == "Namespace":
            meta["name"] = namespace
        else:
            meta["namespace"] = namespace
        if doc["kind"] != "Deployment":
            continue
        if model_version is not None:
            meta.setdefault("annotations", {})[MODEL_VERSION_ANNOTATION] = str(model_version)
        for container in doc["spec"]["template"]["spec"]["containers"]:
            name = container["image"].split(":")[0]
            if name in images:
                container["image"] = images[name]
            for env in container.get("env", []):
                if env["name"] == "PIZZACTL_ALLOW_PRIVATE_URLS":
                    env["value"] = "true" if settings.allow_private_urls else "false"
                elif env["name"] == "PIZZACTL_MODEL_URL":
                    env["value"] = f"http://pizzactl-model.{namespace}.svc:8501"
    return docs


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, as `kubectl apply -f -` reads it."""
    return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)
