"""Rollouts on a cluster that behaves like a real one (tests/support/k8s_fakes.FakeCluster).

The Kubernetes client runs unpatched against kmock; FakeCluster plays the Deployment,
ReplicaSet, HPA and namespace controllers and the kubelet over time. Images are given, not
built: these tests are about what happens in the cluster.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from pizzactl.deploy import state as state_mod
from pizzactl.deploy.targets import cluster
from pizzactl.errors import DeployError
from pizzactl.kube import k8s

from support.cluster_fixtures import cluster_settings as _settings
from support.cluster_fixtures import release_images as _images
from support.k8s_fakes import (
    CRASH,
    DEPLOYMENTS,
    HPAS,
    NAMESPACES,
    PODS,
    PULL,
    REFUSED,
    SECRETS,
    UNREADY,
    ApplyingEmulator,
    FakeCluster,
    write_kubeconfig,
)

pytestmark = pytest.mark.kmock(cls=ApplyingEmulator)
NS = "pizzactl"
NAMES = ["pizzactl-model", "pizzactl-gateway"]


@pytest.fixture
def fake(kmock, isolated, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(isolated / "kubeconfig", str(kmock.url).rstrip("/"), "prod")))
    return FakeCluster(kmock)


@pytest.fixture
async def running(fake):
    task = asyncio.create_task(fake.run(0.02))
    yield fake
    task.cancel()


async def _release(settings, images, timeout=20.0):
    return await asyncio.to_thread(cluster.release, settings, images, timeout)


def _model_image(kmock) -> str:
    return kmock.objects[DEPLOYMENTS, NS, "pizzactl-model"]["spec"]["template"]["spec"]["containers"][0]["image"]


# --- 1. rollout status as kubectl means it --------------------------------------------------------


async def test_old_replicas_still_running_means_the_rollout_is_not_done(kmock, fake):
    """kubectl: done needs observedGeneration >= generation, updated == replicas == desired and
    available >= updated. Numbers that look done while an old pod still runs are not done."""
    api = k8s.connect("prod")
    settings = _settings()
    await asyncio.to_thread(k8s.apply, api, cluster.render(settings, _images(1)))
    dep = kmock.objects[DEPLOYMENTS, NS, "pizzactl-model"]
    status = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    dep.patch({"status": status})
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 0.3, 0.05)
    assert "1 old replicas are pending termination" in info.value.message
    dep.patch({"metadata": {"generation": 2}, "status": {"replicas": 1}})
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 0.3, 0.05)
    assert "spec update to be observed" in info.value.message


async def test_a_new_version_that_never_gets_ready_fails_and_the_previous_keeps_serving(kmock, running):
    settings = _settings()
    first = await _release(settings, _images(1))
    assert first["model_version"] == 1 and first["serving"] == {1: 1}

    running.behave("pizzactl-model:v2", CRASH, log="Loading /models/pizza/2\nOSError: SavedModel file does not exist\n")
    with pytest.raises(DeployError) as info:
        await _release(settings, _images(2, "b"), timeout=2.0)
    message = info.value.message
    assert "container model is crashing (CrashLoopBackOff; exit code 1, Error)" in message
    assert "OSError: SavedModel file does not exist" in message
    assert "version 1 keeps serving" in message and "pizzactl rollback" in info.value.hint
    assert running.ready_images() == {_images(1).model_image}  # maxUnavailable 0: the old pod stays
    recorded = state_mod.load(settings)
    assert recorded.model_version == 1 and recorded.extra["failed"]["model_version"] == 2
    st = await asyncio.to_thread(cluster.status, settings, recorded)
    assert st["serving"] == {1: 1} and st["ready"] is True


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (PULL, "cannot be pulled (ErrImagePull"),
        (UNREADY, "Readiness probe failed: HTTP probe failed with statuscode: 503"),
        (REFUSED, 'FailedCreate: Error creating: pods "'),
    ],
)
async def test_each_way_a_pod_stays_unready_is_explained(running, how, expected):
    running.behave("pizzactl-model", how)
    with pytest.raises(DeployError) as info:
        await _release(_settings(), _images(1), timeout=1.5)
    assert (
        expected in info.value.message or expected.replace("(ErrImagePull", "(ImagePullBackOff") in info.value.message
    )


# --- 8. the HPA and metrics-server ----------------------------------------------------------------


async def test_the_rollout_waits_for_the_hpa_minimum_and_says_metrics_server_is_missing(kmock, running):
    result = await _release(_settings(), _images(1))
    gateway = result["deployments"]["pizzactl-gateway"]
    assert gateway["ready"] == gateway["desired"] == 2  # the HPA raised 1 -> 2 (minReplicas) before we returned
    assert result["autoscaling"]["metrics_server"] is False
    assert "metrics-server" in result["autoscaling"]["message"] and "minReplicas" in result["autoscaling"]["message"]
    hpa = kmock.objects[HPAS, NS, "pizzactl-gateway"]
    assert hpa["status"]["desiredReplicas"] == 2


async def test_with_metrics_server_autoscaling_is_reported_active(kmock, isolated, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(isolated / "kc", str(kmock.url).rstrip("/"), "prod")))
    fake = FakeCluster(kmock, metrics_server=True)
    assert await asyncio.to_thread(k8s.metrics_available, k8s.connect("prod")) is True
    task = asyncio.create_task(fake.run(0.02))
    try:
        result = await _release(_settings(), _images(1))
    finally:
        task.cancel()
    assert result["autoscaling"]["metrics_server"] is True


# --- 4. redeploy right after teardown ---------------------------------------------------------------


async def test_applying_into_a_terminating_namespace_says_so_not_permissions(kmock, fake):
    api = k8s.connect("prod")
    docs = cluster.render(_settings(), _images(1))
    await asyncio.to_thread(k8s.apply, api, docs)
    await asyncio.to_thread(k8s.delete_namespace, api, NS)
    fake.step()  # the namespace controller deletes the contents; the namespace stays Terminating
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.apply, api, docs)
    assert "still being deleted" in info.value.message
    assert "permissions" not in info.value.hint


async def test_a_redeploy_right_after_teardown_waits_out_the_terminating_namespace(kmock, running):
    settings = _settings()
    await _release(settings, _images(1))
    await asyncio.to_thread(cluster.teardown, settings, state_mod.load(settings))
    state_mod.clear(settings)
    result = await _release(settings, _images(1))
    assert result["serving"] == {1: 1}


# --- 3 and 9. remove only what pizzactl created -----------------------------------------------------


async def test_teardown_keeps_a_namespace_pizzactl_did_not_create(kmock, running):
    kmock.objects[NAMESPACES, None, NS] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    settings = _settings()
    await _release(settings, _images(1))
    assert state_mod.load(settings).extra["created_namespace"] is False
    result = await asyncio.to_thread(cluster.teardown, settings, state_mod.load(settings))
    assert not kmock.objects[NAMESPACES, None, NS].deleted
    assert kmock.objects[DEPLOYMENTS, NS, "pizzactl-model"].deleted
    assert "kept namespace pizzactl" in result["message"]


async def test_teardown_deletes_a_namespace_pizzactl_created(kmock, running):
    settings = _settings()
    await _release(settings, _images(1))
    assert state_mod.load(settings).extra["created_namespace"] is True
    await asyncio.to_thread(cluster.teardown, settings, state_mod.load(settings))
    assert kmock.objects[NAMESPACES, None, NS].get("metadata", {}).get("deletionTimestamp") or (
        kmock.objects[NAMESPACES, None, NS].deleted
    )


async def test_a_pull_secret_is_put_on_the_pods_and_must_exist(kmock, running):
    settings = _settings(pull_secret="regcred")
    kmock.objects[NAMESPACES, None, NS] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    with pytest.raises(DeployError) as info:
        await _release(settings, _images(1))
    assert "regcred" in info.value.message and "kubectl create secret docker-registry regcred" in info.value.hint
    kmock.objects[SECRETS, NS, "regcred"] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}}
    await _release(settings, _images(1))
    pod = kmock.objects[DEPLOYMENTS, NS, "pizzactl-gateway"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


# --- 2. rollback ------------------------------------------------------------------------------------


async def test_rollback_puts_the_previous_version_back_and_status_shows_it(kmock, running):
    from pizzactl.deploy import rollback, status

    settings = _settings()
    await _release(settings, _images(1))
    await _release(settings, _images(2, "b"))
    assert running.ready_images() == {_images(2, "b").model_image}
    result = await asyncio.to_thread(rollback, settings, None, 20.0)
    assert result["model_version"] == 1 and result["rolled_back_from"] == 2
    assert _model_image(kmock) == _images(1).model_image
    st = await asyncio.to_thread(status, settings)
    assert st["model_version"] == 1 and st["serving"] == {1: 1}
    again = await asyncio.to_thread(rollback, settings, None, 5.0)
    assert "no earlier version" in again["message"]


async def test_status_names_the_model_servers_grpc_address_in_the_cluster(kmock, running):
    """The model Service's `grpc` port (8500) is reachable in the cluster only: status says where."""
    from support.cli import invoke

    await _release(_settings(), _images(1))
    shown = await asyncio.to_thread(invoke, "status")
    assert shown.returncode == 0, shown.stderr
    assert "pizzactl-model.pizzactl.svc:8500" in shown.stdout
    data = json.loads((await asyncio.to_thread(invoke, "status", "--json")).stdout)
    assert data["grpc"] == "pizzactl-model.pizzactl.svc:8500"


