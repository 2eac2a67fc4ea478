"""Faithful fakes for the deploy tests: a Kubernetes cluster (kmock + controllers) and `kind`.

`ApplyingEmulator` is kmock's stateful Kubernetes API plus the API-server behaviour pizzactl
relies on that kmock lacks: server-side apply creates missing objects, defaults a Deployment's
`spec.replicas` to 1 and bumps `metadata.generation` on every spec change, and the
NamespaceLifecycle admission refuses new objects in a Terminating namespace with 403
"unable to create new content in namespace X because it is being terminated" (the message of
kubernetes/kubernetes#98743, antrea-io/antrea#488).

The API server's write path (the section at the end, each function naming its source): apply
is server-side apply with managed fields per field manager (`server_side_apply`: a field the
same manager stops sending is deleted, a different value for another manager's field is 409
Conflict unless force=true, a Secret's stringData is folded into data); pods pass ServiceAccount
admission (refused until the namespace's `default` exists, which `FakeCluster` creates
`sa_delay_steps` after the namespace, kubernetes/kubernetes#66689) and Pod Security admission
at the namespace's enforce level (`pod_admission`), for bare pods as for those the ReplicaSet
and Job controllers create (FailedCreate, retried); `scoped_to = NS` makes the caller an
identity bound to one namespace (`authorize`: 403 on nodes, Namespace objects, other namespaces).

`FakeCluster` plays the controllers and the kubelet, one `step()` at a time, so a rollout takes
time as it does for real:
- Deployment controller: a ReplicaSet per pod template, RollingUpdate with maxSurge 1 and
  maxUnavailable 0 (old pods go only once new ones are available); status.observedGeneration,
  replicas, updatedReplicas, readyReplicas, availableReplicas as `kubectl rollout status`
  reads them (kubernetes/kubectl pkg/polymorphichelpers/rollout_status.go).
- kubelet: a pod whose image `behave()` marks as failing stays so with the container states and
  events a kubelet writes: ErrImagePull/ImagePullBackOff, CrashLoopBackOff with lastState
  terminated and log lines, CreateContainerConfigError, Running-but-not-Ready with "Readiness
  probe failed" Unhealthy events; ReplicaSet FailedCreate when pods are refused. On a kind
  cluster an image that was not `kind load`ed cannot be pulled (kind's nodes have no access to
  the host's images; IfNotPresent then tries the registry and fails).
- HPA controller: raises the target to minReplicas once it has synced (the HPA's
  "Current number of replicas below Spec.MinReplicas" rule runs before any metric is read,
  kubernetes/kubernetes#102405), and without metrics-server (kind has none) reports
  ScalingActive=False FailedGetResourceMetric and never scales on CPU.
- Namespace controller: a deleted namespace stays Terminating for `terminating_steps` steps
  while its contents are deleted, then disappears.
- The Deployment's Progressing condition with progressDeadlineSeconds (simulated seconds,
  `step_seconds` per step): NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable,
  ProgressDeadlineExceeded, and a stale ProgressDeadlineExceeded kept until the controller has
  observed the new generation (kubernetes pkg/controller/deployment/progress.go, sync.go).
- Graceful deletion: a Deployment pod the ReplicaSet controller removes stays Terminating and
  Ready for its grace period (`pod_grace_steps`), and is no longer counted in the status.
- `metrics_apiservice(available=False)`: metrics.k8s.io listed in discovery but its APIService
  Available=False (MissingEndpoints / FailedDiscoveryCheck), the HPA's ScalingActive=False.

`FAKE_KIND` is a `kind` executable: it keeps its clusters in a file, binds the host port its
extraPortMappings map (a taken port fails as docker does: "Bind for 127.0.0.1:N failed: port
is already allocated", kubernetes-sigs/kind#3681), and `load docker-image` fails for an image
that is not present locally ('ERROR: image: "X" not present locally', kubernetes-sigs/kind#3105).
More of real kind it imitates:
- `create cluster` reports its steps on stderr as kind does without a terminal (" • STEP  ..." then
  " ✓ STEP", kind pkg/internal/cli/status.go), and a `hostPort: 0` gets a free port picked by kind
  (pkg/cluster/internal/providers/docker/provision.go generatePortMappings: "get a random port if
  necessary (port = 0)"); the node container's port bindings are in `<name>.node.json`, which
  `FakeDockerd(kind_home=...)` serves as `/containers/<name>-control-plane/json`.
- `get nodes --name X` lists the node containers (one: X-control-plane).
- the node keeps every image loaded into it: kind's kubelet config sets
  imageGCHighThresholdPercent: 100 (pkg/cluster/internal/create/actions/config: kind never
  garbage-collects images), so only `crictl rmi` (`docker exec NODE crictl rmi`, FAKE_DOCKER_CLI)
  or deleting the cluster removes one. `node_images()` lists them as `crictl images` would.
- `load docker-image` of an image already in the node skips it ('found to be already present on
  all nodes', kind pkg/cmd/kind/load/docker-image).
- Docker's containerd image store (`use_containerd_store(home)`; Docker Desktop's and Docker 29's
  default): `load docker-image` is `docker save` + `ctr images import --all-platforms`, and the
  archive names platform manifests whose content is not local, so it fails with "ctr: content
  digest sha256:...: not found" (kubernetes-sigs/kind#3795, #3845). `load image-archive FILE` of a
  `docker save --platform linux/ARCH` archive (one manifest) works; of a multi-platform one it
  fails the same way (the workaround documented in kind#3795 and kind PR #4247).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
from pathlib import Path

import kmock
import yaml

APPLY = "application/apply-patch+yaml"
NAMESPACE_URL = re.compile(r"^/api/v1/namespaces/[^/]+$")
POD_LOG_URL = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log")
PODS = kmock.resource("v1/pods")
EVENTS = kmock.resource("v1/events")
SECRETS = kmock.resource("v1/secrets")
SERVICES = kmock.resource("v1/services")
NODES = kmock.resource("v1/nodes")
DEPLOYMENTS = kmock.resource("apps/v1/deployments")
REPLICASETS = kmock.resource("apps/v1/replicasets")
NAMESPACES = kmock.resource("v1/namespaces")
HPAS = kmock.resource("autoscaling/v2/horizontalpodautoscalers")
PDBS = kmock.resource("policy/v1/poddisruptionbudgets")
APISERVICES = kmock.resource("apiregistration.k8s.io/v1/apiservices")
METRICS_APISERVICE = "v1beta1.metrics.k8s.io"


def plain_json(value):
    """kmock's stored objects as plain JSON (its ObjectVersion wrappers are not serialisable)."""
    return json.loads(json.dumps(value, default=lambda o: dict(o)))


def get_or_none(objects, key):
    """kmock's ObjectsArray has no .get()."""
    try:
        return objects[key]
    except KeyError:
        return None


