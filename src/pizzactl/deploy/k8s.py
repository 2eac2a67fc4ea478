"""Talk to a Kubernetes cluster with the official Python client: apply, wait, explain, delete.

Objects are applied with server-side apply (field manager `pizzactl`, conflicts forced), as
`kubectl apply --server-side` does, so re-deploying is idempotent and fields other tools own
(e.g. an HPA's replica count) are left alone. When a rollout does not finish in time,
`diagnose` says why in the user's terms: an image that cannot be pulled, a container that
crashes (with its last log lines), a pod that cannot be scheduled (with its events).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pizzactl.console import log
from pizzactl.deploy.manifests import FIELD_MANAGER
from pizzactl.errors import DeployError

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
LOG_LINES = 20


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


def _api_error(exc: Exception, doing: str) -> DeployError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        reason = exc.reason or ""
        try:
            import json

            reason = json.loads(exc.body or "{}").get("message") or reason
        except ValueError:
            pass
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


def _patcher(api_client, kind: str) -> tuple[Callable[..., Any], bool]:
    """The typed PATCH method for a kind, and whether the kind is namespaced."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    table: dict[str, tuple[Callable[..., Any], bool]] = {
        "Namespace": (core.patch_namespace, False),
        "Service": (core.patch_namespaced_service, True),
        "ConfigMap": (core.patch_namespaced_config_map, True),
        "ServiceAccount": (core.patch_namespaced_service_account, True),
        "Deployment": (client.AppsV1Api(api_client).patch_namespaced_deployment, True),
        "HorizontalPodAutoscaler": (
            client.AutoscalingV2Api(api_client).patch_namespaced_horizontal_pod_autoscaler,
            True,
        ),
        "PodDisruptionBudget": (client.PolicyV1Api(api_client).patch_namespaced_pod_disruption_budget, True),
    }
    if kind not in table:
        raise DeployError(f"pizzactl cannot apply objects of kind {kind}.", hint="Remove it from k8s/.")
    return table[kind]


def apply(api_client, docs: list[dict[str, Any]]) -> list[str]:
    """Server-side apply every object (in order); returns "Kind/name" for each."""
    applied = []
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        patch, namespaced = _patcher(api_client, kind)
        kwargs = dict(body=doc, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_CONTENT_TYPE)
        try:
            if namespaced:
                patch(meta["name"], meta["namespace"], **kwargs)
            else:
                patch(meta["name"], **kwargs)
        except Exception as exc:
            raise _api_error(exc, f"Applying {kind}/{meta['name']}") from None
        applied.append(f"{kind}/{meta['name']}")
        log(f"  applied {kind}/{meta['name']}")
    return applied


# --- rollout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutState:
    name: str
    desired: int
    updated: int
    ready: int
    available: int
    observed: bool

    @property
    def done(self) -> bool:
        return (
            self.observed
            and self.updated >= self.desired
            and self.available >= self.desired
            and self.ready >= self.desired
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "updated": self.updated,
            "ready": self.ready,
            "available": self.available,
            "done": self.done,
        }


def rollout_state(api_client, namespace: str, name: str) -> RolloutState:
    from kubernetes import client

    dep = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    status = dep.status or client.V1DeploymentStatus()
    desired = dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1
    generation = (dep.metadata.generation if dep.metadata else None) or 0
    return RolloutState(
        name=name,
        desired=desired,
        updated=status.updated_replicas or 0,
        ready=status.ready_replicas or 0,
        available=status.available_replicas or 0,
        observed=(status.observed_generation or 0) >= generation,
    )


def wait_rollout(
    api_client, namespace: str, names: list[str], timeout: float, poll: float = 2.0
) -> dict[str, RolloutState]:
    """Wait until every Deployment has its desired replicas updated and available.

    On timeout raises DeployError whose message says why (see `diagnose`).
    """
    deadline = time.monotonic() + timeout
    pending = list(names)
    states: dict[str, RolloutState] = {}
    while True:
        for name in list(pending):
            try:
                states[name] = rollout_state(api_client, namespace, name)
            except Exception as exc:
                raise _api_error(exc, f"Reading deployment {name}") from None
            if states[name].done:
                log(f"  [green]✓[/] deployment/{name} rolled out ({states[name].available}/{states[name].desired})")
                pending.remove(name)
        if not pending:
            return states
        if time.monotonic() >= deadline:
            problems = diagnose(api_client, namespace)
            detail = "\n".join(problems) if problems else "no pod reports a problem yet (still starting?)"
            raise DeployError(
                f"Rollout of {', '.join(pending)} did not finish in {timeout:.0f}s:\n{detail}",
                hint=_diagnosis_hint(problems),
            )
        time.sleep(poll)