async def test_rollback_after_a_failed_rollout_abandons_it(kmock, running):
    from pizzactl.deploy import rollback

    settings = _settings()
    await _release(settings, _images(1))
    running.behave("pizzactl-model:v2", CRASH)
    with pytest.raises(DeployError):
        await _release(settings, _images(2, "b"), timeout=1.5)
    result = await asyncio.to_thread(rollback, settings, None, 20.0)
    assert result["model_version"] == 1 and result["rolled_back_from"] == 2
    await asyncio.sleep(0.3)
    assert {p["spec"]["containers"][0]["image"] for p in running.pods()} == {_images(1).model_image}


# --- issue 22: what the cluster reports back ----------------------------------------------------------


def _progressing(kmock, name: str = "pizzactl-model") -> dict:
    conditions = kmock.objects[DEPLOYMENTS, NS, name].get("status", {}).get("conditions", [])
    return next(dict(c) for c in conditions if c["type"] == "Progressing")


async def _steps_until(fake, api, name: str, done, most: int = 40) -> None:
    for _ in range(most):
        fake.step()
        if done(await asyncio.to_thread(k8s.rollout_state, api, NS, name)):
            return
    raise AssertionError(f"{name} never got there")


async def test_a_stale_progress_deadline_does_not_fail_the_fix_forward_at_once(kmock, fake):
    """v2 never gets ready: after progressDeadlineSeconds the controller sets Progressing=False
    ProgressDeadlineExceeded. Applying v3 does not clear it: it stays until the controller has
    observed the new generation, and kubectl's rollout status trusts it only then."""
    fake.step_seconds = 100  # the default progressDeadlineSeconds (600) is 6 steps
    api = k8s.connect("prod")
    settings = _settings()
    await asyncio.to_thread(k8s.apply, api, cluster.render(settings, _images(1)))
    await _steps_until(fake, api, "pizzactl-model", lambda s: s.done)
    fake.behave("pizzactl-model:v2", CRASH)
    await asyncio.to_thread(k8s.apply, api, cluster.render(settings, _images(2, "b")))
    for _ in range(12):
        fake.step()
    assert _progressing(kmock)["reason"] == "ProgressDeadlineExceeded"

    await asyncio.to_thread(k8s.apply, api, cluster.render(settings, _images(3, "c")))
    assert _progressing(kmock)["reason"] == "ProgressDeadlineExceeded"  # not observed yet
    with pytest.raises(DeployError) as info:  # the controller is held: nothing moves
        await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 0.3, 0.05)
    assert "progress deadline" not in info.value.message
    assert "Waiting for deployment spec update to be observed" in info.value.message
    task = asyncio.create_task(fake.run(0.02))
    try:
        states = await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 20.0, 0.05)
    finally:
        task.cancel()
    assert states["pizzactl-model"].done and _progressing(kmock)["reason"] == "NewReplicaSetAvailable"