def failure_status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A Kubernetes `Status` failure body (what the API server answers a refused request with)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory Kubernetes API, with server-side apply's create-or-update.

    kmock parses /api/v1/namespaces/NAME as "namespace NAME" rather than the Namespace object,
    so the Namespace object's own endpoints are served here, stored under (NAMESPACES, None, NAME).
    A delete marks the namespace Terminating (deletionTimestamp, phase); `FakeCluster` finishes it.
    Without a FakeCluster stepping, a deleted namespace is gone at once.
    """

    terminating_steps = 0  # FakeCluster sets it: how long a deleted namespace stays Terminating
    scoped_to: str | None = None  # a namespace-scoped identity: RBAC allows only this namespace (see `authorize`)
    user = "system:serviceaccount:team:deployer"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.managed_fields: dict[tuple, dict[str, set]] = {}  # object key -> {field manager: field paths}
        # Reactions, not fallbacks: kmock's own fetch/delete fallbacks would answer these first.
        self["patch", NAMESPACE_URL] << self._apply_namespace
        self["get", NAMESPACE_URL] << self._get_namespace
        self["delete", NAMESPACE_URL] << self._delete_namespace
        self["get", re.compile(r"^/apis/$")] << self._serve_apis  # the client asks with a slash

    def _namespace_key(self, request):
        return (NAMESPACES, None, request.url.path.rsplit("/", 1)[1])

    def namespace_terminating(self, name: str | None) -> bool:
        obj = get_or_none(self.objects, (NAMESPACES, None, name)) if name else None
        return bool(obj is not None and not obj.deleted and obj.get("metadata", {}).get("deletionTimestamp"))

    async def _apply_namespace(self, request):
        key = self._namespace_key(request)
        authorize(self, request, "namespaces", None, key[2])
        creating = key not in self.objects or self.objects[key].deleted
        if not creating and self.namespace_terminating(key[2]):  # applying to a Terminating namespace changes nothing
            return self.objects[key].raw
        body = server_side_apply(self, request, key, json.loads(json.dumps(request.data)), creating)
        if key not in self.objects:
            self.objects[key] = body
        elif creating:
            self.objects[key].create(body)
        else:
            self.objects[key].patch(body)
        return self.objects[key].raw

    async def _get_namespace(self, request):
        key = self._namespace_key(request)
        authorize(self, request, "namespaces", None, key[2])
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return self.objects[key].raw

    async def _delete_namespace(self, request):
        key = self._namespace_key(request)
        authorize(self, request, "namespaces", None, key[2])
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        if not self.terminating_steps:
            raw = self.objects[key].raw
            self.objects[key].delete()
            return {**raw, "status": {"phase": "Terminating"}}
        if not self.namespace_terminating(key[2]):
            self.objects[key].patch(
                {"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}, "status": {"phase": "Terminating"}}
            )
        return self.objects[key].raw

    async def _handle(self, request):
        if request.resource is not None:
            authorize(self, request, request.resource.plural, request.resource.group, request.name)
        elif request.url.path.startswith(("/api/v1/nodes", "/api/v1/namespaces")):  # kmock: no resource parsed
            authorize(self, request, request.url.path.split("/")[3], "", None)
        # Answers that are not JSON objects (pod exec over a websocket, a followed log), served by
        # the controllers that know the pods (tests/support/k8s_batch_fakes.py); None: not theirs.
        for handler in getattr(self, "stream_handlers", ()):
            response = await handler(request)
            if response is not None:
                return response
        content_type = request.headers.get("Content-Type", "")
        if request.method == kmock.method.POST and request.resource == PODS and isinstance(request.data, dict):
            refused = pod_admission(self, request.namespace, request.data)
            if refused:
                raise kmock.KubernetesError(status=403, reason="Forbidden", message=refused, details={})
        if (
            request.method == kmock.method.PATCH
            and content_type.startswith(APPLY)
            and request.resource is not None
            and request.name
        ):
            key = (request.resource, request.namespace, request.name)
            creating = key not in self.objects or self.objects[key].deleted
            if creating and self.namespace_terminating(request.namespace):
                return self._forbidden_terminating(request)
            body = json.loads(json.dumps(request.data))
            if creating and request.resource == PODS:
                refused = pod_admission(self, request.namespace, body)
                if refused:
                    raise kmock.KubernetesError(status=403, reason="Forbidden", message=refused, details={})
            body = server_side_apply(self, request, key, body, creating)
            if request.resource == DEPLOYMENTS:
                self._apply_deployment(key, body, creating)
            elif creating:
                if key not in self.objects:
                    self.objects[key] = body
                else:
                    self.objects[key].create(body)
            else:
                self.objects[key].patch(body)
            return await self._respond(self.objects[key].raw)
        return await super()._handle(request)

    async def _respond(self, raw):
        import aiohttp.web

        return aiohttp.web.json_response(raw)

    def _forbidden_terminating(self, request):
        import aiohttp.web

        plural = request.resource.plural
        group = request.resource.group or ""
        message = (
            f'{plural}{"." + group if group else ""} "{request.name}" is forbidden: unable to create new content in '
            f"namespace {request.namespace} because it is being terminated"
        )
        details = {
            "name": request.name,
            "group": group,
            "kind": plural,
            "causes": [
                {
                    "reason": "NamespaceTerminating",
                    "message": f"namespace {request.namespace} is being terminated",
                    "field": "metadata.namespace",
                }
            ],
        }
        return aiohttp.web.json_response(failure_status(403, "Forbidden", message, details), status=403)

    def _apply_deployment(self, key, body, creating: bool) -> None:
        """The API server's part: default replicas to 1 on create, bump generation on a spec change."""
        spec = body.setdefault("spec", {})
        if creating:
            spec.setdefault("replicas", 1)
            body.setdefault("metadata", {})["generation"] = 1
            if key not in self.objects:
                self.objects[key] = body
            else:
                self.objects[key].create(body)
            return
        obj = self.objects[key]
        before = json.dumps(plain_json(obj.get("spec")), sort_keys=True)
        if "replicas" not in spec:  # another manager (the HPA) owns replicas: apply leaves them
            spec["replicas"] = obj["spec"].get("replicas", 1)
        obj.patch(body)
        if json.dumps(plain_json(obj.get("spec")), sort_keys=True) != before:
            obj.patch({"metadata": {"generation": int(obj["metadata"].get("generation") or 1) + 1}})


def write_kubeconfig(path: Path, server: str, context: str) -> Path:
    name = context
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": "test-token"}}],
        "contexts": [{"name": context, "context": {"cluster": name, "user": name}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config))
    return path


# --- the controllers and the kubelet -------------------------------------------------------------

READY, CRASH, PULL, CONFIG, UNREADY, REFUSED = "ready", "crash", "pull", "config", "unready", "refused"


