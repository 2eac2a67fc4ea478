"""Talk to a Kubernetes cluster with the official Python client: apply, wait, explain, delete.

Objects are applied with server-side apply (field manager `pizzactl`, conflicts forced), as
`kubectl apply --server-side` does, so re-deploying is idempotent and fields other tools own
(e.g. an HPA's replica count) are left alone. When a rollout does not finish in time,
`diagnosis.diagnose` says why in the user's terms: an image that cannot be pulled, a container that
crashes (with its last log lines), a pod that cannot be scheduled (with its events).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pizzactl.console import log
from pizzactl.errors import DeployError
from pizzactl.files import wait_until
from pizzactl.kube import diagnosis
from pizzactl.kube.shipped import MODEL_VERSION_LABEL, MODEL_VERSIONS_ANNOTATION

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
FIELD_MANAGER = "pizzactl"  # the manager of every field pizzactl applies (server-side apply)
# Polls start this soon and double up to their interval: a rollout or deletion that is over in a
# moment is seen in a moment, a long one is still read only every interval.
FIRST_POLL = 0.1
# ServiceAccount admission refuses pods until the namespace controller has created the namespace's
# `default` ServiceAccount, moments after the namespace (kubernetes/kubernetes#66689).
SERVICE_ACCOUNT_MISSING = re.compile(r'error looking up service account ([^:]+): serviceaccount "[^"]+" not found')


def connect(context: str | None = None, kubeconfig: str | None = None):
    """An ApiClient for a kubeconfig context (default: the current one)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None  # read now, not at import time
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError, OSError) as exc:
        where = f"context {context!r}" if context else "the current context"
        raise DeployError(
            f"Cannot load the kubeconfig for {where}: {exc}",
            hint="List contexts with `kubectl config get-contexts`; pass one with --context.",
        ) from None


def api_error(exc: Exception, doing: str) -> DeployError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        reason = _message(exc)
        missing = SERVICE_ACCOUNT_MISSING.search(reason) if exc.status == 403 else None
        if missing:
            # Not a permissions problem either: the namespace is new and its ServiceAccount is not there yet.
            return DeployError(
                f"{doing} failed: the API server refuses pods until the ServiceAccount {missing.group(1)} exists "
                f"({reason}).",
                hint=f"The namespace controller creates it moments after the namespace; check "
                f"`kubectl get serviceaccount -n {missing.group(1).split('/')[0]}`. If it never appears, the "
                "cluster's controller-manager is not running (`kubectl get pods -n kube-system`).",
            )
        if exc.status == 403 and "because it is being terminated" in reason:
            # NamespaceLifecycle admission: a namespace deleted moments ago (teardown) is still
            # Terminating; that is not a permissions problem.
            return DeployError(
                f"{doing} failed: the namespace is still being deleted (Terminating) after an earlier teardown.",
                hint="Wait until `kubectl get namespace pizzactl` no longer shows it, then deploy again "
                "(pizzactl waits for it up to --timeout).",
            )
        hint = (
            "Check your permissions with `kubectl auth can-i create deployments -n pizzactl`."
            if exc.status in (401, 403)
            else "Run `kubectl get events -n pizzactl` for details."
        )
        return DeployError(f"{doing} failed: HTTP {exc.status} {reason}", hint=hint)
    return DeployError(
        f"{doing} failed: cannot reach the Kubernetes API ({type(exc).__name__}: {str(exc)[:200]}).",
        hint="Is the cluster running? `kubectl cluster-info`; for kind: `kind get clusters`.",
    )


_MISSING = object()


def _call(doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) with API errors as DeployError; a 404 returns _MISSING."""
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return _MISSING
        raise api_error(exc, doing) from None
    except Exception as exc:
        raise api_error(exc, doing) from None


def call_api(doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) with API errors as DeployError; None when the object does not exist (404)."""
    result = _call(doing, fn, *args, **kwargs)
    return None if result is _MISSING else result