async def test_a_terminating_pod_that_is_still_ready_is_not_counted_as_serving(kmock, fake):
    """A replaced pod stays Ready while it terminates (its grace period); the Service no longer
    sends it traffic, so it is not a version that serves."""
    fake.pod_grace_steps = 100
    api = k8s.connect("prod")
    settings = _settings()
    await asyncio.to_thread(k8s.apply, api, cluster.render(settings, _images(1)))
    await _steps_until(fake, api, "pizzactl-model", lambda s: s.done)
    await asyncio.to_thread(k8s.apply, api, cluster.render(settings, _images(2, "b")))
    await _steps_until(fake, api, "pizzactl-model", lambda s: s.done)
    old = [p for p in fake.pods() if p["spec"]["containers"][0]["image"] == _images(1).model_image]
    assert old and old[0]["metadata"].get("deletionTimestamp") and old[0]["status"]["phase"] == "Running"
    assert await asyncio.to_thread(k8s.served_versions, api, NS) == {2: 1}


async def test_completed_training_pods_are_not_reported_as_problems(kmock, running):
    """A finished training Job keeps its pod (phase Succeeded, Ready False): not why a rollout fails."""
    kmock.objects[PODS, NS, "pizzactl-train-20250101-000000-00001"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "pizzactl-train-20250101-000000-00001",
            "namespace": NS,
            "labels": {"batch.kubernetes.io/job-name": "pizzactl-train-20250101-000000"},
        },
        "spec": {"containers": [{"name": "train", "image": "pizzactl-trainer:0.1.0-cpu-abc"}]},
        "status": {
            "phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
            "containerStatuses": [
                {
                    "name": "train",
                    "image": "pizzactl-trainer:0.1.0-cpu-abc",
                    "imageID": "",
                    "restartCount": 0,
                    "ready": False,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }
            ],
        },
    }
    running.behave("pizzactl-model", UNREADY)
    with pytest.raises(DeployError) as info:
        await _release(_settings(), _images(1), timeout=1.5)
    assert "Readiness probe failed" in info.value.message
    assert "pizzactl-train" not in info.value.message


