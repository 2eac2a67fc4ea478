"""Watch a training Job the way a person at `kubectl` would, and say why when it goes wrong.

`follow` streams the log of the Job's running pod, reports each failed attempt as it happens
(out of memory, an exit code, a lost node) and returns when the Job is Complete. It reads what
the Job controller writes (kubernetes.io/docs/concepts/workloads/controllers/job): the terminal
conditions Complete and Failed, with reasons BackoffLimitExceeded, DeadlineExceeded and
PodFailurePolicy; pods labelled batch.kubernetes.io/job-name; a container's terminated state
(OOMKilled is exit code 137); the DisruptionTarget condition of a pod evicted from a lost node
(reason DeletionByTaintManager). A pod that cannot start never fails a Job by itself: it waits
for a node forever (FailedScheduling, e.g. "Insufficient nvidia.com/gpu"), an image pull backs
off forever. `follow` raises `JobCannotStart` for those (at once when waiting cannot help, after
`start_timeout` otherwise), and the caller stops the Job.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any

from pizzactl.console import log
from pizzactl.errors import TrainingError
from pizzactl.kube import diagnosis, k8s
from pizzactl.kube.diagnosis import start_problem
from pizzactl.kube.training import CONTAINER, job_pods, terminal


class JobCannotStart(TrainingError):
    """The Job's pod cannot start (no node fits it, its image cannot be pulled): stop the Job."""