_KINDS = {  # kind: (API class, method suffix, namespaced)
    "Namespace": ("CoreV1Api", "namespace", False),
    "Service": ("CoreV1Api", "namespaced_service", True),
    "ConfigMap": ("CoreV1Api", "namespaced_config_map", True),
    "ServiceAccount": ("CoreV1Api", "namespaced_service_account", True),
    "Deployment": ("AppsV1Api", "namespaced_deployment", True),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "namespaced_horizontal_pod_autoscaler", True),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget", True),
    # training (`train --on kind|CONTEXT`)
    "Job": ("BatchV1Api", "namespaced_job", True),
    "PersistentVolumeClaim": ("CoreV1Api", "namespaced_persistent_volume_claim", True),
    "Secret": ("CoreV1Api", "namespaced_secret", True),
    "Pod": ("CoreV1Api", "namespaced_pod", True),
}


def _method(api_client, kind: str, verb: str) -> tuple[Callable[..., Any], bool]:
    """The typed client method `verb` ("patch", "delete") for a kind, and whether it is namespaced."""
    from kubernetes import client

    if kind not in _KINDS:
        raise DeployError(f"pizzactl cannot apply objects of kind {kind}.", hint="Remove it from k8s/.")
    api_class, suffix, namespaced = _KINDS[kind]
    return getattr(getattr(client, api_class)(api_client), f"{verb}_{suffix}"), namespaced


def _message(exc) -> str:
    """The message of the Status an ApiException carries (else its HTTP reason)."""
    reason = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        reason = json.loads(exc.body or "{}").get("message") or reason
    return reason


def service_account_missing(exc: Exception) -> bool:
    """Whether an API error is ServiceAccount admission refusing a pod in a namespace just created."""
    from kubernetes.client.exceptions import ApiException

    return isinstance(exc, ApiException) and exc.status == 403 and bool(SERVICE_ACCOUNT_MISSING.search(_message(exc)))


def apply(api_client, docs: list[dict[str, Any]], *, admission_wait: float = 0.0, quiet: bool = False) -> list[str]:
    """Server-side apply every object (in order); returns "Kind/name" for each.

    `admission_wait`: how long a bare Pod is retried while ServiceAccount admission refuses it
    because the namespace's `default` ServiceAccount does not exist yet (a namespace created
    moments ago); only that refusal is retried, and the last one is the error.
    """
    applied = []
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        patch, namespaced = _method(api_client, kind, "patch")
        kwargs = dict(body=doc, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_CONTENT_TYPE)
        deadline = time.monotonic() + admission_wait
        while True:
            try:
                if namespaced:
                    patch(meta["name"], meta["namespace"], **kwargs)
                else:
                    patch(meta["name"], **kwargs)
                break
            except Exception as exc:
                if service_account_missing(exc) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise api_error(exc, f"Applying {kind}/{meta['name']}") from None
        applied.append(f"{kind}/{meta['name']}")
        if not quiet:
            log(f"  applied {kind}/{meta['name']}")
    return applied


