"""Why pods are not ready, in the user's terms: from container states, events and log lines.

A kubelet records the reason a pod does not become ready in its container states
(waiting/terminated reasons) and in events (Unhealthy, FailedScheduling, FailedCreate on the
ReplicaSet). `diagnose` reads them the way a person would with `kubectl describe` and `kubectl
logs --previous`, for the deploy rollout (k8s.wait_rollout) and the training Job (job_watch).
"""

from __future__ import annotations

import re

from pizzactl.kube.capacity import GPU

LOG_LINES = 20

PULL_HINT = (
    "kind: the image must be loaded into the cluster (`kind load docker-image IMAGE --name pizzactl`); "
    "other clusters: push it with --registry and check the pull secret (--pull-secret)."
)


def hint(problems: list[str]) -> str:
    """What to do about the problems `diagnose` found (the first kind that applies)."""
    text = "\n".join(problems)
    if "cannot be pulled" in text:
        return PULL_HINT
    if "crashing" in text or "cannot start" in text:
        return "Fix the error in the log lines above; `kubectl logs -n pizzactl deploy/pizzactl-model` shows more."
    if "not ready" in text:
        return "The server runs but fails its readiness probe: `kubectl logs -n pizzactl POD` says why."
    if "Pending" in text or "FailedCreate" in text:
        return "The cluster lacks room or refuses the pods (see the events above): free resources or fix k8s/."
    return "Run `kubectl get pods,events -n pizzactl` and retry with a longer --timeout."