@pytest.mark.parametrize("reason", ["MissingEndpoints", "FailedDiscoveryCheck"])
async def test_a_metrics_api_that_is_listed_but_not_available_is_not_called_active(
    kmock, isolated, monkeypatch, reason
):
    """kind's common case: metrics-server installed without --kubelet-insecure-tls. The group
    is in discovery, its APIService is Available=False and the HPA cannot scale."""
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(isolated / "kc", str(kmock.url).rstrip("/"), "prod")))
    fake = FakeCluster(kmock)
    fake.metrics_apiservice(available=False, reason=reason)
    task = asyncio.create_task(fake.run(0.02))
    try:
        result = await _release(_settings(), _images(1))
    finally:
        task.cancel()
    autoscaling = result["autoscaling"]
    assert autoscaling["metrics_server"] is False
    assert "is active" not in autoscaling["message"]
    assert reason in autoscaling["message"] and "--kubelet-insecure-tls" in autoscaling["message"]
    assert "kubectl describe apiservice v1beta1.metrics.k8s.io" in autoscaling["message"]


async def test_a_rollback_onto_the_replicaset_that_served_does_not_trust_the_old_deadline(kmock, fake):
    """After v2 exceeded its deadline, `rollback` re-applies v1, whose ReplicaSet still exists:
    the controller observes the new generation but keeps ProgressDeadlineExceeded (a found
    ReplicaSet sets no new condition) until the v2 pod goes. That condition is v2's: the
    rollback waits for v1 instead of failing on it."""
    from pizzactl.deploy import rollback

    fake.step_seconds = 100  # progressDeadlineSeconds 600: 6 steps
    settings = _settings()
    task = asyncio.create_task(fake.run(0.02))
    try:
        await _release(settings, _images(1))
        fake.behave("pizzactl-model:v2", CRASH)
        with pytest.raises(DeployError, match="exceeded its progress deadline"):
            await _release(settings, _images(2, "b"))
    finally:
        task.cancel()
    generation = kmock.objects[DEPLOYMENTS, NS, "pizzactl-model"]["metadata"]["generation"]
    rolling = asyncio.create_task(asyncio.to_thread(rollback, settings, None, 20.0))
    for _ in range(500):  # the controller is held until the rollback has applied v1
        await asyncio.sleep(0.01)
        if kmock.objects[DEPLOYMENTS, NS, "pizzactl-model"]["metadata"]["generation"] > generation:
            break
    fake.step()  # observed; the v2 pod is being removed, the condition is still v2's
    dep = kmock.objects[DEPLOYMENTS, NS, "pizzactl-model"]
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"]
    assert _progressing(kmock)["reason"] == "ProgressDeadlineExceeded"
    await asyncio.sleep(2.5)  # rollout status polls every 2 s: it reads this state
    task = asyncio.create_task(fake.run(0.02))
    try:
        result = await rolling
    finally:
        task.cancel()
    assert result["model_version"] == 1 and result["serving"] == {1: 1}


async def test_without_permission_to_read_apiservices_the_hpas_say_whether_they_scale(kmock, isolated, monkeypatch):
    """A namespace-scoped identity cannot read the APIService (403 in the RBAC authorizer's
    words); the HPAs in the namespace still report ScalingActive=False, and that is believed."""
    import aiohttp.web

    from support.k8s_fakes import failure_status

    async def forbidden(request):
        if "/apis/apiregistration.k8s.io/" not in request.url.path:
            return None
        message = (
            'apiservices.apiregistration.k8s.io "v1beta1.metrics.k8s.io" is forbidden: User '
            '"system:serviceaccount:pizzactl:deployer" cannot get resource "apiservices" in API group '
            '"apiregistration.k8s.io" at the cluster scope'
        )
        return aiohttp.web.json_response(failure_status(403, "Forbidden", message), status=403)

    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(isolated / "kc", str(kmock.url).rstrip("/"), "prod")))
    fake = FakeCluster(kmock)
    fake.metrics_apiservice(available=False)
    kmock.stream_handlers = [forbidden]
    task = asyncio.create_task(fake.run(0.02))
    try:
        result = await _release(_settings(), _images(1))
    finally:
        task.cancel()
    autoscaling = result["autoscaling"]
    assert autoscaling["metrics_server"] is False and "is active" not in autoscaling["message"]
    assert "ScalingActive=False" in autoscaling["message"] and "FailedGetResourceMetric" in autoscaling["message"]