# --- rollout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutState:
    """One Deployment's rollout, read as `kubectl rollout status` reads it.

    kubectl (pkg/polymorphichelpers/rollout_status.go): done when the controller has observed the
    latest spec (observedGeneration >= generation), every desired replica is updated, no old
    replica is left (status.replicas == updatedReplicas) and every updated one is available.
    A ProgressDeadlineExceeded condition counts only once the controller has observed the latest
    spec: until then it is the previous rollout's, which a fix-forward or rollback replaces. Nor
    does one that was there, unchanged, before this apply (`stale`): a rollback onto a
    ReplicaSet that still exists keeps the old condition after it is observed, until its pods
    move (pkg/controller/deployment/sync.go sets no new one for a found ReplicaSet).
    `hpa_min` adds what follows on a fresh deployment: the HPA raises replicas to its minReplicas.
    """

    name: str
    desired: int
    replicas: int
    updated: int
    ready: int
    available: int
    observed: bool
    deadline_exceeded: bool = False
    hpa_min: int = 0

    @property
    def waiting_for(self) -> str | None:
        """What the rollout still waits for (kubectl's words), or None when it is done."""
        if not self.observed:
            return "Waiting for deployment spec update to be observed"
        if self.updated < self.desired:
            return f"{self.updated} out of {self.desired} new replicas have been updated"
        if self.replicas > self.updated:
            return f"{self.replicas - self.updated} old replicas are pending termination"
        if self.available < self.updated:
            return f"{self.available} of {self.updated} updated replicas are available"
        if self.desired < self.hpa_min:
            return f"the HPA raises replicas from {self.desired} to its minReplicas {self.hpa_min}"
        return None

    @property
    def done(self) -> bool:
        return self.waiting_for is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "updated": self.updated,
            "ready": self.ready,
            "available": self.available,
            "done": self.done,
        }


def _deadline_mark(conditions) -> str | None:
    """The identity of a ProgressDeadlineExceeded condition (its timestamps), or None."""
    for c in conditions or []:
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded":
            return f"{c.last_transition_time}|{c.last_update_time}|{c.message}"
    return None


def deadline_marks(api_client, namespace: str, names: list[str]) -> dict[str, str]:
    """{deployment: its ProgressDeadlineExceeded condition} as it is before an apply."""
    from kubernetes import client

    marks = {}
    for name in names:
        dep = call_api(
            f"Reading deployment {name}", client.AppsV1Api(api_client).read_namespaced_deployment, name, namespace
        )
        mark = _deadline_mark(dep.status.conditions if dep is not None and dep.status else None)
        if mark:
            marks[name] = mark
    return marks


def rollout_state(api_client, namespace: str, name: str, hpa_min: int = 0, stale: str | None = None) -> RolloutState:
    from kubernetes import client

    dep = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    status = dep.status or client.V1DeploymentStatus()
    conditions = status.conditions or []
    observed = (status.observed_generation or 0) >= ((dep.metadata.generation if dep.metadata else 0) or 0)
    mark = _deadline_mark(conditions)
    return RolloutState(
        name=name,
        desired=dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1,
        replicas=status.replicas or 0,
        updated=status.updated_replicas or 0,
        ready=status.ready_replicas or 0,
        available=status.available_replicas or 0,
        observed=observed,
        deadline_exceeded=observed and mark is not None and mark != stale,
        hpa_min=hpa_min,
    )


def hpa_minimums(api_client, namespace: str) -> dict[str, int]:
    """{deployment: minReplicas} of the HPAs in the namespace (empty when none can be read)."""
    from kubernetes import client

    try:
        items = client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(namespace).items
    except Exception:
        return {}
    return {h.spec.scale_target_ref.name: h.spec.min_replicas or 1 for h in items}