class FakeCluster:
    """Controllers and kubelet over an ApplyingEmulator; see the module docstring for what they do.

    behave(image_substring, how): pods whose image contains it become READY (default), CRASH,
    PULL (cannot be pulled), CONFIG (CreateContainerConfigError), UNREADY (running, readiness
    probe fails) or REFUSED (the ReplicaSet cannot create pods). `kind_home` links the cluster
    to the fake kind: images not loaded there cannot be pulled.
    """

    step_seconds = 1.0  # simulated seconds per step (progressDeadlineSeconds counts in them)
    pod_grace_steps = 3  # steps a deleted Deployment pod stays Terminating (and Ready) before it is gone

    def __init__(
        self,
        emulator: ApplyingEmulator,
        *,
        metrics_server: bool = False,
        terminating_steps: int = 3,
        hpa_delay_steps: int = 6,  # the HPA syncs every 15 s: usually after the first pods are ready
        kind_home: Path | None = None,
        kind_cluster: str = "pizzactl",
        sa_delay_steps: int = 2,  # steps from a new namespace to its `default` ServiceAccount
    ):
        self.kmock = emulator
        self.sa_delay_steps = sa_delay_steps
        self.behaviours: dict[str, str] = {}
        self.metrics_server = metrics_server
        self.hpa_delay_steps = hpa_delay_steps
        self.kind_home = kind_home
        self.kind_cluster = kind_cluster
        self.logs: dict[str, str] = {}
        self.steps = 0
        self._age: dict[tuple, int] = {}
        self._pod_seq = 0
        emulator.terminating_steps = terminating_steps
        for name in ("v1/pods", "v1/events", "v1/secrets", "v1/services", "v1/nodes", "apps/v1/replicasets"):
            emulator.resources.setdefault(name, {})
        emulator.resources.setdefault("v1/serviceaccounts", {})
        if metrics_server:
            emulator.resources["metrics.k8s.io/v1beta1/pods"] = {}
            self.metrics_apiservice(available=True)
        emulator["get", POD_LOG_URL] << kmock.headers({"Content-Type": "text/plain"}) << self._pod_log

    def behave(self, image_substring: str, how: str, log: str = "") -> None:
        self.behaviours[image_substring] = how
        if log:
            self.logs[image_substring] = log

    async def run(self, interval: float = 0.05) -> None:
        while True:
            self.step()
            await asyncio.sleep(interval)

    def step(self) -> None:
        self.steps += 1
        self._namespaces()
        self._hpas()
        # The Deployment controller computes its status from ReplicaSet status, which counts the
        # pods as the ReplicaSet controller last saw them: before this step's scaling.
        self._state("seen")["pods"] = {k: plain_json(p) for k, p in self._live(PODS) if not is_terminating(p)}
        for key, dep in self._live(DEPLOYMENTS):
            self._deployment(key, dep)
        for key, pod in self._live(PODS):
            self._kubelet(key, pod)
        for key, dep in self._live(DEPLOYMENTS):
            self._deployment_status(key, dep)

    # --- helpers

    def _live(self, resource, namespace: str | None = None):
        return [
            (key, obj)
            for key, obj in list(self.kmock.objects.items())
            if key[0] == resource and not obj.deleted and (namespace is None or key[1] == namespace)
        ]

    def _tick(self, key) -> int:
        self._age[key] = self._age.get(key, 0) + 1
        return self._age[key]

    def _event(self, namespace: str, kind: str, name: str, reason: str, message: str, type_: str = "Warning"):
        self._pod_seq += 1
        ev_name = f"{name}.{self._pod_seq:08x}"
        self.kmock.objects[EVENTS, namespace, ev_name] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": ev_name, "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
            "reason": reason,
            "message": message,
            "type": type_,
            "lastTimestamp": f"2025-01-01T00:{self._pod_seq // 60 % 60:02d}:{self._pod_seq % 60:02d}Z",
        }

    def _how(self, image: str) -> str:
        for part, how in self.behaviours.items():
            if part in image:
                return how
        if self.kind_home is not None and image not in loaded_images(self.kind_home, self.kind_cluster):
            return PULL
        return READY

    # --- namespace controller

    def _namespaces(self) -> None:
        for key, ns in self._live(NAMESPACES):
            if not ns.get("metadata", {}).get("deletionTimestamp"):
                continue
            name = key[2]
            for other_key, _obj in list(self.kmock.objects.items()):
                if other_key[1] == name and not self.kmock.objects[other_key].deleted:
                    self.kmock.objects[other_key].delete()
            if self._tick(key) >= self.kmock.terminating_steps:
                ns.delete()
                self._age.pop(key, None)
        self._default_service_accounts()

    def _default_service_accounts(self) -> None:
        """The service account controller: `default` appears in a new namespace `sa_delay_steps`
        after it (kubernetes/kubernetes#66689: pods are refused until then, see `pod_admission`)."""
        for key, ns in self._live(NAMESPACES):
            name = key[2]
            sa_key = (SERVICEACCOUNTS, name, "default")
            sa = get_or_none(self.kmock.objects, sa_key)
            if ns.get("metadata", {}).get("deletionTimestamp") or (sa is not None and not sa.deleted):
                continue
            if self._tick(("serviceaccount", name)) > self.sa_delay_steps:
                self._age.pop(("serviceaccount", name), None)
                body = {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name},
                }
                if sa is None:
                    self.kmock.objects[sa_key] = body
                else:
                    sa.create(body)

    # --- HPA controller

    def _hpas(self) -> None:
        for key, hpa in self._live(HPAS):
            namespace = key[1]
            target = hpa["spec"]["scaleTargetRef"]["name"]
            dep_key = (DEPLOYMENTS, namespace, target)
            dep = get_or_none(self.kmock.objects, dep_key)
            if dep is None or dep.deleted or self._tick(key) <= self.hpa_delay_steps:
                continue
            current = dep["spec"].get("replicas", 1)
            minimum = hpa["spec"].get("minReplicas", 1)
            conditions = [{"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"}]
            if current < minimum:
                dep.patch(
                    {"spec": {"replicas": minimum}, "metadata": {"generation": int(dep["metadata"]["generation"]) + 1}}
                )
                self._event(
                    namespace,
                    "HorizontalPodAutoscaler",
                    key[2],
                    "SuccessfulRescale",
                    f"New size: {minimum}; reason: Current number of replicas below Spec.MinReplicas",
                    "Normal",
                )
            elif not self.metrics_server or not self._metrics_api_available():
                why = (
                    "the server is currently unable to handle the request"  # the aggregator's 503
                    if self.metrics_server
                    else "the server could not find the requested resource"
                )
                message = (
                    "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to "
                    f"get metrics for resource cpu: unable to fetch metrics from resource metrics API: {why} "
                    "(get pods.metrics.k8s.io)"
                )
                conditions.append(
                    {
                        "type": "ScalingActive",
                        "status": "False",
                        "reason": "FailedGetResourceMetric",
                        "message": message,
                    }
                )
            hpa.patch(
                {
                    "status": {
                        "currentReplicas": current,
                        "desiredReplicas": max(current, minimum),
                        "conditions": conditions,
                    }
                }
            )

    # --- Deployment + ReplicaSet controllers

    def _deployment(self, key, dep) -> None:
        namespace, name = key[1], key[2]
        template = plain_json(dep["spec"]["template"])
        pod_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        sets = [(k, rs) for k, rs in self._live(REPLICASETS, namespace) if rs["metadata"].get("ownerName") == name]
        new_key = (REPLICASETS, namespace, f"{name}-{pod_hash}")
        if new_key not in dict(sets):
            revision = 1 + max((int(rs["metadata"]["revision"]) for _, rs in sets), default=0)
            rs_body = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": new_key[2],
                    "namespace": namespace,
                    "ownerName": name,
                    "revision": str(revision),
                    "labels": {**template["metadata"].get("labels", {}), "pod-template-hash": pod_hash},
                },
                "spec": {"replicas": 0, "template": template},
            }
            if new_key in self.kmock.objects:
                self.kmock.objects[new_key].create(rs_body)
            else:
                self.kmock.objects[new_key] = rs_body
            self._state("rs_created").add(key)
            sets = [*sets, (new_key, self.kmock.objects[new_key])]
        desired = int(dep["spec"].get("replicas", 1))
        new = self.kmock.objects[new_key]
        old = [(k, rs) for k, rs in sets if k != new_key and rs["spec"]["replicas"] > 0]
        # RollingUpdate, maxSurge 1, maxUnavailable 0 (our manifests' strategy).
        if not old:
            new.patch({"spec": {"replicas": desired}})
        else:
            total = new["spec"]["replicas"] + sum(rs["spec"]["replicas"] for _, rs in old)
            if total < desired + 1 and new["spec"]["replicas"] < desired:
                new.patch({"spec": {"replicas": new["spec"]["replicas"] + 1}})
            available = self._available(namespace, new_key[2]) + sum(self._available(namespace, k[2]) for k, _ in old)
            for k, rs in old:
                unavailable_old = rs["spec"]["replicas"] - self._available(namespace, k[2])
                can_go = max(0, available - desired) + unavailable_old
                cut = min(can_go, rs["spec"]["replicas"])
                if cut:
                    rs.patch({"spec": {"replicas": rs["spec"]["replicas"] - cut}})
                    available -= max(0, cut - unavailable_old)
        for k, rs in sets:
            self._replicaset(k, rs)

    def _pods_of(self, namespace: str, rs_name: str):
        return [
            (k, p)
            for k, p in self._live(PODS, namespace)
            if p["metadata"].get("ownerName") == rs_name and not is_terminating(p)
        ]

    def _available(self, namespace: str, rs_name: str) -> int:
        return sum(1 for _, p in self._pods_of(namespace, rs_name) if _ready(p))

    def _replicaset(self, key, rs) -> None:
        namespace, name = key[1], key[2]
        pods = self._pods_of(namespace, name)
        want = rs["spec"]["replicas"]
        template = plain_json(rs["spec"]["template"])
        image = template["spec"]["containers"][0]["image"]
        while len(pods) < want:
            self._pod_seq += 1
            pod_name = f"{name}-{self._pod_seq:05x}"
            if self._how(image) == REFUSED:
                self._event(
                    namespace,
                    "ReplicaSet",
                    name,
                    "FailedCreate",
                    f'Error creating: pods "{pod_name}" is forbidden: violates PodSecurity "restricted:latest": '
                    'runAsNonRoot != true (pod or container "model" must set securityContext.runAsNonRoot=true)',
                )
                return
            refused = pod_admission(self.kmock, namespace, {"metadata": {"name": pod_name}, "spec": template["spec"]})
            if refused:  # the ReplicaSet controller retries on its next sync
                self._event(namespace, "ReplicaSet", name, "FailedCreate", f"Error creating: {refused}")
                return
            containers = template["spec"]["containers"]
            self.kmock.objects[PODS, namespace, pod_name] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": namespace,
                    "ownerName": name,
                    "labels": plain_json(rs["metadata"]["labels"]),
                    "annotations": dict(template["metadata"].get("annotations", {})),
                },
                "spec": {
                    "containers": [
                        {"name": c["name"], "image": c["image"], "resources": c.get("resources") or {}}
                        for c in containers
                    ]
                },
                "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
            }
            pods.append(((PODS, namespace, pod_name), self.kmock.objects[PODS, namespace, pod_name]))
        for k, _pod in pods[want:]:
            self._delete_gracefully(k)

    def _deployment_status(self, key, dep) -> None:
        namespace, name = key[1], key[2]
        template = plain_json(dep["spec"]["template"])
        pod_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        seen = self._state("seen").get("pods", {})
        pods = [
            p
            for k, p in seen.items()
            if k[1] == namespace
            and str(p["metadata"].get("ownerName", "")).startswith(name + "-")
            and not self.kmock.objects[k].deleted
        ]  # active pods (the ReplicaSet controller counts no Terminating one) as of the step's start
        updated = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == pod_hash]
        ready = [p for p in pods if _ready(p)]
        before = plain_json(dep.get("status") or {})
        dep.patch(
            {
                "status": {
                    "observedGeneration": dep["metadata"].get("generation", 1),
                    "replicas": len(pods),
                    "updatedReplicas": len(updated),
                    "readyReplicas": len(ready),
                    "availableReplicas": len(ready),
                    "unavailableReplicas": max(0, int(dep["spec"].get("replicas", 1)) - len(ready)),
                }
            }
        )
        self._progressing(key, dep, before, f"{name}-{pod_hash}")

    # --- kubelet

    def _kubelet(self, key, pod) -> None:
        namespace, name = key[1], key[2]
        if is_terminating(pod):
            return self._grace(key)
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return  # a finished pod (a completed Job's) stays as it ended
        age = self._tick(key)
        if age < 2:
            return  # scheduled, the kubelet has not started it yet
        container = pod["spec"]["containers"][0]
        image, cname = container["image"], container["name"]
        how = self._how(image)
        base = {"name": cname, "image": image, "imageID": "", "restartCount": 0, "ready": False}
        if how == PULL:
            reason = "ErrImagePull" if age % 2 else "ImagePullBackOff"
            message = (
                f'failed to pull and unpack image "docker.io/library/{image}": failed to resolve reference '
                f'"docker.io/library/{image}": pull access denied, repository does not exist or may require authorization'
                if reason == "ErrImagePull"
                else f'Back-off pulling image "{image}"'
            )
            state = {"waiting": {"reason": reason, "message": message}}
            self._event(namespace, "Pod", name, "Failed", f"Error: {reason}")
            self._pod_status(pod, "Pending", [{**base, "state": state}], ready=False)
        elif how == CONFIG:
            state = {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "registry-creds" not found',
                }
            }
            self._pod_status(pod, "Pending", [{**base, "state": state}], ready=False)
        elif how == CRASH:
            restarts = age - 1
            state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 10s restarting failed container={cname} pod={name}",
                }
            }
            last = {"terminated": {"exitCode": 1, "reason": "Error"}}
            self._pod_status(
                pod, "Running", [{**base, "restartCount": restarts, "state": state, "lastState": last}], ready=False
            )
            self._event(namespace, "Pod", name, "BackOff", "Back-off restarting failed container")
        elif how == UNREADY:
            self._pod_status(pod, "Running", [{**base, "state": {"running": {}}}], ready=False)
            self._event(
                namespace,
                "Pod",
                name,
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
            )
        else:
            running = {**base, "state": {"running": {}}}
            self._pod_status(pod, "Running", [{**running, "ready": age >= 3}], ready=age >= 3)

    @staticmethod
    def _pod_status(pod, phase: str, statuses: list, ready: bool) -> None:
        pod.patch(
            {
                "status": {
                    "phase": phase,
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "containerStatuses": statuses,
                }
            }
        )

    async def _pod_log(self, request):
        match = POD_LOG_URL.match(request.url.path)
        pod = get_or_none(self.kmock.objects, (PODS, match.group(1), match.group(2))) if match else None
        if pod is None or pod.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        image = pod["spec"]["containers"][0]["image"]
        for part, text in self.logs.items():
            if part in image:
                return text.encode()
        return b""

    # --- the Progressing condition, graceful pod deletion, the metrics APIService

    def _state(self, name: str):
        """Per-cluster bookkeeping of the sections below, made on first use."""
        return self.__dict__.setdefault("_state_" + name, set() if name == "rs_created" else {})

    def _now(self) -> float:
        return self.steps * self.step_seconds

    def _stamp(self, seconds: float) -> str:
        return f"2025-01-01T{int(seconds) // 3600 % 24:02d}:{int(seconds) // 60 % 60:02d}:{int(seconds) % 60:02d}Z"

    def _progressing(self, key, dep, before: dict, rs_name: str) -> None:
        """The Deployment controller's Progressing condition (kubernetes pkg/controller/deployment
        progress.go syncRolloutStatus, sync.go getNewReplicaSet, util/deployment_util.go):
        a new ReplicaSet sets True NewReplicaSetCreated; a rollout back onto an existing
        ReplicaSet leaves whatever condition is there (FoundNewReplicaSet only when there is
        none); any progress (more updated/ready/available replicas, fewer old ones) sets True
        ReplicaSetUpdated and renews lastUpdateTime; complete is True NewReplicaSetAvailable;
        lastUpdateTime + progressDeadlineSeconds (600 unless set) passed without progress is
        False ProgressDeadlineExceeded, which then stays until progress or a new ReplicaSet.
        So a ProgressDeadlineExceeded from the previous generation is still there while
        observedGeneration < generation (this controller observes one step after an apply),
        and after that for a rollback to an existing ReplicaSet until its pods move."""
        status = plain_json(dep.get("status") or {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Progressing"]
        current = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), None)
        deadline = dep["spec"].get("progressDeadlineSeconds", 600)
        desired = int(dep["spec"].get("replicas", 1))
        now = self._now()
        times = self._state("progress_times")
        created = key in self._state("rs_created")
        self._state("rs_created").discard(key)

        def condition(status_: str, reason: str, message: str, keep_transition: bool = False) -> dict:
            times[key] = now
            transition = current.get("lastTransitionTime") if keep_transition and current else self._stamp(now)
            return {
                "type": "Progressing",
                "status": status_,
                "reason": reason,
                "message": message,
                "lastUpdateTime": self._stamp(now),
                "lastTransitionTime": transition,
            }

        if created:
            current = condition("True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"')
        complete_before = (
            current is not None
            and current.get("reason") == "NewReplicaSetAvailable"
            and status.get("replicas") == status.get("updatedReplicas")
        )
        old_before = int(before.get("replicas") or 0) - int(before.get("updatedReplicas") or 0)
        old_now = int(status.get("replicas") or 0) - int(status.get("updatedReplicas") or 0)
        progressed = (
            int(status.get("updatedReplicas") or 0) > int(before.get("updatedReplicas") or 0)
            or old_now < old_before
            or int(status.get("readyReplicas") or 0) > int(before.get("readyReplicas") or 0)
            or int(status.get("availableReplicas") or 0) > int(before.get("availableReplicas") or 0)
        )
        if complete_before:
            pass
        elif (
            status.get("updatedReplicas") == desired
            and status.get("replicas") == desired
            and status.get("availableReplicas") == desired
        ):
            current = condition(
                "True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.'
            )
        elif progressed and not created:
            keep = current is not None and current.get("status") == "True"
            current = condition("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.', keep)
        elif (
            current is not None
            and current.get("reason") not in ("NewReplicaSetAvailable", "ProgressDeadlineExceeded")
            and now - times.get(key, now) > deadline
        ):
            current = condition(
                "False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.'
            )
        if current is not None:
            dep.patch({"status": {"conditions": [*conditions, current]}})

    def _delete_gracefully(self, key) -> None:
        """What a pod DELETE does to a running pod: deletionTimestamp and deletionGracePeriodSeconds
        are set and the pod stays, phase Running and still Ready, while the kubelet sends SIGTERM
        and waits out terminationGracePeriodSeconds (30 s by default); `kubectl get pods` shows
        it Terminating with READY 1/1 (kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/
        #pod-termination; EndpointSlices mark it serving=true, ready=false, KEP-1672). Here it
        is gone after `pod_grace_steps` steps."""
        pod = self.kmock.objects[key]
        pod.patch({"metadata": {"deletionTimestamp": self._stamp(self._now() + 30), "deletionGracePeriodSeconds": 30}})
        self._state("grace")[key] = self.pod_grace_steps

    def _grace(self, key) -> None:
        left = self._state("grace")
        left[key] = left.get(key, self.pod_grace_steps) - 1
        if left[key] <= 0:
            del left[key]
            self.kmock.objects[key].delete()

    def metrics_apiservice(self, available: bool = True, reason: str = "MissingEndpoints") -> None:
        """The APIService v1beta1.metrics.k8s.io that metrics-server's manifest registers. The
        aggregator lists the group in discovery whatever its state; its Available condition
        says whether it answers (kube-aggregator's available_controller.go). The common kind
        case, metrics-server without --kubelet-insecure-tls, fails its readiness probe, so the
        Service has no ready endpoints: Available=False MissingEndpoints (kubernetes-sigs/
        metrics-server#1025, #1221); a backend that answers badly: FailedDiscoveryCheck. The HPA
        then reports ScalingActive=False FailedGetResourceMetric ("the server is currently
        unable to handle the request (get pods.metrics.k8s.io)")."""
        self.metrics_server = True
        self.kmock.resources.setdefault("metrics.k8s.io/v1beta1/pods", {})
        self.kmock.resources.setdefault("apiregistration.k8s.io/v1/apiservices", {})
        messages = {
            "MissingEndpoints": 'endpointslices for service/metrics-server in "kube-system" have no addresses '
            'with port name "https"',
            "FailedDiscoveryCheck": "failing or missing response from https://10.96.112.34:443/apis/metrics.k8s.io/"
            'v1beta1: Get "https://10.96.112.34:443/apis/metrics.k8s.io/v1beta1": dial tcp 10.96.112.34:443: '
            "connect: connection refused",
        }
        condition = (
            {"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"}
            if available
            else {"type": "Available", "status": "False", "reason": reason, "message": messages[reason]}
        )
        self.kmock.objects[APISERVICES, None, METRICS_APISERVICE] = {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": METRICS_APISERVICE, "labels": {"k8s-app": "metrics-server"}},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "insecureSkipTLSVerify": True,
            },
            "status": {"conditions": [{**condition, "lastTransitionTime": "2025-01-01T00:00:00Z"}]},
        }

    def _metrics_api_available(self) -> bool:
        obj = get_or_none(self.kmock.objects, (APISERVICES, None, METRICS_APISERVICE))
        conditions = (obj.get("status") or {}).get("conditions") or [] if obj is not None and not obj.deleted else []
        return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)

    # --- what tests look at

    def pods(self, namespace: str = "pizzactl", app: str = "pizzactl-model") -> list:
        return [
            p for _, p in self._live(PODS, namespace) if p["metadata"]["labels"].get("app.kubernetes.io/name") == app
        ]

    def ready_images(self, namespace: str = "pizzactl", app: str = "pizzactl-model") -> set[str]:
        """Images of the pods a Service sends traffic to: Ready and not Terminating (EndpointSlice
        `ready` is false for a terminating endpoint, kubernetes.io/docs/concepts/services-networking/endpoint-slices)."""
        return {
            p["spec"]["containers"][0]["image"]
            for p in self.pods(namespace, app)
            if _ready(p) and not is_terminating(p)
        }


