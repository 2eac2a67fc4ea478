"""pizzactl.kube.k8s against a Kubernetes API mock server (kmock), with the real client.

The kubernetes client runs unpatched over HTTP against kmock's stateful emulator; the tests
play the cluster's controllers by writing pod and deployment status into the emulator.
"""

from __future__ import annotations

import asyncio
import re

import kmock as kmock_lib
import pytest

from pizzactl.config import load_settings
from pizzactl.deploy import manifests
from pizzactl.errors import DeployError
from pizzactl.kube import diagnosis, k8s

from support.k8s_fakes import DEPLOYMENTS, EVENTS, NAMESPACES, PODS, ApplyingEmulator, mark_rolled_out, write_kubeconfig

pytestmark = pytest.mark.kmock(cls=ApplyingEmulator)
NS = "pizzactl"


@pytest.fixture
def api(kmock, tmp_path):
    kmock.resources["v1/pods"] = {}
    kmock.resources["v1/events"] = {}
    config = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"), "kind-pizzactl")
    return k8s.connect("kind-pizzactl", kubeconfig=str(config))


def _docs():
    return manifests.render(
        load_settings({}, environ={}), "pizzactl-gateway:0.1.0-abc", "pizzactl-model:v1-builtin-def", model_version=1
    )


def _pod(name, app, *, phase="Running", waiting=None, last_terminated=None, ready=False):
    status = {
        "name": app.split("-")[1],
        "image": f"{app}:tag",
        "imageID": "",
        "ready": ready,
        "restartCount": 3,
        "state": {"waiting": waiting} if waiting else {"running": {}},
    }
    if last_terminated:
        status["lastState"] = {"terminated": last_terminated}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/name": app}},
        "spec": {"containers": [{"name": app.split("-")[1], "image": f"{app}:tag"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [] if phase == "Pending" else [status],
        },
    }


async def test_apply_uses_server_side_apply_and_is_idempotent(kmock, api):
    docs = _docs()
    applied = await asyncio.to_thread(k8s.apply, api, docs)
    assert applied == [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    patches = list(kmock["patch"])
    assert len(patches) == len(docs)
    for request in patches:
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params["fieldManager"] == "pizzactl"
        assert request.params["force"] == "true"
    stored = kmock.objects[DEPLOYMENTS, NS, "pizzactl-gateway"]
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "pizzactl-gateway:0.1.0-abc"
    assert (NAMESPACES, None, NS) in kmock.objects

    await asyncio.to_thread(k8s.apply, api, docs)  # a second deploy re-applies, it does not fail on "exists"
    assert len(list(kmock["patch"])) == 2 * len(docs)


async def test_wait_rollout_returns_once_every_deployment_is_available(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    assert mark_rolled_out(kmock) == ["pizzactl-model", "pizzactl-gateway"]
    states = await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model", "pizzactl-gateway"], 10, 0.1)
    assert states["pizzactl-gateway"].available == 2 and states["pizzactl-gateway"].done
    assert states["pizzactl-model"].desired == 1


async def test_rollout_waits_for_the_controller(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    waiting = asyncio.create_task(asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 20, 0.1))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    mark_rolled_out(kmock)
    states = await asyncio.wait_for(waiting, 10)
    assert states["pizzactl-model"].done


async def test_timeout_explains_an_image_that_cannot_be_pulled(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    kmock.objects[PODS, NS, "pizzactl-model-7d9f-x1"] = _pod(
        "pizzactl-model-7d9f-x1",
        "pizzactl-model",
        waiting={"reason": "ImagePullBackOff", "message": 'Back-off pulling image "pizzactl-model:tag"'},
    )
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 0.3, 0.1)
    assert "pizzactl-model:tag cannot be pulled (ImagePullBackOff)" in info.value.message
    assert "kind load docker-image" in info.value.hint


async def test_timeout_shows_the_last_log_lines_of_a_crashing_container(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    kmock.objects[PODS, NS, "pizzactl-model-7d9f-x2"] = _pod(
        "pizzactl-model-7d9f-x2",
        "pizzactl-model",
        waiting={"reason": "CrashLoopBackOff", "message": "back-off"},
        last_terminated={"exitCode": 1, "reason": "Error"},
    )
    (
        kmock["get", re.compile(r"/api/v1/namespaces/pizzactl/pods/pizzactl-model-7d9f-x2/log")]
        << kmock_lib.headers({"Content-Type": "text/plain"})
        << (b"Loading /models/pizza/1\nTraceback (most recent call last):\nOSError: SavedModel file does not exist\n")
    )
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 0.3, 0.1)
    message = info.value.message
    assert "container model is crashing (CrashLoopBackOff; exit code 1, Error)" in message
    assert "OSError: SavedModel file does not exist" in message
    log_requests = list(kmock["get", re.compile(r".*/log")])
    assert log_requests and log_requests[0].params["container"] == "model"


async def test_timeout_shows_why_a_pod_is_pending(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    kmock.objects[PODS, NS, "pizzactl-model-7d9f-x3"] = _pod(
        "pizzactl-model-7d9f-x3", "pizzactl-model", phase="Pending"
    )
    kmock.objects[EVENTS, NS, "e1"] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e1", "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": "pizzactl-model-7d9f-x3", "namespace": NS},
        "reason": "FailedScheduling",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
        "type": "Warning",
    }
    kmock.objects[EVENTS, NS, "e2"] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e2", "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": "someone-else", "namespace": NS},
        "reason": "Scheduled",
        "message": "not about our pod",
        "type": "Normal",
    }
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.wait_rollout, api, NS, ["pizzactl-model"], 0.3, 0.1)
    assert "pod pizzactl-model-7d9f-x3 is Pending" in info.value.message
    assert "FailedScheduling: 0/1 nodes are available: 1 Insufficient cpu." in info.value.message
    assert "not about our pod" not in info.value.message
    assert "lacks room" in info.value.hint


async def test_ready_pods_are_not_reported(kmock, api):
    kmock.objects[PODS, NS, "pizzactl-gateway-1"] = _pod("pizzactl-gateway-1", "pizzactl-gateway", ready=True)
    assert await asyncio.to_thread(diagnosis.diagnose, api, NS) == []


async def test_delete_namespace_then_again_is_not_an_error(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    assert await asyncio.to_thread(k8s.delete_namespace, api, NS) is True
    assert kmock.objects[NAMESPACES, None, NS].deleted
    assert await asyncio.to_thread(k8s.delete_namespace, api, NS) is False


async def test_status_reports_each_deployment(kmock, api):
    await asyncio.to_thread(k8s.apply, api, _docs())
    mark_rolled_out(kmock)
    st = await asyncio.to_thread(k8s.deployments_status, api, NS, ["pizzactl-model", "pizzactl-gateway", "nope"])
    assert st["pizzactl-model"]["done"] is True
    assert st["nope"] == {"error": "not found"}


def test_unknown_context_says_how_to_list_contexts(tmp_path):
    config = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1", "kind-pizzactl")
    with pytest.raises(DeployError) as info:
        k8s.connect("no-such-context", kubeconfig=str(config))
    assert "kubectl config get-contexts" in info.value.hint


async def test_unreachable_api_server_is_a_deploy_error(tmp_path):
    config = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9", "kind-pizzactl")
    api = k8s.connect("kind-pizzactl", kubeconfig=str(config))
    api.configuration.retries = 0
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.apply, api, _docs()[:1])
    assert "cannot reach the Kubernetes API" in info.value.message


SERVICES = kmock_lib.resource("v1/services")
NODES = kmock_lib.resource("v1/nodes")


def _node(name: str, *addresses: tuple[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


@pytest.fixture
def cluster_api(kmock, api):
    kmock.resources["v1/services"] = {}
    kmock.resources["v1/nodes"] = {}
    return api


async def test_gateway_url_is_a_node_address_and_the_node_port(kmock, cluster_api):
    await asyncio.to_thread(k8s.apply, cluster_api, _docs())  # the real gateway Service: NodePort 30096
    kmock.objects[NODES, None, "cp"] = _node("cp", ("Hostname", "cp"), ("InternalIP", "10.0.0.5"))
    assert await asyncio.to_thread(k8s.gateway_url, cluster_api, NS) == "http://10.0.0.5:30096"
    kmock.objects[NODES, None, "w1"] = _node("w1", ("InternalIP", "10.0.0.6"), ("ExternalIP", "203.0.113.7"))
    assert await asyncio.to_thread(k8s.gateway_url, cluster_api, NS) == "http://203.0.113.7:30096"  # external wins


async def test_gateway_url_prefers_a_load_balancer_address(kmock, cluster_api):
    await asyncio.to_thread(k8s.apply, cluster_api, _docs())
    svc = kmock.objects[SERVICES, NS, "pizzactl-gateway"]
    svc.patch({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}}})
    kmock.objects[NODES, None, "cp"] = _node("cp", ("InternalIP", "10.0.0.5"))
    assert await asyncio.to_thread(k8s.gateway_url, cluster_api, NS) == "http://198.51.100.4"


async def test_gateway_url_is_none_without_any_node_address_and_an_error_without_the_service(kmock, cluster_api):
    await asyncio.to_thread(k8s.apply, cluster_api, _docs())
    assert await asyncio.to_thread(k8s.gateway_url, cluster_api, NS) is None  # no nodes listed
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.gateway_url, cluster_api, "elsewhere")
    assert "404" in info.value.message