def wait_rollout(
    api_client,
    namespace: str,
    names: list[str],
    timeout: float,
    poll: float = 2.0,
    stale: dict[str, str] | None = None,
) -> dict[str, RolloutState]:
    """Wait until every Deployment has rolled out as kubectl means it, at its HPA's minReplicas.

    On timeout (or a ProgressDeadlineExceeded condition) raises DeployError saying what each
    unfinished Deployment waits for and why its pods are not ready (see `diagnosis.diagnose`).
    `stale`: `deadline_marks` from before the apply (those conditions are the last rollout's).
    """
    pending = list(names)
    states: dict[str, RolloutState] = {}
    minimums = hpa_minimums(api_client, namespace)

    def step() -> str:
        """ "done", "stuck" (a progress deadline passed: waiting longer cannot help) or "" (not yet)."""
        for name in list(pending):
            try:
                states[name] = rollout_state(
                    api_client, namespace, name, minimums.get(name, 0), (stale or {}).get(name)
                )
            except Exception as exc:
                raise api_error(exc, f"Reading deployment {name}") from None
            if states[name].done:
                log(f"  [green]✓[/] deployment/{name} rolled out ({states[name].available}/{states[name].desired})")
                pending.remove(name)
        if not pending:
            return "done"
        return "stuck" if any(states[n].deadline_exceeded for n in pending) else ""

    # Polling, not a watch: each round reads Deployments, ReplicaSets and the HPA's minimum together.
    outcome = wait_until(step, timeout, poll, what="the rollout", error=None, first=FIRST_POLL)
    if outcome == "done":
        return states
    problems = diagnosis.diagnose(api_client, namespace)
    waits = "; ".join(f"deployment/{n}: {states[n].waiting_for}" for n in pending)
    detail = "\n".join(problems) if problems else "no pod reports a problem yet (still starting?)"
    why = "exceeded its progress deadline" if outcome == "stuck" else f"did not finish in {timeout:.0f}s"
    raise DeployError(
        f"Rollout of {', '.join(pending)} {why} ({waits}):\n{detail}",
        hint=diagnosis.hint(problems),
    )


# --- what serves, namespaces, metrics -------------------------------------------------------------


def served_versions(api_client, namespace: str, app: str = "pizzactl-model") -> dict[int, int]:
    """{model version: ready pods} of the model server pods: what really answers now."""
    served: dict[int, int] = {}
    for pod in _ready_pods(api_client, namespace, app):
        version = ((pod.metadata.labels if pod.metadata else None) or {}).get(MODEL_VERSION_LABEL, "")
        if version.isdigit():
            served[int(version)] = served.get(int(version), 0) + 1
    return dict(sorted(served.items()))


def held_versions(api_client, namespace: str, app: str = "pizzactl-model") -> set[int]:
    """Every model version the Ready model server pods hold side by side (a canary's stable and
    candidate: their MODEL_VERSIONS_ANNOTATION, else their one MODEL_VERSION_LABEL)."""
    held: set[int] = set()
    for pod in _ready_pods(api_client, namespace, app):
        annotations = (pod.metadata.annotations if pod.metadata else None) or {}
        labels = (pod.metadata.labels if pod.metadata else None) or {}
        text = annotations.get(MODEL_VERSIONS_ANNOTATION) or labels.get(MODEL_VERSION_LABEL, "")
        held |= {int(v) for v in text.split(",") if v.strip().isdigit()}
    return held


def _ready_pods(api_client, namespace: str, app: str) -> list:
    """The app's pods that are Ready and not Terminating."""
    from kubernetes import client

    selector = f"app.kubernetes.io/name={app}"
    try:
        pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector).items
    except Exception as exc:
        raise api_error(exc, f"Listing the pods of {app}") from None
    ready = []
    for pod in pods:
        labels = (pod.metadata.labels if pod.metadata else None) or {}
        if labels.get("app.kubernetes.io/name") != app:  # a selector the API server ignored
            continue
        if pod.metadata and pod.metadata.deletion_timestamp:
            continue  # Terminating: still Ready for its grace period, but out of the Service's endpoints
        if pod.status and diagnosis.pod_ready(pod.status):
            ready.append(pod)
    return ready


FORBIDDEN = "Forbidden"