def is_terminating(pod) -> bool:
    """A pod the API server marked for deletion (metadata.deletionTimestamp set)."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _ready(pod) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def mark_rolled_out(emulator, namespace: str = "pizzactl") -> list[str]:
    """Jump every Deployment to rolled out at its HPA minimum (for tests that are not about rollouts)."""
    minimum = {}
    for (resource, ns, _name), obj in list(emulator.objects.items()):
        if resource == HPAS and ns == namespace and not obj.deleted:
            minimum[obj["spec"]["scaleTargetRef"]["name"]] = obj["spec"].get("minReplicas", 1)
    done = []
    for (resource, ns, name), obj in list(emulator.objects.items()):
        if resource == DEPLOYMENTS and ns == namespace and not obj.deleted:
            n = max((obj.get("spec") or {}).get("replicas") or 1, minimum.get(name, 1))
            generation = obj["metadata"].get("generation", 1)
            obj.patch(
                {
                    "spec": {"replicas": n},
                    "status": {
                        "observedGeneration": generation,
                        "replicas": n,
                        "updatedReplicas": n,
                        "readyReplicas": n,
                        "availableReplicas": n,
                    },
                }
            )
            done.append(name)
    return done


# --- the fake kind ---------------------------------------------------------------------------------

FAKE_KIND = r'''#!{python}
"""A fake `kind` for tests: see tests/support/k8s_fakes.py for the real behaviour it imitates."""
import json, os, socket, subprocess, sys
from pathlib import Path

home = Path(os.environ["FAKE_KIND_HOME"])
home.mkdir(parents=True, exist_ok=True)
args = sys.argv[1:]
call = {{"args": args}}
if "--config" in args:
    call["config"] = Path(args[args.index("--config") + 1]).read_text()
with open(home / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(call) + "\n")
clusters_file = home / "clusters"
clusters = clusters_file.read_text().split() if clusters_file.exists() else []
fail = os.environ.get("FAKE_KIND_FAIL", "")
if fail and " ".join(args).startswith(fail):
    sys.stderr.write("ERROR: failed to create cluster: node(s) already exist for a cluster with the name\n")
    sys.exit(1)

def name():
    return args[args.index("--name") + 1] if "--name" in args else "kind"

import time
STEPS = ["Ensuring node image (kindest/node:v1.32.2) 🖼", "Preparing nodes 📦", "Writing configuration 📜",
         "Starting control-plane 🕹️", "Installing CNI 🔌", "Installing StorageClass 💾"]

def in_node():
    loaded = home / (name() + ".loaded")
    return loaded.read_text().split() if loaded.exists() else []

def ctr_import_fails():
    node = name() + "-control-plane"
    sys.stderr.write(
        f"ERROR: failed to load image: command \"docker exec --privileged -i {{node}} ctr --namespace=k8s.io images "
        "import --all-platforms --digests --snapshotter=overlayfs -\" failed with error: exit status 1\n"
        "Command Output: ctr: content digest sha256:82014a3cbf22d2e03382cd9b123f4151d956986e727340a466406a206408b7a2: "
        "not found\n")
    sys.exit(1)

HOLDER = """
import socket, sys, threading
from pathlib import Path
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2]))); sock.listen(16)
backend_file = Path(sys.argv[3])
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
while True:
    conn, _ = sock.accept()
    backend = backend_file.read_text().strip() if backend_file.exists() else ""
    if not backend:
        conn.close()  # docker-proxy with nothing behind the NodePort: the connection is reset
        continue
    host, port = backend.rsplit(":", 1)
    try:
        up = socket.create_connection((host, int(port)), timeout=5)
    except OSError:
        conn.close()
        continue
    threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
    threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
