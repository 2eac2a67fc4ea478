"""The cluster side of training, faked at the Kubernetes API: Jobs, scheduling, volumes, exec, logs.

`TrainingCluster` extends `FakeCluster` (tests/support/k8s_fakes.py) with what `train --on kind|CONTEXT`
meets in a real cluster, one `step()` at a time:

- Job controller (kubernetes.io/docs/concepts/workloads/controllers/job): one pod at a time from
  the template, labelled batch.kubernetes.io/job-name and job-name; a failed pod is replaced
  until status.failed exceeds spec.backoffLimit, then the Job gets FailureTarget and, a step
  later, Failed with reason BackoffLimitExceeded ("Job has reached the specified backoff
  limit"); spec.activeDeadlineSeconds (simulated seconds: `step_seconds` per step) fails it with
  DeadlineExceeded ("Job was active longer than specified deadline") and stops its pods; a
  Succeeded pod completes it (SuccessCriteriaMet, then Complete). spec.podFailurePolicy as in
  kubernetes.io/docs/tasks/job/pod-failure-policy: FailJob onExitCodes (reason PodFailurePolicy,
  "Container train for pod NS/NAME failed with exit code 2 matching FailJob rule at index 0")
  and Ignore onPodConditions DisruptionTarget (replaced without counting). A Job deleted
  without propagationPolicy orphans its pods (the API's default for batch/v1 Jobs; the Job docs'
  note on ttlSecondsAfterFinished); Background or Foreground deletes them.
- scheduler (for Job, bare and Deployment pods alike): node allocatable CPU, memory and
  nvidia.com/gpu minus what bound pods request,
  nodeSelector, taints and tolerations, unbound PVCs; an unschedulable pod stays Pending with
  PodScheduled=False/Unschedulable and a FailedScheduling event in kube-scheduler's words: "0/1
  nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: 1 No
  preemption victims found for incoming pod.." (NVIDIA/k8s-device-plugin#430).
  A model server pod asking 250m CPU of a node with less stays Pending the same way: "0/1
  nodes are available: 1 Insufficient cpu. ..." (kube-scheduler's NodeResourcesFit).
- volumes: a PVC of the default class binds when its first pod is scheduled (kind's "standard"
  class is WaitForFirstConsumer, kubernetes-sigs/kind#2243); without a storage class it stays
  Pending (FailedBinding) and its pods are unschedulable ("pod has unbound immediate
  PersistentVolumeClaims"). A bound volume is a folder under `volumes/`; it is created in the
  zone (topology.kubernetes.io/zone) of that first pod's node and pods that use it fit only
  nodes of that zone ("node(s) had volume node affinity conflict", as zonal disks do:
  kubernetes.io/docs/concepts/storage/storage-classes/#volume-binding-mode).
- kubelet for Job and bare pods: images not loaded into kind cannot be pulled (ErrImagePull);
  an env or envFrom Secret that does not exist is CreateContainerConfigError ('secret "X" not
  found'); a trainer logs one epoch per step; more memory needed (`needs_memory`) than its limit
  is OOMKilled, exit code 137, phase Failed (docs.redhat.com, "Diagnosing an OOM kill"); a lost
  node (`attempts=[LOSE_NODE, ...]`) evicts it: DisruptionTarget=True, reason
  DeletionByTaintManager, "Taint manager: deleting due to NoExecute taint", a
  TaintManagerEviction event, phase Failed, and a step later the pod is gone.
- pods/exec over a websocket (v5/v4.channel.k8s.io: channel 0 stdin, 1 stdout, 2 stderr, 3 the
  Status, 255 v5's close; a non-zero exit is reason NonZeroExitCode with the code in
  details.causes, as kubernetes/kubernetes#61346 asked and the Python client parses): the command
  really runs here, its mount paths mapped to the volume folders.
  The connection is closed right after the Status, without waiting for the client's close
  frame, as the API server's websocket libraries do: a client still sending stdin gets a broken
  connection. With `volume_bytes` set the volume is full past that size: `tar -x` and `mkdir`
  fail as GNU tar and coreutils do on a full ext4 volume (FULL_VOLUME_TOOLS).
- pod logs: `follow=true` streams until the container ends; `previous=true` on a pod that never
  restarted is 400, as the kubelet answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import kmock

from support.k8s_fakes import (
    EVENTS,
    NODES,
    PODS,
    SECRETS,
    FakeCluster,
    failure_status,
    get_or_none,
    is_terminating,
    plain_json,
    pod_admission,
)

JOBS = kmock.resource("batch/v1/jobs")
PVCS = kmock.resource("v1/persistentvolumeclaims")
POD_LOG_URL = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
EXEC_URL = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec$")
JOB_URL = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)$")
JOB_LABEL = "batch.kubernetes.io/job-name"
GPU = "nvidia.com/gpu"
ZONE = "topology.kubernetes.io/zone"
SUCCEED, LOSE_NODE, USAGE, HANG = "succeed", "lose-node", "usage", "hang"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "m": 1e-3, "": 1}


def quantity(text) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * _UNITS[unit]


def node(
    name: str = "pizzactl-control-plane", *, cpu="4", memory="8Gi", gpus=0, labels=None, taints=None, zone=None
) -> dict:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64", **(labels or {})}
    if zone:
        labels[ZONE] = zone
    allocatable = {"cpu": str(cpu), "memory": str(memory), "pods": "110", **({GPU: str(gpus)} if gpus else {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": list(taints or [])},
        "status": {
            "allocatable": allocatable,
            "capacity": dict(allocatable),
            "nodeInfo": {  # every field is required in the API schema
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "kernelVersion": "6.8.0",
                "kubeletVersion": "v1.32.2",
                "kubeProxyVersion": "v1.32.2",
                "containerRuntimeVersion": "containerd://2.0.2",
                "machineID": "0",
                "systemUUID": "0",
                "bootID": "0",
            },
            "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class TrainingCluster(FakeCluster):
    """FakeCluster + Job controller, scheduler, volumes, exec and log streaming (module docstring).

    trainer(host_out, container_out, env, host_data) writes what `pizzactl train` would into the
    Job's output folder when an attempt succeeds. `attempts` scripts attempt outcomes in order
    (SUCCEED, LOSE_NODE, USAGE, HANG); later attempts succeed.
    """

    def __init__(
        self,
        emulator,
        *,
        volumes: Path,
        trainer: Callable[[Path, str, dict, Path | None], None] | None = None,
        nodes: list[dict] | None = None,
        storage_class: str | None = "standard",
        attempts: list[str] | None = None,
        epochs: int = 3,
        needs_memory: str = "1Gi",
        step_seconds: float = 10.0,
        eviction_steps: int = 3,
        **kw,
    ):
        super().__init__(emulator, **kw)
        self.volumes = Path(volumes)
        self.trainer = trainer
        self.storage_class = storage_class
        self.attempts = list(attempts or [])
        self.epochs = epochs
        self.needs_memory = quantity(needs_memory)
        self.step_seconds = step_seconds
        self.pod_logs: dict[str, list[str]] = {}
        self.outcome: dict[str, str] = {}
        self.deleted_jobs: dict[tuple, str] = {}  # (namespace, name) -> propagationPolicy used
        self._lost: dict[str, int] = {}  # node -> steps until it is back
        self._said: dict[tuple, str] = {}
        self._job_started: dict[tuple, int] = {}
        self._lost_pods: dict[str, int] = {}  # pod -> step its node was lost
        self.volume_zones: dict[tuple[str, str], str | None] = {}  # (namespace, claim) -> zone it was created in
        self.eviction_steps = eviction_steps
        for resource in ("batch/v1/jobs", "v1/persistentvolumeclaims"):
            emulator.resources.setdefault(resource, {})
        for doc in nodes or [node()]:
            emulator.objects[NODES, None, doc["metadata"]["name"]] = doc
        emulator.stream_handlers = [self._exec, self._log, self._note_job_delete]

    # --- the loop

    def step(self) -> None:
        super().step()  # namespaces, HPAs, deployments, every pod through _kubelet
        self._volumes()
        for key, job in self._live(JOBS):
            self._job(key, job)
        self._orphans()
        for name in list(self._lost):
            self._lost[name] -= 1
            if self._lost[name] <= 0:
                del self._lost[name]

    def _kubelet(self, key, pod) -> None:
        if pod["metadata"].get("ownerName") and JOB_LABEL not in pod["metadata"].get("labels", {}):
            if not is_terminating(pod) and not pod["spec"].get("nodeName") and not self._schedule(key, pod):
                return  # a Deployment's pod goes through the scheduler too: it fits a node or stays Pending
            return super()._kubelet(key, pod)  # a Deployment's pod
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            if self.outcome.get(key[2]) == LOSE_NODE:
                pod.delete()  # the taint manager's delete goes through once the Job has counted it
            return
        if not pod["spec"].get("nodeName") and not self._schedule(key, pod):
            return
        self._run(key, pod)

    # --- scheduler

    def _schedule(self, key, pod) -> bool:
        namespace, name = key[1], key[2]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        ]
        nodes = [n for _, n in self._live(NODES)]
        reasons: dict[str, int] = {}
        unbound = [c for c in claims if not self._bindable(namespace, c)]
        if unbound:
            message = (
                f"0/{len(nodes)} nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: "
                f"0/{len(nodes)} nodes are available: {len(nodes)} Preemption is not helpful for scheduling.."
            )
            return self._unschedulable(namespace, name, pod, message)
        for candidate in nodes:
            why = self._misfit(candidate, pod, [(namespace, c) for c in claims])
            if why is None:
                pod.patch(
                    {
                        "spec": {"nodeName": candidate["metadata"]["name"]},
                        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
                    }
                )
                for claim in claims:
                    self._bind(namespace, claim, candidate)
                self._event(
                    namespace,
                    "Pod",
                    name,
                    "Scheduled",
                    f"Successfully assigned {namespace}/{name} to {candidate['metadata']['name']}",
                    "Normal",
                )
                return True
            reasons[why] = reasons.get(why, 0) + 1
        listed = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        message = (
            f"0/{len(nodes)} nodes are available: {listed}. preemption: 0/{len(nodes)} nodes are available: "
            f"{len(nodes)} No preemption victims found for incoming pod.."
        )
        return self._unschedulable(namespace, name, pod, message)

    def _unschedulable(self, namespace, name, pod, message) -> bool:
        pod.patch(
            {
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
                    ],
                }
            }
        )
        if self._said.get((namespace, name)) != message:
            self._said[(namespace, name)] = message
            self._event(namespace, "Pod", name, "FailedScheduling", message)
        return False

    def _misfit(self, candidate, pod, claims: list[tuple[str, str]]) -> str | None:
        name = candidate["metadata"]["name"]
        if name in self._lost:
            return "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
        labels = candidate["metadata"].get("labels", {})
        if any(labels.get(k) != v for k, v in (pod["spec"].get("nodeSelector") or {}).items()):
            return "node(s) didn't match Pod's node affinity/selector"
        tolerations = pod["spec"].get("tolerations") or []
        for taint in candidate["spec"].get("taints") or []:
            if taint["effect"] in ("NoSchedule", "NoExecute") and not any(_tolerates(t, taint) for t in tolerations):
                return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
        free = {k: quantity(v) for k, v in candidate["status"]["allocatable"].items()}
        for _, other in self._live(PODS):
            if other["spec"].get("nodeName") == name and other.get("status", {}).get("phase") not in (
                "Succeeded",
                "Failed",
            ):
                for resource, amount in _requests(other).items():
                    free[resource] = free.get(resource, 0) - amount
        for resource, amount in sorted(_requests(pod).items()):
            if amount > free.get(resource, 0):
                return f"Insufficient {resource}"
        # VolumeBinding filters after NodeAffinity and NodeResourcesFit (the default plugin order)
        zones = {self.volume_zones[c] for c in claims if self.volume_zones.get(c) and self._bound(*c)}
        if zones and zones != {labels.get(ZONE)}:
            return "node(s) had volume node affinity conflict"
        return None

    # --- volumes

    def _volumes(self) -> None:
        for key, pvc in self._live(PVCS):
            if pvc.get("status", {}).get("phase") == "Bound":
                continue
            if self.storage_class is None:
                self._once(
                    key, "FailedBinding", "no persistent volumes available for this claim and no storage class is set"
                )
            else:
                self._once(
                    key, "WaitForFirstConsumer", "waiting for first consumer to be created before binding", "Normal"
                )
            pvc.patch({"status": {"phase": "Pending"}})
        for folder in self.volumes.glob("*/*"):  # reclaimPolicy Delete: a deleted claim's data goes
            obj = get_or_none(self.kmock.objects, (PVCS, folder.parent.name, folder.name))
            if obj is None or obj.deleted:
                shutil.rmtree(folder, ignore_errors=True)

    def _once(self, key, reason, message, type_="Warning") -> None:
        if self._said.get(key) != reason:
            self._said[key] = reason
            self._event(key[1], "PersistentVolumeClaim", key[2], reason, message, type_)

    def _bound(self, namespace: str, claim: str) -> bool:
        pvc = get_or_none(self.kmock.objects, (PVCS, namespace, claim))
        return pvc is not None and not pvc.deleted and pvc.get("status", {}).get("phase") == "Bound"

    def _bindable(self, namespace: str, claim: str) -> bool:
        pvc = get_or_none(self.kmock.objects, (PVCS, namespace, claim))
        return pvc is not None and not pvc.deleted and self.storage_class is not None

    def _bind(self, namespace: str, claim: str, node_: dict) -> None:
        pvc = self.kmock.objects[PVCS, namespace, claim]
        if pvc.get("status", {}).get("phase") != "Bound":
            self.volume_zones[namespace, claim] = node_["metadata"].get("labels", {}).get(ZONE)
            pvc.patch(
                {
                    "spec": {"volumeName": f"pvc-{claim}", "storageClassName": self.storage_class},
                    "status": {"phase": "Bound"},
                }
            )
        (self.volumes / namespace / claim).mkdir(parents=True, exist_ok=True)

    def volume(self, claim: str = "pizzactl-train", namespace: str = "pizzactl") -> Path:
        return self.volumes / namespace / claim

    def mounts(self, namespace: str, pod) -> list[tuple[str, Path]]:
        """(mountPath, folder here) of the pod's PVC mounts, longest path first."""
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        found = []
        for mount in pod["spec"]["containers"][0].get("volumeMounts", []):
            if mount["name"] in claims:
                found.append(
                    (mount["mountPath"], self.volumes / namespace / claims[mount["name"]] / mount.get("subPath", ""))
                )
        return sorted(found, key=lambda m: -len(m[0]))

    # --- kubelet for Job pods and bare pods

    def _run(self, key, pod) -> None:
        namespace, name = key[1], key[2]
        container = pod["spec"]["containers"][0]
        base = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "restartCount": 0,
            "ready": False,
        }
        if self._how(container["image"]) == "pull":
            message = (
                f'failed to pull and unpack image "docker.io/library/{container["image"]}": failed to resolve reference '
                f'"docker.io/library/{container["image"]}": pull access denied, repository does not exist or may require authorization'
            )
            waiting = {"waiting": {"reason": "ErrImagePull", "message": message}}
            self._event(namespace, "Pod", name, "Failed", "Error: ErrImagePull")
            return self._set(pod, "Pending", {**base, "state": waiting})
        missing = self._missing_secret(namespace, container)
        if missing:
            waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": f'secret "{missing}" not found'}}
            return self._set(pod, "Pending", {**base, "state": waiting})
        if JOB_LABEL not in pod["metadata"].get("labels", {}):
            return self._set(pod, "Running", {**base, "ready": True, "state": {"running": {}}})  # the files pod: sleeps
        self._train(key, pod, base)

    def _missing_secret(self, namespace: str, container) -> str | None:
        wanted = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        wanted += [
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        for secret in wanted:
            obj = get_or_none(self.kmock.objects, (SECRETS, namespace, secret))
            if obj is None or obj.deleted:
                return secret
        return None

    def _train(self, key, pod, base) -> None:
        """One epoch per step; the outcome the attempt was given."""
        namespace, name = key[1], key[2]
        outcome = self.outcome.setdefault(name, self.attempts.pop(0) if self.attempts else SUCCEED)
        lines = self.pod_logs.setdefault(name, [])
        container = pod["spec"]["containers"][0]
        if not lines:
            lines.append(f"Run {name}: small_cnn (scratch, weights none, 64px)")
            self._set(
                pod, "Running", {**base, "ready": True, "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}
            )
            return
        epoch = sum(1 for line in lines if "epoch" in line) + 1
        limit = quantity((container.get("resources", {}).get("limits") or {}).get("memory", "64Gi"))
        if outcome == USAGE:
            lines += ["Error: Unknown backbone 'resnet9000'.", "Hint: See `pizzactl train --help` for the backbones."]
            return self._end(pod, base, "Failed", 2, "Error")
        if epoch == 2 and self.needs_memory > limit:
            return self._end(pod, base, "Failed", 137, "OOMKilled")
        if outcome == LOSE_NODE and (epoch == 2 or name in self._lost_pods):
            return self._lose_node(namespace, name, pod, base)
        if epoch > self.epochs and outcome != HANG:
            self._write_outputs(namespace, pod)
            lines.append(f"Exported {self._env(pod).get('PIZZACTL_MODELS_DIR')}/pizza/1")
            return self._end(pod, base, "Succeeded", 0, "Completed")
        if epoch <= self.epochs:
            lines.append(f"[scratch] epoch {epoch}/{self.epochs}  loss 0.6{epoch}  accuracy 0.5{epoch}  (1.0s)")

    def _env(self, pod) -> dict:
        return {e["name"]: e["value"] for e in pod["spec"]["containers"][0].get("env", []) if "value" in e}

    def _write_outputs(self, namespace: str, pod) -> None:
        env = self._env(pod)
        mounts = self.mounts(namespace, pod)
        out = env["OUTPUT_DIR"]
        host_out = Path(_map_path(out, mounts))
        data = env.get("PIZZACTL_DATA_DIR")
        host_data = Path(_map_path(data, mounts)) if data else None
        host_out.mkdir(parents=True, exist_ok=True)
        if self.trainer is not None:
            self.trainer(host_out, out, env, host_data)

    def _lose_node(self, namespace, name, pod, base) -> None:
        """The node stops reporting: the pod looks Running, its log stops; after the toleration of
        node.kubernetes.io/unreachable (300 s by default, `eviction_steps` here) the taint manager
        marks it (DisruptionTarget) and deletes it."""
        node_name = pod["spec"]["nodeName"]
        since = self._lost_pods.setdefault(name, self.steps)
        self._lost[node_name] = self.eviction_steps + 2
        if self.steps - since < self.eviction_steps:
            return
        self._event(
            namespace, "Pod", name, "TaintManagerEviction", f"Marking for deletion Pod {namespace}/{name}", "Normal"
        )
        pod.patch(
            {
                "status": {
                    "phase": "Failed",
                    "conditions": [
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "DeletionByTaintManager",
                            "message": "Taint manager: deleting due to NoExecute taint",
                        },
                        {"type": "Ready", "status": "False"},
                    ],
                    "containerStatuses": [{**base, "state": {"running": {}}}],
                }
            }
        )

    def _end(self, pod, base, phase: str, code: int, reason: str) -> None:
        terminated = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": "2025-01-01T00:05:00Z"}}
        self._set(pod, phase, {**base, "state": terminated})

    @staticmethod
    def _set(pod, phase: str, status: dict) -> None:
        ready = status.get("ready", False)
        pod.patch(
            {
                "status": {
                    "phase": phase,
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True" if ready else "False"},
                    ],
                    "containerStatuses": [status],
                }
            }
        )

    # --- Job controller

    def _job(self, key, job) -> None:
        namespace, name = key[1], key[2]
        spec, status = job["spec"], dict(job.get("status") or {})
        conditions = list(status.get("conditions") or [])
        pods = [
            (k, p) for k, p in self._live(PODS, namespace) if p["metadata"].get("labels", {}).get(JOB_LABEL) == name
        ]
        if any(c["type"] in ("Complete", "Failed") for c in conditions):
            return
        pending_end = [c for c in conditions if c["type"] in ("FailureTarget", "SuccessCriteriaMet")]
        if pending_end:  # the terminal condition follows once the pods are gone or done
            for k, p in pods:
                if p.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    self.kmock.objects[k].delete()
            final = "Failed" if pending_end[0]["type"] == "FailureTarget" else "Complete"
            conditions.append({**pending_end[0], "type": final})
            return job.patch({"status": {"conditions": conditions, "active": 0}})
        started = self._job_started.setdefault(key, self.steps)
        status.setdefault("startTime", "2025-01-01T00:00:00Z")
        failed = counted = 0
        for _, p in pods:
            if p.get("status", {}).get("phase") != "Failed":
                continue
            rule = self._policy(spec, p)
            if rule is not None and rule[0] == "FailJob":
                return self._finish(job, status, "FailureTarget", "PodFailurePolicy", rule[1])
            if rule is None or rule[0] == "Count":
                counted += 1
            failed += 1
        status["failed"] = counted
        if any(p.get("status", {}).get("phase") == "Succeeded" for _, p in pods):
            status["succeeded"] = 1
            return self._finish(
                job, status, "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
            )
        if (
            spec.get("activeDeadlineSeconds")
            and (self.steps - started) * self.step_seconds >= spec["activeDeadlineSeconds"]
        ):
            return self._finish(
                job, status, "FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"
            )
        if counted > spec.get("backoffLimit", 6):
            return self._finish(
                job, status, "FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )
        active = [p for _, p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        if not active:
            self._create_pod(namespace, name, job)
        status["active"] = 1
        job.patch({"status": status})

    def _finish(self, job, status, kind: str, reason: str, message: str) -> None:
        condition = {"type": kind, "status": "True", "reason": reason, "message": message}
        job.patch({"status": {**status, "conditions": [*(status.get("conditions") or []), condition]}})

    @staticmethod
    def _policy(spec, pod) -> tuple[str, str] | None:
        """(action, message) of the first podFailurePolicy rule the failed pod matches."""
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
            codes = rule.get("onExitCodes")
            if codes:
                for cs in pod.get("status", {}).get("containerStatuses", []):
                    code = (cs.get("state", {}).get("terminated") or {}).get("exitCode")
                    if code is None or code == 0 or (codes.get("containerName") not in (None, cs["name"])):
                        continue
                    if (code in codes["values"]) == (codes.get("operator", "In") == "In"):
                        return rule["action"], (
                            f"Container {cs['name']} for pod {name} failed with exit code {code} matching "
                            f"{rule['action']} rule at index {index}"
                        )
            for wanted in rule.get("onPodConditions") or []:
                if any(
                    c["type"] == wanted["type"] and c.get("status") == wanted.get("status", "True")
                    for c in pod["status"].get("conditions", [])
                ):
                    return rule[
                        "action"
                    ], f"Pod {name} has condition {wanted['type']} matching {rule['action']} rule at index {index}"
        return None

    def _create_pod(self, namespace: str, job_name: str, job) -> None:
        self._pod_seq += 1
        pod_name = f"{job_name}-{self._pod_seq:05x}"
        template = plain_json(job["spec"]["template"])
        refused = pod_admission(self.kmock, namespace, {"metadata": {"name": pod_name}, "spec": template["spec"]})
        if refused:  # the Job controller retries on its next sync
            self._event(namespace, "Job", job_name, "FailedCreate", f"Error creating: {refused}")
            return
        labels = {**template.get("metadata", {}).get("labels", {}), JOB_LABEL: job_name, "job-name": job_name}
        self.kmock.objects[PODS, namespace, pod_name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "labels": labels, "jobOwner": job_name},
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        self._event(namespace, "Job", job_name, "SuccessfulCreate", f"Created pod: {pod_name}", "Normal")

    def _orphans(self) -> None:
        """The garbage collector: a deleted Job's pods go only if the delete asked for it."""
        for key, pod in self._live(PODS):
            owner = pod["metadata"].get("jobOwner")
            if not owner:
                continue
            job = get_or_none(self.kmock.objects, (JOBS, key[1], owner))
            if job is not None and not job.deleted:
                continue
            if self.deleted_jobs.get((key[1], owner), "Orphan") in ("Background", "Foreground"):
                pod.delete()

    async def _note_job_delete(self, request):
        match = JOB_URL.match(request.url.path)
        if match and request.method == kmock.method.DELETE:
            policy = (
                request.params.get("propagationPolicy") or (request.data or {}).get("propagationPolicy") or "Orphan"
            )
            self.deleted_jobs[match.groups()] = policy
        return None

    # --- the API's streaming endpoints

    async def _log(self, request):
        import aiohttp.web

        match = POD_LOG_URL.match(request.url.path)
        if not match or match.group(2) not in self.pod_logs:
            return None  # a Deployment's pod: FakeCluster's log
        namespace, name = match.groups()
        if request.params.get("previous") == "true":
            message = f'previous terminated container "train" in pod "{name}" not found'
            return aiohttp.web.json_response(failure_status(400, "BadRequest", message), status=400)
        lines = self.pod_logs[name]
        if request.params.get("follow") != "true":
            tail = int(request.params.get("tailLines") or len(lines) or 1)
            return aiohttp.web.Response(text="".join(line + "\n" for line in lines[-tail:]), content_type="text/plain")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request._raw_request)
        sent = 0
        while True:
            while sent < len(lines):
                await response.write((lines[sent] + "\n").encode())
                sent += 1
            pod = get_or_none(self.kmock.objects, (PODS, namespace, name))
            if pod is None or pod.deleted or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                break
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    async def _exec(self, request):
        import aiohttp
        import aiohttp.web

        match = EXEC_URL.match(request.url.path)
        if not match:
            return None
        namespace, name = match.groups()
        pod = get_or_none(self.kmock.objects, (PODS, namespace, name))
        if pod is None or pod.deleted:
            return aiohttp.web.json_response(failure_status(404, "NotFound", f'pods "{name}" not found'), status=404)
        if pod.get("status", {}).get("phase") != "Running":
            message = f'unable to upgrade connection: container not found ("{pod["spec"]["containers"][0]["name"]}")'
            return aiohttp.web.json_response(failure_status(400, "BadRequest", message), status=400)
        raw = request._raw_request
        mounts = self.mounts(namespace, pod)
        argv = [_map_path(arg, mounts) for arg in raw.query.getall("command")]
        with_stdin = raw.query.get("stdin") in ("true", "1")
        # timeout=0: close without waiting for the client's close frame, as the API server does
        # (x/net/websocket's and gorilla's Close write the close frame and close the connection):
        # a client still sending stdin then gets a broken connection, not an orderly end.
        ws = aiohttp.web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"), timeout=0)
        await ws.prepare(raw)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=self._full_volume_env(namespace, pod),
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def pump(stream, channel: int) -> None:
            while chunk := await stream.read(65536):
                await ws.send_bytes(bytes([channel]) + chunk)

        async def feed() -> None:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT) or proc.stdin is None:
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                if data[:1] == b"\x00":
                    if proc.stdin.is_closing():
                        return  # the command's stdin is gone: the kubelet stops copying (and reading the socket)
                    try:
                        proc.stdin.write(data[1:])
                        await proc.stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the command is gone: the kubelet stops copying stdin (and reading the socket)
                elif data[:2] == b"\xff\x00":  # v5: the client closed stdin
                    proc.stdin.close()

        feeding = asyncio.create_task(feed())
        await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
        code = await proc.wait()
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: error executing command {argv[:1]}, exit code {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        feeding.cancel()
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws

    # --- a full volume

    volume_bytes: int | None = None  # the volume's capacity; None: unlimited

    def _full_volume_env(self, namespace: str, pod) -> dict[str, str] | None:
        """The environment of an exec'd command: with `volume_bytes` set, `tar` and `mkdir` on the
        volume fail as on a full ext4 volume (FULL_VOLUME_TOOLS); else the usual one."""
        import os

        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        ]
        if self.volume_bytes is None or not claims:
            return None
        tools = self.volumes.parent / "full-volume-bin"
        tools.mkdir(parents=True, exist_ok=True)
        for name in ("tar", "mkdir"):
            (tools / name).write_text(f"#!{sys.executable}\n" + FULL_VOLUME_TOOLS)
            (tools / name).chmod(0o755)
        mounts = [(m, str(f)) for m, f in self.mounts(namespace, pod)]
        return {
            **os.environ,
            "PATH": f"{tools}:{os.environ.get('PATH', '')}",
            "FAKE_VOLUME_ROOT": str(self.volumes / namespace / claims[0]),
            "FAKE_VOLUME_BYTES": str(self.volume_bytes),
            "FAKE_VOLUME_MOUNTS": json.dumps(mounts),
        }

    # --- what tests look at

    def jobs(self, namespace: str = "pizzactl") -> dict[str, dict]:
        return {k[2]: plain_json(j) for k, j in self._live(JOBS, namespace)}

    def events(self, namespace: str = "pizzactl") -> list[dict]:
        return [e for _, e in self._live(EVENTS, namespace)]


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") not in (None, "", taint["effect"]):
        return False
    if toleration.get("operator") == "Exists":
        return toleration.get("key") in (None, "", taint["key"])
    return toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", "")