def namespace_phase(api_client, namespace: str) -> str | None:
    """ "Active", "Terminating", None when there is no such namespace, or FORBIDDEN when this
    identity may not read Namespace objects (a namespace-scoped RoleBinding): it was given a
    namespace that exists and is not pizzactl's."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        ns = client.CoreV1Api(api_client).read_namespace(namespace)
    except ApiException as exc:
        if exc.status in (403, 404):
            return FORBIDDEN if exc.status == 403 else None
        raise api_error(exc, f"Reading namespace {namespace}") from None
    except Exception as exc:
        raise api_error(exc, f"Reading namespace {namespace}") from None
    if (ns.metadata and ns.metadata.deletion_timestamp) or (ns.status and ns.status.phase == "Terminating"):
        return "Terminating"
    return "Active"


def wait_namespace_gone(api_client, namespace: str, timeout: float, poll: float = 1.0) -> None:
    """Wait out a namespace that is still Terminating (a teardown moments ago)."""
    if namespace_phase(api_client, namespace) != "Terminating":
        return
    log(f"Namespace {namespace} is still being deleted (from the last teardown); waiting for it ...")
    # A watch on the namespace (kubernetes.watch) would wake at the deletion instead of polling.
    wait_until(
        lambda: namespace_phase(api_client, namespace) != "Terminating",
        timeout,
        poll,
        what=f"namespace {namespace} to go: it is still being deleted (Terminating)",
        hint=f"Look at what holds it: `kubectl get namespace {namespace} -o yaml` (finalizers); "
        "then deploy again, or use another namespace.",
        error=DeployError,
        first=FIRST_POLL,
    )


def secret_exists(api_client, namespace: str, name: str) -> bool:
    from kubernetes import client

    read = client.CoreV1Api(api_client).read_namespaced_secret
    return _call(f"Reading secret {namespace}/{name}", read, name, namespace) is not _MISSING


def metrics_available(api_client) -> bool:
    """Whether the cluster serves metrics.k8s.io (metrics-server): without it HPAs never scale on CPU."""
    return metrics_api(api_client).available


METRICS_APISERVICE = "v1beta1.metrics.k8s.io"


@dataclass(frozen=True)
class MetricsApi:
    """metrics.k8s.io as the HPAs meet it. Listed in discovery is not enough: the aggregator
    lists an APIService whatever its state, and a metrics-server that is installed but failing
    (on kind: without --kubelet-insecure-tls) has Available=False (kube-aggregator's
    available_controller.go: MissingEndpoints, FailedDiscoveryCheck, ServiceNotFound)."""

    listed: bool
    available: bool
    reason: str = ""  # the APIService's Available reason when it is not True
    message: str = ""


def metrics_api(api_client) -> MetricsApi:
    """Whether metrics.k8s.io is listed and its APIService Available (listed counts as available
    when the APIService cannot be read, e.g. a namespace-scoped identity)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        groups = client.ApisApi(api_client).get_api_versions().groups or []
    except Exception as exc:
        raise api_error(exc, "Listing the API groups") from None
    if not any(g.name == "metrics.k8s.io" for g in groups):
        return MetricsApi(listed=False, available=False)
    try:
        service = client.ApiregistrationV1Api(api_client).read_api_service(METRICS_APISERVICE)
    except ApiException:
        return MetricsApi(listed=True, available=True)  # cannot tell: trust the listing
    for condition in (service.status.conditions if service.status else None) or []:
        if condition.type == "Available":
            if condition.status == "True":
                return MetricsApi(listed=True, available=True)
            return MetricsApi(True, False, condition.reason or "Unavailable", condition.message or "")
    return MetricsApi(True, False, "NoAvailableCondition", "the aggregator has not checked it yet")


def hpa_scaling_problems(api_client, namespace: str) -> list[str]:
    """The HPAs that say they cannot scale (ScalingActive=False: "hpa: reason: message"); [] when
    none does or they cannot be read. Right after a first deploy an HPA may not have read
    metrics yet, so this adds to the APIService check, it does not replace it."""
    from kubernetes import client

    try:
        items = client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(namespace).items
    except Exception:
        return []
    problems = []
    for hpa in items:
        name = hpa.metadata.name if hpa.metadata else "hpa"
        for c in (hpa.status.conditions if hpa.status else None) or []:
            if c.type == "ScalingActive" and c.status == "False":
                problems.append(f"{name}: {c.reason}: {c.message or ''}".rstrip(": "))
    return problems