"""

def present_locally(image):
    listed = home / "images"
    if listed.exists() and image in listed.read_text().split():
        return True
    try:  # kind runs `docker image inspect IMAGE` against the daemon DOCKER_HOST (or the default) names
        import docker
        docker.from_env(timeout=10).api.inspect_image(image)
        return True
    except Exception:
        return False

if args[:1] == ["version"]:
    print("kind v0.27.0 go1.23.6 linux/amd64")
elif args[:2] == ["get", "clusters"]:
    print("\n".join(clusters) if clusters else "No kind clusters found.", file=sys.stdout if clusters else sys.stderr)
elif args[:2] == ["create", "cluster"]:
    import yaml
    if name() in clusters:
        sys.stderr.write(f'ERROR: failed to create cluster: node(s) already exist for a cluster with the name "{{name()}}"\n')
        sys.exit(1)
    config = yaml.safe_load(call.get("config") or "{{}}") or {{}}
    mappings = [m for n in config.get("nodes", []) for m in n.get("extraPortMappings", [])]
    holders = []
    bindings = {{}}
    for m in mappings:
        address, port = m.get("listenAddress", "0.0.0.0"), m["hostPort"]
        if not port:  # kind: "get a random port if necessary (port = 0)"
            with socket.socket() as free:
                free.bind((address, 0))
                port = free.getsockname()[1]
        bindings[f"{{m['containerPort']}}/tcp"] = [{{"HostIp": address, "HostPort": str(port)}}]
        probe = socket.socket(); probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            for pid in holders:
                os.kill(pid, 15)
            sys.stderr.write(
                "Creating cluster \"" + name() + "\" ...\n ✗ Preparing nodes 📦\n"
                "Deleted nodes: [\"" + name() + "-control-plane\"]\n"
                "ERROR: failed to create cluster: command \"docker run --name " + name() + "-control-plane "
                f"--publish={{address}}:{{port}}:{{m['containerPort']}}/TCP kindest/node:v1.32.2\" failed with error: exit status 125\n"
                "Command Output: docker: Error response from daemon: driver failed programming external connectivity "
                f"on endpoint {{name()}}-control-plane: Bind for {{address}}:{{port}} failed: port is already allocated.\n")
            sys.exit(1)
        finally:
            probe.close()
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, address, str(port), str(home / (name() + ".backend"))],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        holders.append(proc.pid)
        import time
        for _ in range(200):  # kind returns once the node container publishes its ports
            with socket.socket() as check:
                if check.connect_ex((address if address != "0.0.0.0" else "127.0.0.1", port)) == 0:
                    break
            time.sleep(0.025)
    (home / (name() + ".pids")).write_text("\n".join(map(str, holders)))
    (home / (name() + ".node.json")).write_text(json.dumps({{"Name": "/" + name() + "-control-plane",
        "HostConfig": {{"PortBindings": bindings}}, "State": {{"Running": True}}}}))
    clusters_file.write_text("\n".join(clusters + [name()]))
    server = os.environ.get("FAKE_KIND_SERVER")
    if server:
        kubeconfig = Path(os.environ["KUBECONFIG"])
        ctx = "kind-" + name()
        kubeconfig.write_text(yaml.safe_dump({{"apiVersion": "v1", "kind": "Config",
            "clusters": [{{"name": ctx, "cluster": {{"server": server}}}}],
            "users": [{{"name": ctx, "user": {{"token": "kind"}}}}],
            "contexts": [{{"name": ctx, "context": {{"cluster": ctx, "user": ctx}}}}],
            "current-context": ctx}}))
    sys.stderr.write(f'Creating cluster "{{name()}}" ...\n')
    for step in STEPS:  # kind without a terminal: " • STEP  ..." when it starts, " ✓ STEP" when done
        sys.stderr.write(f" • {{step}}  ...\n"); sys.stderr.flush()
        time.sleep(float(os.environ.get("FAKE_KIND_STEP_SECONDS", "0")))
        sys.stderr.write(f" ✓ {{step}}\n"); sys.stderr.flush()
    sys.stderr.write(f'Set kubectl context to "kind-{{name()}}"\n')
elif args[:2] == ["get", "nodes"]:
    if name() in clusters:
        print(name() + "-control-plane")
    else:
        sys.stderr.write(f'No kind nodes found for cluster "{{name()}}".\n')
elif args[:2] == ["delete", "cluster"]:
    pids = home / (name() + ".pids")
    for pid in (pids.read_text().split() if pids.exists() else []):
        try:
            os.kill(int(pid), 15)
        except OSError:
            pass
    pids.unlink(missing_ok=True)
    (home / (name() + ".loaded")).unlink(missing_ok=True)
    (home / (name() + ".node.json")).unlink(missing_ok=True)
    clusters_file.write_text("\n".join(c for c in clusters if c != name()))
    print(f"Deleting cluster \"{{name()}}\" ...", file=sys.stderr)
elif args[:2] == ["load", "docker-image"]:
    image = args[2]
    if name() not in clusters:
        sys.stderr.write(f"ERROR: no nodes found for cluster \"{{name()}}\"\n")
        sys.exit(1)
    if not present_locally(image):
        sys.stderr.write(f"ERROR: image: \"{{image}}\" not present locally\n")
        sys.exit(1)
    if image in in_node():
        print(f"Image: \"{{image}}\" with ID \"sha256:0123\" found to be already present on all nodes.", file=sys.stderr)
        sys.exit(0)
    print(f"Image: \"{{image}}\" with ID \"sha256:0123\" not yet present on node \"{{name()}}-control-plane\", loading...",
          file=sys.stderr)
    if (home / "containerd-store").exists():  # docker save of the containerd store names absent platforms
        ctr_import_fails()
    with open(home / (name() + ".loaded"), "a") as fh:
        fh.write(image + "\n")
elif args[:2] == ["load", "image-archive"]:
    import tarfile
    if name() not in clusters:
        sys.stderr.write(f"ERROR: no nodes found for cluster \"{{name()}}\"\n")
        sys.exit(1)
    try:
        with tarfile.open(args[2]) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            index = json.load(tar.extractfile("index.json"))
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        sys.stderr.write(f"ERROR: failed to load image: {{exc}}\n")
        sys.exit(1)
    if len(index.get("manifests", [])) > 1 and (home / "containerd-store").exists():
        ctr_import_fails()  # --all-platforms: the other platforms' content is not in the archive
    with open(home / (name() + ".loaded"), "a") as fh:
        fh.write("".join(tag + "\n" for entry in manifest for tag in entry.get("RepoTags", [])))
else:
    sys.stderr.write("unknown command\n")
    sys.exit(2)
'''


def install_fake_kind(bin_dir: Path, home: Path, *, docker_cli: bool = False) -> Path:
    """The fake `kind` on PATH, and with `docker_cli` beside it the fake `docker` CLI that reaches its nodes."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    kind = bin_dir / "kind"
    kind.write_text(FAKE_KIND.format(python=sys.executable))
    kind.chmod(0o755)
    if docker_cli:
        cli = bin_dir / "docker"
        cli.write_text(FAKE_DOCKER_CLI.format(python=sys.executable))
        cli.chmod(0o755)
    os.environ["FAKE_KIND_HOME"] = str(home)  # the caller's monkeypatch restores the environment
    return kind