def follow(
    api_client,
    namespace: str,
    job: str,
    *,
    start_timeout: float = 600.0,
    poll: float = 1.0,
    write: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Stream the Job's logs (to `write`, default stderr) until it completes; {"attempts": n, ...}.
    TrainingError says why it failed."""
    from kubernetes import client

    write = write or _to_stderr
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    printed: dict[str, int] = {}
    reported: set[str] = set()
    waiting_since: dict[str, float] = {}
    said: set[str] = set()
    seen: set[str] = set()
    # Not `files.wait_until`: no timeout (the Job's activeDeadlineSeconds ends it) and each round
    # streams logs. A watch on the Job and its pods (kubernetes.watch) would replace the polling.
    while True:
        obj = k8s.call_api(f"Reading job {job}", batch.read_namespaced_job, job, namespace)
        if obj is None:
            raise TrainingError(f"The Job {job} was deleted while it ran.", hint="Start the training again.")
        pods = k8s.call_api(f"Listing the pods of job {job}", job_pods, core, namespace, job) or []
        for pod in pods:
            if pod.status and pod.status.phase == "Failed" and pod.metadata.name not in reported:
                reported.add(pod.metadata.name)
                log(f"[yellow]Attempt {len(reported)} ({pod.metadata.name}) failed: {pod_failure(pod)}.[/]")
        current = {p.metadata.name for p in pods}
        # Deleted before it was seen failing: the ones seen before, and the ones an eviction event names.
        for name in sorted((seen | evicted(core, namespace, job)) - current - reported):
            reported.add(name)
            log(f"[yellow]Attempt {len(reported)} ({name}) is gone: {vanished(core, namespace, name)}.[/]")
        seen |= current
        condition = terminal(obj)
        if condition is not None:
            for pod in pods:
                _stream(core, namespace, pod.metadata.name, printed, write, live=False)
            if condition.type == "Complete":
                return {"attempts": len(pods), "failed_attempts": len(reported)}
            raise TrainingError(*explain(obj, condition, pods, core, namespace))
        running = [p for p in pods if p.status and p.status.phase == "Running"]
        if running:
            _stream(core, namespace, running[-1].metadata.name, printed, write, live=True)
            continue
        for pod in pods:
            if pod.status and pod.status.phase == "Pending":
                _check_start(core, namespace, pod, waiting_since, said, start_timeout)
        time.sleep(poll)


def _to_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _stream(core, namespace: str, pod: str, printed: dict[str, int], write, *, live: bool) -> None:
    """Write the pod's log lines not written yet; live: follow the log until the container exits."""
    skip = printed.get(pod, 0)
    try:
        if live:
            response = core.read_namespaced_pod_log(
                pod, namespace, container=CONTAINER, follow=True, _preload_content=False
            )
            chunks = response.stream(4096)
        else:
            chunks = iter([str(core.read_namespaced_pod_log(pod, namespace, container=CONTAINER) or "").encode()])
        buffered = b""
        for chunk in chunks:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                skip = _emit(line, pod, printed, skip, write)
        if buffered:
            _emit(buffered, pod, printed, skip, write)
    except Exception:  # the log is gone with its node, or the stream broke: the next round reads on
        if live:
            time.sleep(1.0)


def _emit(line: bytes, pod: str, printed: dict[str, int], skip: int, write) -> int:
    if skip > 0:
        return skip - 1
    write(line.decode(errors="replace") + "\n")
    printed[pod] = printed.get(pod, 0) + 1
    return 0


# --- why a pod does not start -------------------------------------------------------------------


def _check_start(core, namespace: str, pod, waiting_since: dict[str, float], said: set[str], timeout: float) -> None:
    name = pod.metadata.name
    since = waiting_since.setdefault(name, time.monotonic())
    problem, hopeless, hint = start_problem(core, namespace, pod)
    if problem is None:
        return
    if hopeless or time.monotonic() - since >= timeout:
        waited = "" if hopeless else f" for {timeout:.0f}s"
        raise JobCannotStart(f"The training pod {name} cannot start{waited}: {problem}", hint=hint)
    if problem not in said:
        said.add(problem)
        log(f"[yellow]Waiting for the training pod to start: {problem}[/]")


# --- why a pod or the Job failed -------------------------------------------------------------------


def _terminated(pod):
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == CONTAINER and cs.state and cs.state.terminated:
            return cs.state.terminated
    return None


def _memory_limit(pod) -> str | None:
    for container in pod.spec.containers or []:
        if container.name == CONTAINER and container.resources and container.resources.limits:
            return container.resources.limits.get("memory")
    return None


RETRIED = "the Job starts it again; disruptions do not count against backoffLimit"


def pod_failure(pod) -> str:
    """Why one attempt failed, in a phrase."""
    for condition in pod.status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return f"its node went away or it was evicted ({condition.reason}: {condition.message or 'disrupted'}); {RETRIED}"
    terminated = _terminated(pod)
    if terminated is not None and terminated.reason == "OOMKilled":
        return f"out of memory (OOMKilled, exit code {terminated.exit_code}) at its limit of {_memory_limit(pod)}"
    if terminated is not None:
        return f"exit code {terminated.exit_code} ({terminated.reason or 'Error'})"
    return pod.status.message or pod.status.reason or "failed"


EVICTIONS = ("TaintManagerEviction", "Evicted", "Preempted", "Preempting")


def evicted(core, namespace: str, job: str) -> set[str]:
    """The Job's pods that an eviction event names (the taint manager deletes the pods of a lost
    node, the kubelet or the Eviction API evicts, the scheduler preempts): a pod can be gone
    before a poll ever lists it."""
    return {
        e.involved_object.name
        for e in diagnosis.list_events(core, namespace)
        if e.reason in EVICTIONS and e.involved_object and (e.involved_object.name or "").startswith(f"{job}-")
    }


def vanished(core, namespace: str, pod: str) -> str:
    """Why a pod was deleted under a running Job, from its events."""
    mine = [e for e in diagnosis.list_events(core, namespace) if e.involved_object and e.involved_object.name == pod]
    why = [f"{e.reason}: {e.message}" for e in mine if e.reason in EVICTIONS]
    return f"{why[-1]}; {RETRIED}" if why else "deleted (the Job ended it, or someone did)"


def explain(job, condition, pods: list, core, namespace: str) -> tuple[str, str]:
    """(message, hint) for a Failed Job."""
    reason = condition.reason or ""
    name = job.metadata.name
    failed = [p for p in pods if p.status and p.status.phase == "Failed"]
    last = failed[-1] if failed else None
    if reason == "DeadlineExceeded":
        deadline = job.spec.active_deadline_seconds
        return (
            f"The Job {name} ran longer than its deadline of {deadline}s (activeDeadlineSeconds) and was stopped.",
            "Give it more time (--deadline SECONDS) or make it faster: --gpus 1, fewer --epochs, a smaller backbone.",
        )
    oom = [p for p in failed if (_terminated(p) is not None and _terminated(p).reason == "OOMKilled")]
    if oom:
        limit = _memory_limit(oom[-1])
        return (
            f"The Job {name} failed: the trainer ran out of memory (OOMKilled, exit code 137) at its limit of "
            f"{limit}, on {len(oom)} of {len(failed)} attempts.",
            f"Raise the limit (e.g. --memory {_doubled(limit)}) or lower --batch-size.",
        )
    lines = diagnosis.last_log_lines(core, namespace, last.metadata.name, CONTAINER) if last is not None else []
    tail = ("; its last log lines:\n" + "\n".join("    " + line for line in lines[-10:])) if lines else ""
    what = pod_failure(last) if last is not None else (condition.message or reason)
    if reason == "PodFailurePolicy":
        return (
            f"The Job {name} failed without retrying: the trainer stopped with {what}, a usage error{tail}",
            "Fix the setting the error names, then train again.",
        )
    return (
        f"The Job {name} failed ({reason}: {condition.message or ''}); the last attempt: {what}{tail}",
        f"`kubectl logs -n {namespace} job/{name}` shows the whole log.",
    )


def _doubled(limit: str | None) -> str:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(limit or ""))
    return f"{int(match.group(1)) * 2}{match.group(2)}" if match else "8Gi"