def node_architectures_if_allowed(api_client) -> set[str] | None:
    """`node_architectures`, or None when this identity may not list nodes (namespace-scoped)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        nodes = client.CoreV1Api(api_client).list_node().items
    except ApiException as exc:
        if exc.status == 403:
            return None
        raise api_error(exc, "Listing nodes") from None
    except Exception as exc:
        raise api_error(exc, "Listing nodes") from None
    return {n.status.node_info.architecture for n in nodes if n.status and n.status.node_info}


def node_architectures(api_client) -> set[str]:
    """The CPU architectures of the cluster's nodes ("amd64", "arm64")."""
    from kubernetes import client

    try:
        nodes = client.CoreV1Api(api_client).list_node().items
    except Exception as exc:
        raise api_error(exc, "Listing nodes") from None
    return {n.status.node_info.architecture for n in nodes if n.status and n.status.node_info}


# --- status and teardown ------------------------------------------------------------------------


def deployments_status(api_client, namespace: str, names: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in names:
        try:
            result[name] = rollout_state(api_client, namespace, name).as_dict()
        except Exception as exc:
            from kubernetes.client.exceptions import ApiException

            result[name] = {
                "error": "not found" if isinstance(exc, ApiException) and exc.status == 404 else f"{type(exc).__name__}"
            }
    return result


def delete_namespace(api_client, namespace: str) -> bool:
    """Delete the namespace (and so everything in it); False when it was already gone.

    It stays Terminating for a while; the next deploy waits that out (`wait_namespace_gone`).
    """
    from kubernetes import client

    delete = client.CoreV1Api(api_client).delete_namespace
    return _call(f"Deleting namespace {namespace}", delete, namespace, propagation_policy="Foreground") is not _MISSING


def delete_objects(api_client, docs: list[dict[str, Any]]) -> list[str]:
    """Delete the namespaced objects pizzactl applied, leaving their namespace; returns what went."""
    deleted = []
    for doc in reversed(docs):
        kind, meta = doc["kind"], doc["metadata"]
        if kind == "Namespace":
            continue
        delete, _ = _method(api_client, kind, "delete")
        doing = f"Deleting {kind}/{meta['name']}"
        if _call(doing, delete, meta["name"], meta["namespace"], propagation_policy="Foreground") is not _MISSING:
            deleted.append(f"{kind}/{meta['name']}")
    return deleted


def gateway_url(api_client, namespace: str, service: str = "pizzactl-gateway") -> str | None:
    """Where the gateway Service answers from outside the cluster, as far as the API can tell.

    A LoadBalancer with an address: http://ADDRESS:PORT. Otherwise a NodePort on the first node
    with an ExternalIP (else an InternalIP, reachable from the cluster's own network):
    http://NODE:NODEPORT. None when the Service has neither.
    """
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    try:
        svc = core.read_namespaced_service(service, namespace)
    except Exception as exc:
        raise api_error(exc, f"reading Service {namespace}/{service}") from None
    spec = svc.spec or client.V1ServiceSpec()
    ports = list(spec.ports or [])
    if not ports:
        return None
    ingress = (svc.status.load_balancer.ingress if svc.status and svc.status.load_balancer else None) or []
    if spec.type == "LoadBalancer" and ingress:
        address = ingress[0].ip or ingress[0].hostname
        port = ports[0].port
        return f"http://{address}" + ("" if port == 80 else f":{port}")
    node_port = ports[0].node_port
    if not node_port:
        return None
    try:
        nodes = core.list_node().items
    except Exception as exc:
        raise api_error(exc, "listing nodes") from None
    for kind in ("ExternalIP", "InternalIP"):
        for node in nodes:
            for entry in (node.status.addresses if node.status else None) or []:
                if entry.type == kind and entry.address:
                    host = f"[{entry.address}]" if ":" in entry.address else entry.address
                    return f"http://{host}:{node_port}"
    return None