def kind_calls(home: Path) -> list[dict]:
    path = home / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def add_local_images(home: Path, *images: str) -> None:
    """What `docker image inspect` would find on the host, for the fake kind's `load`."""
    with open(home / "images", "a") as fh:
        fh.write("".join(image + "\n" for image in images))


def loaded_images(home: Path, cluster: str) -> set[str]:
    path = home / (cluster + ".loaded")
    return set(path.read_text().split()) if path.exists() else set()


def stop_fake_clusters(home: Path) -> None:
    """Kill the port holders of clusters a test left behind."""
    for pids in home.glob("*.pids"):
        for pid in pids.read_text().split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGTERM)


# --- the API server's write path: server-side apply, admission, RBAC -------------------------------

SERVICEACCOUNTS = kmock.resource("v1/serviceaccounts")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
# Keys of the associative lists pizzactl's objects contain (the `+listMapKey`s of the API types:
# containers, env, volumes, imagePullSecrets by name, volumeMounts by mountPath, ports by
# containerPort or port, conditions by type); any other list is atomic (owned and replaced whole).
_LIST_KEYS = ("name", "mountPath", "containerPort", "port", "type")
_ABSENT = object()


def server_side_apply(emulator, request, key, body: dict, creating: bool) -> dict:
    """Server-side apply with managed fields (kubernetes.io/docs/reference/using-api/server-side-apply/).

    The API server remembers, per field manager, the set of fields it applied
    (metadata.managedFields). An apply by a manager:
    - conflicts with another manager that owns a field it sets to a different value: 409
      Conflict "Apply failed with N conflict(s): conflict with "M" using V: .spec.x", unless
      force=true, which moves the field to the applier ("Conflicts" in the docs);
    - removes every field it owned in its previous apply and leaves out now, unless another
      manager owns it too ("Field management": "If a field is removed from the applied
      configuration ... removed from the object when no other manager owns it");
    - merges associative lists (containers, env, imagePullSecrets... keyed by name) item by
      item and replaces atomic lists whole ("Merge strategy").
    Approximations: a field is a path of map keys and list-item keys (`_LIST_KEYS`, not each
    type's schema); fields that controllers and API defaulting set belong to no manager here
    (the real server records them under their own managers, which an apply never removes either);
    a Secret's `stringData` is merged into `data` and dropped, as the v1 -> internal conversion
    does (pkg/apis/core/v1/conversion.go), so the applier owns `stringData.K` fields that are
    never stored: leaving a key out later removes nothing (kubernetes/kubernetes#108008).

    Returns the body to store: the whole object when creating, else a kmock patch (None deletes).
    """
    manager = request.params.get("fieldManager") or "unknown"
    force = str(request.params.get("force", "")).lower() == "true"
    owners = emulator.managed_fields.setdefault(key, {})
    if creating:
        owners.clear()
        current: dict = {}
    else:
        current = plain_json(emulator.objects[key].raw)
    applied = field_paths(body)
    conflicts = []
    for other, owned in owners.items():
        if other == manager:
            continue
        for path in sorted(owned & applied, key=str):
            if path and isinstance(path[-1], tuple):
                continue  # owning a list item's existence conflicts with nobody
            if _lookup(current, path) not in (_ABSENT, _lookup(body, path)):
                conflicts.append((other, path))
    if conflicts and not force:
        version = body.get("apiVersion", "v1")
        lines = [f'conflict with "{m}" using {version}: {_dotted(p)}' for m, p in conflicts]
        many = f"{len(lines)} conflicts" if len(lines) > 1 else "1 conflict"
        message = f"Apply failed with {many}: " + ("\n".join(lines) if len(lines) > 1 else lines[0])
        causes = [
            {"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {version}', "field": _dotted(p)}
            for m, p in conflicts
        ]
        raise kmock.KubernetesError(status=409, reason="Conflict", message=message, details={"causes": causes})
    for other, path in conflicts:  # force: the applier takes them over
        owners[other].discard(path)
    merged = _merge(json.loads(json.dumps(current)), body)  # a copy: `current` is compared below
    others = set().union(*(owned for m, owned in owners.items() if m != manager)) if owners else set()
    for path in sorted(owners.get(manager, set()) - applied, key=len):  # a list item before its fields
        if not any(q[: len(path)] == path for q in others):
            _remove(merged, path)
    owners[manager] = applied
    if key[0] == SECRETS and "stringData" in merged:
        import base64

        data = dict(merged.get("data") or {})
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in merged.pop("stringData").items()})
        merged["data"] = data
    return merged if creating else _replacement(current, merged)