def _diagnosis_hint(problems: list[str]) -> str:
    text = "\n".join(problems)
    if "cannot be pulled" in text:
        return (
            "kind: the image must be loaded into the cluster (`kind load docker-image IMAGE --name pizzactl`); "
            "other clusters: push it with --registry and check the pull secret."
        )
    if "crashing" in text:
        return "Fix the error in the log lines above; `kubectl logs -n pizzactl deploy/pizzactl-model` shows more."
    if "Pending" in text:
        return "The cluster lacks room (see the events above): free resources or lower the requests in k8s/."
    return "Run `kubectl get pods,events -n pizzactl` and retry with a longer --timeout."


# --- diagnosis ----------------------------------------------------------------------------------


def diagnose(api_client, namespace: str) -> list[str]:
    """One line (or block) per pod that is not ready, saying why in plain words."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    try:
        pods = core.list_namespaced_pod(namespace).items
    except Exception as exc:
        return [f"(cannot list pods: {type(exc).__name__})"]
    events = None
    problems: list[str] = []
    for pod in pods:
        name = (pod.metadata.name if pod.metadata else None) or "?"
        status = pod.status or client.V1PodStatus()
        if _pod_ready(status):
            continue
        found = False
        for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
            waiting = cs.state.waiting if cs.state else None
            terminated = (cs.last_state.terminated if cs.last_state else None) or (
                cs.state.terminated if cs.state else None
            )
            if waiting and waiting.reason in (
                "ImagePullBackOff",
                "ErrImagePull",
                "InvalidImageName",
                "ErrImageNeverPull",
            ):
                problems.append(
                    f"pod {name}: image {cs.image} cannot be pulled ({waiting.reason}): {waiting.message or ''}".rstrip(
                        ": "
                    )
                )
                found = True
            elif waiting and waiting.reason in ("CrashLoopBackOff", "CreateContainerConfigError", "RunContainerError"):
                why = f"exit code {terminated.exit_code}, {terminated.reason}" if terminated else waiting.reason
                lines = _last_log_lines(core, namespace, name, cs.name)
                block = f"pod {name}: container {cs.name} is crashing ({waiting.reason}; {why})"
                if lines:
                    block += "; its last log lines:\n" + "\n".join("    " + line for line in lines)
                problems.append(block)
                found = True
            elif terminated and terminated.reason == "OOMKilled":
                problems.append(
                    f"pod {name}: container {cs.name} ran out of memory (OOMKilled): raise its memory limit."
                )
                found = True
        if not found and status.phase == "Pending":
            if events is None:
                events = _events(core, namespace)
            mine = [e for e in events if e.involved_object and e.involved_object.name == name]
            conds = [c for c in (status.conditions or []) if c.type == "PodScheduled" and c.status == "False"]
            lines = [f"{e.reason}: {e.message}" for e in mine[-5:]] or [f"{c.reason}: {c.message}" for c in conds]
            block = f"pod {name} is Pending"
            if lines:
                block += "; events:\n" + "\n".join("    " + line for line in lines)
            problems.append(block)
    return problems


def _pod_ready(status) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))


def _events(core, namespace: str) -> list:
    try:
        items = core.list_namespaced_event(namespace).items
    except Exception:
        return []
    return sorted(items, key=lambda e: str(e.last_timestamp or e.event_time or ""))


def _last_log_lines(core, namespace: str, pod: str, container: str) -> list[str]:
    for previous in (True, False):
        try:
            text = core.read_namespaced_pod_log(
                pod, namespace, container=container, previous=previous, tail_lines=LOG_LINES
            )
        except Exception:
            continue
        lines = [line for line in str(text or "").splitlines() if line.strip()]
        if lines:
            return lines[-LOG_LINES:]
    return []


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


def delete_namespace(api_client, namespace: str, wait: float = 0.0) -> bool:
    """Delete the namespace (and so everything in it); False when it was already gone."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    try:
        core.delete_namespace(namespace, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise _api_error(exc, f"Deleting namespace {namespace}") from None
    except Exception as exc:
        raise _api_error(exc, f"Deleting namespace {namespace}") from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                break
        time.sleep(1)
    return True


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
        raise _api_error(exc, f"reading Service {namespace}/{service}") from None
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
        raise _api_error(exc, "listing nodes") from None
    for kind in ("ExternalIP", "InternalIP"):
        for node in nodes:
            for entry in (node.status.addresses if node.status else None) or []:
                if entry.type == kind and entry.address:
                    host = f"[{entry.address}]" if ":" in entry.address else entry.address
                    return f"http://{host}:{node_port}"
    return None
