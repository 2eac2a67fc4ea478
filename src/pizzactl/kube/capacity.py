"""Will pizzactl's pods fit the cluster? Asked before building images, not after a timeout.

A pod whose requests no node can hold waits Pending forever (kube-scheduler's "0/1 nodes are
available: 1 Insufficient cpu."): with a trainer asking 2 CPU and 4Gi on Colima's default VM
(2 CPU, 2 GiB), or --gpus on a cluster without GPU nodes, that used to be found out after
building multi-GB images and waiting the whole --timeout. Here the requests are compared with
the nodes' allocatable (what the scheduler fits against). Only what cannot fit however the
cluster is used fails: one pod larger than every node it may run on, or all the pods together
larger than all those nodes. Free room that other pods hold is left to the scheduler, whose
events `job_watch` and `diagnosis` quote. Nodes that cannot be listed (a namespace-scoped
identity: 403) skip the check with a note.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pizzactl.console import log
from pizzactl.errors import DeployError, PizzaError, TrainingError

GPU = "nvidia.com/gpu"
_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:[eE]([+-]?[0-9]+))?([A-Za-z]*)$")


def quantity(text: Any) -> float:
    """A Kubernetes resource quantity ("250m", "2", "1948Mi", "4Gi", "1e3") as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(3) not in _UNITS:
        raise DeployError(f"{text!r} is not a Kubernetes quantity.", hint="Use e.g. 2, 500m, 4Gi, 512Mi.")
    number, exponent, unit = match.groups()
    return float(number) * 10 ** int(exponent or 0) * _UNITS[unit]


@dataclass(frozen=True)
class Need:
    """What `count` pods of one kind request, and which nodes they may use."""

    what: str  # "the training pod", "pizzactl-model"
    cpu: float = 0.0  # cores
    memory: float = 0.0  # bytes
    gpus: int = 0
    count: int = 1
    node_selector: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Node:
    name: str
    cpu: float
    memory: float
    gpus: int
    labels: Mapping[str, str]


def nodes(api_client) -> list[Node] | None:
    """The schedulable nodes' allocatable; None when they cannot be listed (no permission, or
    anything else: this check is a courtesy, what follows reports a cluster that does not answer)."""
    from kubernetes import client

    try:
        items = client.CoreV1Api(api_client).list_node().items
    except Exception:
        return None
    found = []
    for item in items:
        if item.spec and item.spec.unschedulable:
            continue  # cordoned
        allocatable = (item.status.allocatable if item.status else None) or {}
        meta = item.metadata or client.V1ObjectMeta()
        found.append(
            Node(
                name=str(meta.name),
                cpu=quantity(allocatable.get("cpu", "0")),
                memory=quantity(allocatable.get("memory", "0")),
                gpus=int(quantity(allocatable.get(GPU, "0"))),
                labels=dict(meta.labels or {}),
            )
        )
    return found


def problem(needs: Iterable[Need], available: list[Node]) -> str | None:
    """Why the pods cannot fit these nodes whatever else runs there, or None."""
    needs = list(needs)
    for need in needs:
        candidates = [n for n in available if all(n.labels.get(k) == v for k, v in need.node_selector.items())]
        if not candidates:
            selector = ",".join(f"{k}={v}" for k, v in need.node_selector.items())
            return f"{need.what} may only run on nodes labelled {selector}, and the cluster has none"
        if need.gpus and not any(n.gpus >= need.gpus for n in candidates):
            most = max(n.gpus for n in candidates)
            return f"{need.what} asks for {need.gpus} {GPU}, and " + (
                "no node offers any (no GPU nodes, or no NVIDIA device plugin)"
                if not most
                else f"no node has more than {most}"
            )
        if not any(n.cpu >= need.cpu and n.memory >= need.memory for n in candidates):
            biggest = max(candidates, key=lambda n: (n.memory, n.cpu))
            return (
                f"{need.what} asks for {_cpu(need.cpu)} CPU and {_bytes(need.memory)} of memory, but no node has "
                f"that much allocatable (the largest, {biggest.name}: {_cpu(biggest.cpu)} CPU, {_bytes(biggest.memory)})"
            )
    total_cpu = sum(n.cpu * n.count for n in needs)
    total_memory = sum(n.memory * n.count for n in needs)
    room_cpu = sum(n.cpu for n in available)
    room_memory = sum(n.memory for n in available)
    if total_cpu > room_cpu or total_memory > room_memory:
        return (
            f"together the pods ask for {_cpu(total_cpu)} CPU and {_bytes(total_memory)} of memory, more than the "
            f"nodes' allocatable ({_cpu(room_cpu)} CPU, {_bytes(room_memory)})"
        )
    return None