def _list_key(value) -> str | None:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for key in _LIST_KEYS:
            if all(key in v for v in value):
                return key
    return None


def field_paths(value, prefix: tuple = ()) -> set[tuple]:
    """The fields an applied configuration sets: paths of map keys and (key, value) list items."""
    if isinstance(value, dict):
        if not value:
            return {prefix}
        paths: set[tuple] = set()
        for k, v in value.items():
            paths |= field_paths(v, (*prefix, k))
        return paths
    key = _list_key(value)
    if key is None:
        return {prefix}
    paths = set()
    for item in value:
        at = (*prefix, (key, item[key]))
        paths.add(at)
        paths |= field_paths(item, at)
    return paths


def _dotted(path: tuple) -> str:
    """A field path as the API server's conflict messages print it: .spec.containers[name="app"].image"""
    return "".join(f"[{p[0]}={json.dumps(p[1])}]" if isinstance(p, tuple) else f".{p}" for p in path)


def _lookup(obj, path: tuple):
    for part in path:
        if isinstance(part, tuple):
            found = (
                [i for i in obj if isinstance(i, dict) and i.get(part[0]) == part[1]] if isinstance(obj, list) else []
            )
            if not found:
                return _ABSENT
            obj = found[0]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return _ABSENT
    return obj


def _remove(obj, path: tuple) -> None:
    """Remove a field, and the map or list it leaves empty (nothing is left to own there)."""
    parent, last = _lookup(obj, path[:-1]), path[-1]
    if isinstance(last, tuple) and isinstance(parent, list):
        parent[:] = [i for i in parent if not (isinstance(i, dict) and i.get(last[0]) == last[1])]
    elif isinstance(parent, dict) and last in parent:
        parent.pop(last)
    else:
        return
    if not parent and len(path) > 1:
        _remove(obj, path[:-1])


def _merge(current, applied):
    if isinstance(current, dict) and isinstance(applied, dict):
        merged = dict(current)
        for k, v in applied.items():
            merged[k] = _merge(current[k], v) if k in current else json.loads(json.dumps(v))
        return merged
    key = _list_key(applied)
    if key is not None and isinstance(current, list) and _list_key(current) in (key, None):
        items = list(current)
        for item in applied:
            at = next((i for i, c in enumerate(items) if isinstance(c, dict) and c.get(key) == item[key]), None)
            if at is None:
                items.append(json.loads(json.dumps(item)))
            else:
                items[at] = _merge(items[at], item)
        return items
    return json.loads(json.dumps(applied))


def _replacement(old: dict, new: dict) -> dict:
    """The kmock patch that turns `old` into `new` (None deletes a key; lists are replaced)."""
    patch: dict = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k in old and isinstance(old[k], dict) and isinstance(v, dict):
            sub = _replacement(old[k], v)
            if sub:
                patch[k] = sub
        elif k not in old or old[k] != v:
            patch[k] = v
    return patch


def pod_admission(emulator, namespace: str, pod: dict) -> str | None:
    """Why the API server refuses to create this pod (403 Forbidden), or None.

    ServiceAccount admission (plugin/pkg/admission/serviceaccount/admission.go) looks up the
    pod's service account (`default` when unset) whether or not a token is mounted; the
    namespace controller creates `default` only a moment after the namespace, so a pod created
    right after its namespace is refused: 'pods "X" is forbidden: error looking up service
    account NS/default: serviceaccount "default" not found' (kubernetes/kubernetes#66689).
    Pod Security admission then checks the pod against the namespace's
    pod-security.kubernetes.io/enforce level (`pod_security_violations`).
    """
    name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "")
    spec = pod.get("spec") or {}
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    sa = get_or_none(emulator.objects, (SERVICEACCOUNTS, namespace, account))
    if sa is None or sa.deleted:
        return (
            f'pods "{name}" is forbidden: error looking up service account {namespace}/{account}: '
            f'serviceaccount "{account}" not found'
        )
    ns = get_or_none(emulator.objects, (NAMESPACES, None, namespace))
    level = (
        ((ns.get("metadata") or {}).get("labels") or {}).get(ENFORCE_LABEL)
        if ns is not None and not ns.deleted
        else None
    )
    violations = pod_security_violations(spec, level)
    if violations:
        return f'pods "{name}" is forbidden: violates PodSecurity "{level}:latest": ' + ", ".join(violations)
    return None


def pod_security_violations(spec: dict, level: str | None) -> list[str]:
    """Pod Security Standards checks, in the words of k8s.io/pod-security-admission/policy
    (kubernetes.io/docs/concepts/security/pod-security-standards/): baseline's privileged,
    hostPath and host namespaces; restricted's allowPrivilegeEscalation, capabilities,
    runAsNonRoot, runAsUser=0 and seccompProfile. Only the checks pizzactl's pods meet."""
    if level not in ("baseline", "restricted"):
        return []
    pod_sc = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]

    def named(names: list[str]) -> str:
        quoted = ", ".join(f'"{n}"' for n in names)
        return f"container {quoted}" if len(names) == 1 else f"containers {quoted}"

    out = []
    privileged = [c["name"] for c in containers if (c.get("securityContext") or {}).get("privileged")]
    if privileged:
        out.append(f"privileged ({named(privileged)} must not set securityContext.privileged=true)")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f'restricted volume types (volume "{volume["name"]}" uses restricted volume type "hostPath")')
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        out.append("host namespaces (hostNetwork=true)")
    if level != "restricted":
        return out
    escalating = [
        c["name"] for c in containers if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False
    ]
    if escalating:
        out.append(
            f"allowPrivilegeEscalation != false ({named(escalating)} must set securityContext.allowPrivilegeEscalation=false)"
        )
    unrestricted = [
        c["name"]
        for c in containers
        if "ALL" not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])
    ]
    if unrestricted:
        out.append(
            f'unrestricted capabilities ({named(unrestricted)} must set securityContext.capabilities.drop=["ALL"])'
        )
    root = [
        c["name"]
        for c in containers
        if (c.get("securityContext") or {}).get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True
    ]
    if root:
        out.append(f"runAsNonRoot != true (pod or {named(root)} must set securityContext.runAsNonRoot=true)")
    if pod_sc.get("runAsUser") == 0:
        out.append("runAsUser=0 (pod must not set runAsUser=0)")
    seccomp_ok = ("RuntimeDefault", "Localhost")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    unconfined = [
        c["name"]
        for c in containers
        if ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type", pod_seccomp) not in seccomp_ok
    ]
    if unconfined:
        out.append(
            f"seccompProfile (pod or {named(unconfined)} must set securityContext.seccompProfile.type to "
            '"RuntimeDefault" or "Localhost")'
        )
    return out