def _requests(pod) -> dict[str, float]:
    """What the scheduler counts: requests, and limits for extended resources (GPUs have no separate request)."""
    total: dict[str, float] = {}
    for container in pod["spec"].get("containers", []):
        resources = container.get("resources") or {}
        wanted = {
            **{k: v for k, v in (resources.get("limits") or {}).items() if "/" in k},
            **(resources.get("requests") or {}),
        }
        for resource, amount in wanted.items():
            total[resource] = total.get(resource, 0) + quantity(amount)
    return total


def _map_path(text: str, mounts: list[tuple[str, Path]]) -> str:
    """A container path (or a shell script naming some) with its mount paths made folders here."""
    for mount_path, folder in mounts:
        text = re.sub(rf"(?<![\w./-]){re.escape(mount_path)}(?=/|$|[\s'\";])", str(folder), text)
    return text


RUN_ID = "20250101-120000-small_cnn"


def write_train_outputs(host_out: Path, out: str, env: dict, host_data: Path | None, *, complete: bool = True) -> None:
    """What `pizzactl train --json` leaves in a Job's output folder, paths inside as the trainer
    writes them (the container's): result.json (TrainResult.as_dict), runs/<id>/ (with its
    tensorboard/{train,validation} event files) and the exported models/pizza/1 (saved_model.pb
    and assets.extra/pizzactl.json). Its classes and image count are what it can read through
    the Job's /data mount, as the trainer's would be (Kaggle's two classes without one)."""
    models, runs = env["PIZZACTL_MODELS_DIR"], env["PIZZACTL_RUNS_DIR"]
    host_models = Path(str(host_out) + models[len(out) :])
    host_runs = Path(str(host_out) + runs[len(out) :])
    n_images = len(list(host_data.glob("*/*.jpg"))) if host_data else 0
    classes = sorted(p.name for p in host_data.iterdir() if p.is_dir()) if host_data else ["not_pizza", "pizza"]
    version = host_models / "pizza" / "1"
    (version / "variables").mkdir(parents=True)
    if complete:
        (version / "saved_model.pb").write_bytes(b"\x08\x01 a graph")
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "assets.extra").mkdir()
    meta = {"backbone": "small_cnn", "run_id": RUN_ID, "classes": classes}
    (version / "assets.extra" / "pizzactl.json").write_text(json.dumps(meta))
    run = host_runs / RUN_ID
    for split in ("train", "validation"):
        (run / "tensorboard" / split).mkdir(parents=True)
        (run / "tensorboard" / split / "events.out.tfevents.1735732800.trainer.1.v2").write_bytes(b"\x18\x00 events")
    config = {
        "run_id": RUN_ID,
        "created": "2025-01-01T12:00:00+00:00",
        "backbone": "small_cnn",
        "weights": "none",
        "image_size": 64,
        "data_dir": env.get("PIZZACTL_DATA_DIR"),
        "n_train": n_images,
        "settings": {"models_dir": models, "runs_dir": runs, "data_dir": env.get("PIZZACTL_DATA_DIR")},
    }
    metrics = {
        "val_accuracy": 0.75,
        "val_f1": 0.7,
        "val_roc_auc": 0.8,
        "val_loss": 0.5,
        "model_dir": f"{models}/pizza/1",
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.csv").write_text("phase,epoch,loss\nscratch,1,0.6\n")
    (run / "model.keras").write_bytes(b"PK keras")
    board = {"run_id": RUN_ID, "run_dir": f"{runs}/{RUN_ID}", "backbone": "small_cnn", "val_accuracy": 0.75}
    board |= {"val_f1": 0.7, "val_roc_auc": 0.8, "val_loss": 0.5, "train_seconds": 3.0}
    result = {
        **board,
        "model_dir": f"{models}/pizza/1",
        "version": 1,
        "classes": classes,
        "metrics": metrics,
        "leaderboard": [board],
    }
    (host_out / "result.json").write_text(json.dumps(result))


def forbid_listing_nodes(emulator, user: str = "system:serviceaccount:pizzactl:deployer") -> None:
    """A namespace-scoped identity (a Role, no ClusterRole): listing nodes is 403 in the RBAC
    authorizer's words ('nodes is forbidden: User "X" cannot list resource "nodes" in API group
    "" at the cluster scope', kubernetes plugin/pkg/auth/authorizer/rbac)."""

    async def forbidden(request):
        import aiohttp.web

        if request.method != kmock.method.GET or not re.fullmatch(r"/api/v1/nodes/?", request.url.path):
            return None
        message = f'nodes is forbidden: User "{user}" cannot list resource "nodes" in API group "" at the cluster scope'
        return aiohttp.web.json_response(failure_status(403, "Forbidden", message, {"kind": "nodes"}), status=403)

    emulator.stream_handlers = [forbidden, *getattr(emulator, "stream_handlers", ())]


FULL_VOLUME_TOOLS = r'''"""`tar` and `mkdir` on a full ext4 volume (see tests/support/k8s_batch_fakes.py, TrainingCluster.volume_bytes).

GNU tar 1.34 extracting into a full filesystem (checked on a 64 KiB tmpfs): every file that
does not fit is "tar: NAME: Cannot write: No space left on device", it reads on to the end
of the archive, then "tar: Exiting with failure status due to previous errors", exit 2 (GNU
tar src/extract.c, write_error_details). A directory needs a block on ext4: mkdir on a full
volume is "mkdir: cannot create directory 'X': No space left on device", exit 1 (coreutils).
"""
import json, os, shutil, sys, tarfile

root, capacity = os.environ["FAKE_VOLUME_ROOT"], int(os.environ["FAKE_VOLUME_BYTES"])
mounts = json.loads(os.environ.get("FAKE_VOLUME_MOUNTS", "[]"))
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]


def used():
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def shown(path):  # the container's path, as the real tool would print it
    for mount, folder in mounts:
        path = path.replace(folder, mount)
    return path


def real(name):
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if os.path.abspath(p) != here)
    return shutil.which(name, path=path)


if tool == "mkdir":
    if used() >= capacity:
        for path in (a for a in args if not a.startswith("-")):
            sys.stderr.write(f"mkdir: cannot create directory '{shown(path)}': No space left on device\n")
        sys.exit(1)
    os.execv(real("mkdir"), ["mkdir", *args])
if "-x" not in args:
    os.execv(real("tar"), ["tar", *args])
dest = args[args.index("-C") + 1] if "-C" in args else "."
failed = False
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
    for member in archive:
        target = os.path.join(dest, member.name)
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            continue
        data = archive.extractfile(member).read() if member.isfile() else b""
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        free = max(0, capacity - used())
        with open(target, "wb") as fh:
            fh.write(data[:free])
        if len(data) > free:
            sys.stderr.write(f"tar: {member.name}: Cannot write: No space left on device\n")
            failed = True
sys.stdin.buffer.read()  # to the end of the archive
if failed:
    sys.stderr.write("tar: Exiting with failure status due to previous errors\n")
    sys.exit(2)
'''