def check(api_client, needs: list[Need], *, hint: str, error: type[PizzaError] = DeployError) -> None:
    """Raise `error` (with `hint`) when the pods cannot fit; a note when nodes cannot be listed."""
    available = nodes(api_client)
    if available is None:
        log("[dim]Cannot list the cluster's nodes (no permission?): not checking that the pods fit them.[/]")
        return
    if not available:  # none listed (or all cordoned): the scheduler's events will say more
        return
    why = problem(needs, available)
    if why:
        raise error(f"The pods would never be scheduled: {why}.", hint=hint)


# --- what pizzactl's pods ask for ------------------------------------------------------------------


def _requests(pod_spec: Mapping[str, Any]) -> tuple[float, float, int]:
    """(cpu, memory, gpus) the scheduler counts for a pod: its containers' requests (limits for
    extended resources such as GPUs, which have no separate request)."""
    cpu = memory = 0.0
    gpus = 0
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        cpu += quantity(requests.get("cpu", limits.get("cpu", "0")))
        memory += quantity(requests.get("memory", limits.get("memory", "0")))
        gpus += int(quantity(limits.get(GPU, requests.get(GPU, "0"))))
    return cpu, memory, gpus


def deployment_needs(docs: list[dict[str, Any]]) -> list[Need]:
    """Each Deployment's pods at its HPA's minReplicas."""
    minimum = {
        d["spec"]["scaleTargetRef"]["name"]: int(d["spec"].get("minReplicas", 1))
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    needs = []
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        cpu, memory, gpus = _requests(pod)
        replicas = max(minimum.get(name, 1), int(doc["spec"].get("replicas") or 1))
        selector = dict(pod.get("nodeSelector") or {})
        needs.append(Need(f"a {name} pod", cpu, memory, gpus, replicas, selector))
    return needs


def training_needs(job: dict[str, Any]) -> list[Need]:
    """The training Job's pod (one at a time)."""
    pod = job["spec"]["template"]["spec"]
    cpu, memory, gpus = _requests(pod)
    return [Need("the training pod", cpu, memory, gpus, 1, dict(pod.get("nodeSelector") or {}))]


MORE_ROOM = (
    "give the cluster's nodes more: Colima `colima stop; colima start --cpu 4 --memory 8` (then re-create the "
    "kind cluster: `pizzactl teardown`), Docker Desktop: Settings > Resources; on a cloud cluster, a bigger node pool"
)


def check_deployment(api_client, docs: list[dict[str, Any]]) -> None:
    """Before building: the model server and gateway pods (k8s/*.yaml requests, rendered) fit the nodes."""
    hint = f"Lower the requests in k8s/model.yaml and k8s/gateway.yaml, or {MORE_ROOM}."
    check(api_client, deployment_needs(docs), hint=hint)


def check_training(api_client, job: dict[str, Any], settings) -> None:
    """Before building the trainer: its pod (the rendered Job: --cpu, --memory, --gpus,
    --node-selector) fits a node."""
    if settings.gpus:
        hint = (
            "Train without --gpus, or add a GPU node pool with the NVIDIA device plugin (GKE, EKS and AKS GPU "
            "nodes have it) and point --node-selector/--toleration at it."
        )
    else:
        hint = (
            f"Ask for less (now --cpu {settings.train_cpu} --memory {settings.train_memory}; a smaller "
            f"--batch-size needs less memory), or {MORE_ROOM}."
        )
    check(api_client, training_needs(job), hint=hint, error=TrainingError)


def _cpu(cores: float) -> str:
    return f"{cores:g}" if cores >= 1 or cores == 0 else f"{cores * 1000:.0f}m"


def _bytes(n: float) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"