def authorize(emulator, request, resource: str, group: str | None, name: str | None) -> None:
    """RBAC for a namespace-scoped identity (`emulator.scoped_to`): a RoleBinding in that namespace
    to a Role over its objects, nothing at cluster scope. Nodes and Namespace objects (get, apply,
    delete) and other namespaces are 403 Forbidden with the authorizer's message
    (k8s.io/apiserver .../handlers/responsewriters/errors.go ForbiddenStatus):
    'nodes is forbidden: User "U" cannot list resource "nodes" in API group "" at the cluster scope'.
    Discovery (/api, /apis) stays open, as the system:discovery role allows every user.
    (A RoleBinding to the built-in `view`/`admin` ClusterRoles would allow reading one's own
    Namespace object; this models a narrower Role, the case the brief asks for.)"""
    if emulator.scoped_to is None:
        return
    method = str(request.method.value if hasattr(request.method, "value") else request.method).lower()
    verb = {
        "get": "get" if name else "list",
        "patch": "patch",
        "post": "create",
        "put": "update",
        "delete": "delete",
    }.get(method, method)
    if verb == "list" and str(request.params.get("watch", "")).lower() in ("true", "1"):
        verb = "watch"
    namespace = None if resource in ("namespaces", "nodes") else request.namespace
    if resource == "namespaces" and name:
        namespace = name  # a Namespace object is authorized in its own namespace
    if resource not in ("namespaces", "nodes") and namespace == emulator.scoped_to:
        return
    group = group or ""
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = f'{subject} is forbidden: User "{emulator.user}" cannot {verb} resource "{resource}" in API group "{group}" {where}'
    details = {"name": name or "", "group": group, "kind": resource}
    raise kmock.KubernetesError(status=403, reason="Forbidden", message=message, details=details)


# --- the docker CLI as kind's nodes see it -------------------------------------------------------

FAKE_DOCKER_CLI = r'''#!{python}
"""A fake `docker` CLI for tests: `docker save` and `docker exec NODE crictl ...` on the fake kind's
nodes (the node is a container: its images are FAKE_KIND_HOME/<cluster>.loaded). See tests/support/k8s_fakes.py."""
import hashlib, io, json, os, sys, tarfile
from pathlib import Path

home = Path(os.environ["FAKE_KIND_HOME"])
args = sys.argv[1:]
with open(home / "docker-calls.jsonl", "a") as fh:
    fh.write(json.dumps(args) + "\n")
KIND_IMAGES = ["docker.io/kindest/kindnetd:v20250214-acbabc1a", "registry.k8s.io/coredns/coredns:v1.11.3",
               "registry.k8s.io/etcd:3.5.16-0", "registry.k8s.io/pause:3.10"]

def present_locally(image):
    listed = home / "images"
    if listed.exists() and image in listed.read_text().split():
        return True
    try:
        import docker
        docker.from_env(timeout=10).api.inspect_image(image)
        return True
    except Exception:
        return False

def api_version():
    try:
        import docker
        return docker.from_env(version="auto", timeout=10).version()["ApiVersion"]
    except Exception:
        return os.environ.get("FAKE_DOCKER_API_VERSION", "1.48")

def normalized(ref):  # what containerd's CRI calls an image (docker.io/library/ for short names)
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return ("docker.io/" + ref) if "/" in ref else ("docker.io/library/" + ref)

def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)

if args[:1] == ["save"]:
    platform, output, images, rest = None, None, [], args[1:]
    while rest:
        arg = rest.pop(0)
        if arg == "--platform":
            platform = rest.pop(0)
        elif arg.startswith("--platform="):
            platform = arg.split("=", 1)[1]
        elif arg in ("-o", "--output"):
            output = rest.pop(0)
        else:
            images.append(arg)
    version = api_version()
    if platform and tuple(map(int, version.split("."))) < (1, 48):
        fail(f'"--platform" requires API version 1.48, but the Docker daemon API version is {{version}}')
    for image in images:
        if not present_locally(image):
            fail(f"Error response from daemon: No such image: {{image}}")
    os_, _, arch = (platform or "linux/amd64").partition("/")
    manifests = [{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "1" * 64,
                   "platform": {{"os": os_, "architecture": arch}}}}]
    if platform is None and (home / "containerd-store").exists():  # the whole index, absent content included
        manifests.append({{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "2" * 64,
                          "platform": {{"os": "unknown", "architecture": "unknown"}},
                          "annotations": {{"vnd.docker.reference.type": "attestation-manifest"}}}})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, data in (("manifest.json", [{{"Config": "blobs/sha256/" + "3" * 64, "RepoTags": images, "Layers": []}}]),
                             ("index.json", {{"schemaVersion": 2, "manifests": manifests}}),
                             ("oci-layout", {{"imageLayoutVersion": "1.0.0"}})):
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    if output:
        Path(output).write_bytes(buffer.getvalue())
    else:
        sys.stdout.buffer.write(buffer.getvalue())
elif args[:1] == ["exec"]:
    rest = [a for a in args[1:] if a not in ("-i", "-t", "--privileged")]
    node, command = rest[0], rest[1:]
    cluster = node.removesuffix("-control-plane")
    if not (home / (cluster + ".node.json")).exists():
        fail(f"Error response from daemon: No such container: {{node}}")
    loaded_file = home / (cluster + ".loaded")
    loaded = loaded_file.read_text().split() if loaded_file.exists() else []
    if command[:2] == ["crictl", "images"]:
        tags = KIND_IMAGES + sorted({{normalized(r) for r in loaded}})
        if "-o" in command and command[command.index("-o") + 1] == "json":
            print(json.dumps({{"images": [{{"id": "sha256:" + hashlib.sha256(t.encode()).hexdigest(), "repoTags": [t], "repoDigests": [],
                                         "size": "123000000", "pinned": t in KIND_IMAGES}} for t in tags]}}, indent=2))
        else:
            print(f"{{'IMAGE':<50}} {{'TAG':<30}} {{'IMAGE ID':<15}} SIZE")
            for t in tags:
                repo, _, tag = t.rpartition(":")
                print(f"{{repo:<50}} {{tag:<30}} {{'0123456789ab':<15}} 123MB")
    elif command[:2] == ["crictl", "rmi"]:
        errored = False
        for ref in command[2:]:
            matching = [r for r in loaded if normalized(r) == normalized(ref)]
            if not matching:
                sys.stderr.write(f'time="2025-01-01T00:00:00Z" level=error msg="no such image {{ref}}"\n')
                errored = True
                continue
            loaded = [r for r in loaded if normalized(r) != normalized(ref)]
            print(f"Deleted: {{normalized(ref)}}")
        loaded_file.write_text("".join(r + "\n" for r in loaded))
        if errored:
            fail('time="2025-01-01T00:00:00Z" level=fatal msg="unable to remove the image(s)"')
    else:
        fail(f"OCI runtime exec failed: exec: {{command[0]!r}}: executable file not found in $PATH")
else:
    fail(f"docker: unknown command: docker {{' '.join(args[:1])}}")
'''


def use_containerd_store(home: Path) -> None:
    """Make the fake Docker behave as with the containerd image store (see the module docstring)."""
    (home / "containerd-store").write_text("")


def node_images(home: Path, cluster: str) -> list[str]:
    """What `docker exec <cluster>-control-plane crictl images` lists (FAKE_DOCKER_CLI prints the
    same): kind's own images, then every image loaded and not removed, as containerd names them."""
    loaded = home / (cluster + ".loaded")
    refs = loaded.read_text().split() if loaded.exists() else []
    return KIND_NODE_IMAGES + sorted({_normalized(r) for r in refs})


def _normalized(ref: str) -> str:
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return ("docker.io/" + ref) if "/" in ref else ("docker.io/library/" + ref)


KIND_NODE_IMAGES = [
    "docker.io/kindest/kindnetd:v20250214-acbabc1a",
    "registry.k8s.io/coredns/coredns:v1.11.3",
    "registry.k8s.io/etcd:3.5.16-0",
    "registry.k8s.io/pause:3.10",
]


def docker_cli_calls(home: Path) -> list[list[str]]:
    path = home / "docker-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