_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
_START_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Pull errors that no amount of waiting fixes (the kubelet's messages for a missing image or no access).
HOPELESS_PULL = re.compile(
    r"not found|pull access denied|unauthorized|denied|manifest unknown|InvalidImageName|NeverPull"
)


def diagnose(api_client, namespace: str) -> list[str]:
    """One line (or block) per pod that is not ready, saying why in plain words; and the
    ReplicaSets that cannot create pods at all (FailedCreate events)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    try:
        pods = core.list_namespaced_pod(namespace).items
    except Exception as exc:
        return [f"(cannot list pods: {type(exc).__name__})"]
    events = list_events(core, namespace)
    problems = [
        f"replicaset {e.involved_object.name}: FailedCreate: {e.message}" for e in _latest(events, "FailedCreate")
    ]
    for pod in pods:
        status = pod.status or client.V1PodStatus()
        if status.phase == "Succeeded" or (pod.metadata and pod.metadata.deletion_timestamp):
            continue  # finished (a completed training Job's pod) or going away: nothing to fix
        if not pod_ready(status):
            problems.append(_pod_problem(core, namespace, pod, events))
    return problems


def _latest(events: list, reason: str) -> list:
    """The newest event of `reason` per object."""
    by_object = {e.involved_object.name: e for e in events if e.reason == reason and e.involved_object}
    return list(by_object.values())


def _pod_problem(core, namespace: str, pod, events: list) -> str:
    """Why one pod is not ready, from its container states and events (as a kubelet writes them)."""
    name = pod.metadata.name
    status = pod.status
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        terminated = (cs.last_state.terminated if cs.last_state else None) or (
            cs.state.terminated if cs.state else None
        )
        if waiting and waiting.reason in _PULL_REASONS:
            return f"pod {name}: image {cs.image} cannot be pulled ({waiting.reason}): {waiting.message or ''}".rstrip(
                ": "
            )
        if waiting and waiting.reason in _START_REASONS:
            return f"pod {name}: container {cs.name} cannot start ({waiting.reason}): {waiting.message or ''}".rstrip(
                ": "
            )
        if waiting and waiting.reason == "CrashLoopBackOff":
            why = f"exit code {terminated.exit_code}, {terminated.reason}" if terminated else waiting.reason
            block = f"pod {name}: container {cs.name} is crashing ({waiting.reason}; {why})"
            lines = last_log_lines(core, namespace, name, cs.name)
            if lines:
                block += "; its last log lines:\n" + "\n".join("    " + line for line in lines)
            return block
        if terminated and terminated.reason == "OOMKilled":
            return f"pod {name}: container {cs.name} ran out of memory (OOMKilled): raise its memory limit."
    mine = [e for e in events if e.involved_object and e.involved_object.name == name]
    if status.phase == "Running":
        probes = [e.message for e in mine if e.reason == "Unhealthy"]
        return f"pod {name} is running but not ready" + (f": {probes[-1]}" if probes else "")
    conds = [c for c in (status.conditions or []) if c.type == "PodScheduled" and c.status == "False"]
    lines = [f"{e.reason}: {e.message}" for e in mine[-5:]] or [f"{c.reason}: {c.message}" for c in conds]
    return f"pod {name} is {status.phase or 'Pending'}" + (
        "; events:\n" + "\n".join("    " + x for x in lines) if lines else ""
    )


def pod_ready(status) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))


def list_events(core, namespace: str) -> list:
    """The namespace's events, oldest first ([] when they cannot be read)."""
    try:
        items = core.list_namespaced_event(namespace).items
    except Exception:
        return []
    return sorted(items, key=lambda e: str(e.last_timestamp or e.event_time or ""))


def last_log_lines(core, namespace: str, pod: str, container: str) -> list[str]:
    """The container's last LOG_LINES log lines (of its previous run if it restarted)."""
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


# --- why a pod does not start -------------------------------------------------------------------


def start_problem(core, namespace: str, pod) -> tuple[str | None, bool, str]:
    """(what keeps the pod from starting, whether waiting is hopeless, what to do) or (None, False, "")."""
    status = pod.status
    for cs in status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting and waiting.reason in _PULL_REASONS:
            text = f"image {cs.image} cannot be pulled ({waiting.reason}): {waiting.message or ''}".rstrip(": ")
            hopeless = bool(HOPELESS_PULL.search(f"{waiting.reason} {waiting.message or ''}"))
            return text, hopeless, PULL_HINT
        if waiting and waiting.reason in ("CreateContainerConfigError", "CreateContainerError"):
            return (
                f"{waiting.reason}: {waiting.message or ''}".rstrip(": "),
                True,
                "A Secret or ConfigMap the pod needs is missing: run the training again (pizzactl creates them).",
            )
    unscheduled = [c for c in status.conditions or [] if c.type == "PodScheduled" and c.status == "False"]
    if not unscheduled:
        return None, False, ""
    mine = [
        e for e in list_events(core, namespace) if e.involved_object and e.involved_object.name == pod.metadata.name
    ]
    scheduling = [e.message for e in mine if e.reason == "FailedScheduling"]
    message = scheduling[-1] if scheduling else (unscheduled[0].message or unscheduled[0].reason or "unschedulable")
    return f"FailedScheduling: {message}", False, _scheduling_hint(message)


def _scheduling_hint(message: str) -> str:
    if "volume node affinity conflict" in message:
        return (
            "The training volume was created in another zone (or on another node) than the nodes this Job may "
            "use, by an earlier run on other nodes: `pizzactl teardown` deletes it (the uploaded data and cache "
            "with it), and the next run creates it where the Job runs."
        )
    if GPU in message:
        return (
            f"No node offers a free {GPU}: add a GPU node pool with the NVIDIA device plugin "
            "(GKE, EKS and AKS GPU nodes have it), point --node-selector/--toleration at your GPU nodes, "
            "or train without --gpus."
        )
    if "Insufficient memory" in message or "Insufficient cpu" in message:
        return "No node has that much free: ask for less with --memory / --cpu, or add a bigger node."
    if "unbound immediate PersistentVolumeClaims" in message or "PersistentVolumeClaim" in message:
        return (
            "The training volume cannot be provisioned: the cluster needs a default StorageClass "
            "(`kubectl get storageclass`; kind has one called standard)."
        )
    if "node affinity/selector" in message or "untolerated taint" in message:
        return "No node matches --node-selector, or their taints are not tolerated: check --node-selector and --toleration."
    return "See `kubectl describe pod -n pizzactl` for the scheduler's reasons."
