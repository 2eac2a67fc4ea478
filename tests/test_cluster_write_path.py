"""The API server's write path and what a deploy is made of (issue 22, group A).

Against tests/support/k8s_fakes.ApplyingEmulator's server-side apply with managed fields, ServiceAccount
and Pod Security admission and a namespace-scoped identity (their docstrings name the upstream
behaviour), first that the fakes behave so, then the defects they exposed: a bare pod right
after its namespace, rollback re-rendering from today's flags, the Kaggle Secret's stringData,
the Pod Security label on a namespace pizzactl did not create, `created_namespace` defaulting
to True, and a deploy with namespace-only permissions.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from pizzactl.deploy import state as state_mod
from pizzactl.deploy.state import DeployState
from pizzactl.deploy.targets import cluster
from pizzactl.errors import DeployError
from pizzactl.kube import k8s, k8s_files
from pizzactl.train.remote import jobs

from support.cluster_fixtures import cluster_settings as _settings
from support.cluster_fixtures import release_images as _images
from support.k8s_fakes import (
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    ApplyingEmulator,
    FakeCluster,
    write_kubeconfig,
)

pytestmark = pytest.mark.kmock(cls=ApplyingEmulator)
NS = "pizzactl"


@pytest.fixture
def api(kmock, isolated, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(isolated / "kubeconfig", str(kmock.url).rstrip("/"), "prod")))
    return k8s.connect("prod")


async def _playing(fake: FakeCluster):
    return asyncio.create_task(fake.run(0.02))


def _namespace(kmock, name: str = NS, labels: dict | None = None, *, with_account: bool = True) -> None:
    kmock.objects[NAMESPACES, None, name] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels or {})},
    }
    if with_account:
        kmock.objects[SERVICEACCOUNTS, name, "default"] = {"metadata": {"name": "default", "namespace": name}}


def _ssa(api, doc: dict, manager: str, force: bool = False):
    from kubernetes import client

    apps = client.AppsV1Api(api)
    return apps.patch_namespaced_deployment(
        doc["metadata"]["name"],
        NS,
        body=doc,
        field_manager=manager,
        force=force,
        _content_type=k8s.APPLY_CONTENT_TYPE,
    )


def _deployment(**spec_extra) -> dict:
    container = {"name": "app", "image": "app:1", **spec_extra.pop("container", {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container], **spec_extra},
            },
        },
    }


# --- the fakes behave as the API server does --------------------------------------------------------


async def test_fake_server_side_apply_removes_what_a_manager_stops_sending_and_guards_other_managers(kmock, api):
    from kubernetes.client.exceptions import ApiException

    _namespace(kmock)
    await asyncio.to_thread(_ssa, api, _deployment(imagePullSecrets=[{"name": "regcred"}]), "pizzactl")
    await asyncio.to_thread(_ssa, api, _deployment(), "pizzactl")  # the same manager leaves it out: deleted
    pod = kmock.objects[DEPLOYMENTS, NS, "web"]["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in pod and pod["containers"][0]["image"] == "app:1"

    other = _deployment(container={"env": [{"name": "LOG", "value": "debug"}]})
    await asyncio.to_thread(_ssa, api, other, "kubectl")  # another manager adds an env var to the same container
    await asyncio.to_thread(_ssa, api, _deployment(), "pizzactl")
    container = kmock.objects[DEPLOYMENTS, NS, "web"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "LOG", "value": "debug"}]  # not pizzactl's to remove

    with pytest.raises(ApiException) as info:  # a different value for a field kubectl owns
        await asyncio.to_thread(_ssa, api, _deployment(container={"env": [{"name": "LOG", "value": "info"}]}), "ci")
    assert info.value.status == 409
    assert json.loads(info.value.body)["message"] == (
        'Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: '
        '.spec.template.spec.containers[name="app"].env[name="LOG"].value'
    )
    await asyncio.to_thread(_ssa, api, _deployment(container={"env": [{"name": "LOG", "value": "info"}]}), "ci", True)
    container = kmock.objects[DEPLOYMENTS, NS, "web"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "LOG", "value": "info"}]  # force: ci owns it now


async def test_fake_pods_are_refused_until_the_default_service_account_exists(kmock, api):
    plan = jobs.JobPlan(name="pizzactl-train-1", namespace=NS, image="trainer:1", env={})
    fake = FakeCluster(kmock)
    await asyncio.to_thread(k8s.apply, api, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(k8s.apply, api, [jobs.files_pod(plan)])
    assert (
        'pods "pizzactl-train-files" is forbidden: error looking up service account pizzactl/default: '
        'serviceaccount "default" not found' in info.value.message
    )
    for _ in range(fake.sa_delay_steps + 1):  # the service account controller, a moment later
        fake.step()
    await asyncio.to_thread(k8s.apply, api, [jobs.files_pod(plan)])
    assert not kmock.objects[PODS, NS, "pizzactl-train-files"].deleted


async def test_fake_pod_security_restricted_refuses_a_plain_pod_and_admits_pizzactls(kmock, api):
    from kubernetes import client

    _namespace(kmock, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"}, "spec": {"containers": [_c()]}}
    with pytest.raises(Exception) as info:
        await asyncio.to_thread(client.CoreV1Api(api).create_namespaced_pod, NS, plain)
    message = json.loads(info.value.body)["message"]
    assert info.value.status == 403
    assert message.startswith('pods "plain" is forbidden: violates PodSecurity "restricted:latest": ')
    assert 'allowPrivilegeEscalation != false (container "app" must set' in message
    assert 'runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true)' in message
    plan = jobs.JobPlan(name="pizzactl-train-1", namespace=NS, image="trainer:1", env={})
    await asyncio.to_thread(k8s.apply, api, [jobs.files_pod(plan)])  # pizzactl's pods meet restricted


def _c() -> dict:
    return {"name": "app", "image": "app:1"}


async def test_fake_namespace_scoped_identity_may_not_touch_nodes_or_namespaces(kmock, api):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    _namespace(kmock)
    kmock.resources["v1/pods"] = {}
    kmock.scoped_to = NS
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(core.list_node)
    assert info.value.status == 403
    assert json.loads(info.value.body)["message"] == (
        'nodes is forbidden: User "system:serviceaccount:team:deployer" cannot list resource "nodes" in API group "" '
        "at the cluster scope"
    )
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(core.read_namespace, NS)
    assert json.loads(info.value.body)["message"].startswith('namespaces "pizzactl" is forbidden: User ')
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(core.list_namespaced_pod, "kube-system")
    assert info.value.status == 403
    assert (await asyncio.to_thread(core.list_namespaced_pod, NS)).items == []


# --- 1. the file-transfer pod right after its namespace ---------------------------------------------


async def test_the_files_pod_waits_for_the_namespaces_service_account(kmock, api):
    """kubernetes/kubernetes#66689: a bare pod created right after its namespace is refused until
    `default` exists; nothing retries a bare pod but pizzactl."""
    fake = FakeCluster(kmock, sa_delay_steps=5)
    plan = jobs.JobPlan(name="pizzactl-train-1", namespace=NS, image="trainer:1", env={})
    task = await _playing(fake)
    try:
        await asyncio.to_thread(k8s.apply, api, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])

        def copy() -> str:
            with k8s_files.files_pod(api, jobs.files_pod(plan), 20.0) as name:
                return name

        assert await asyncio.to_thread(copy) == "pizzactl-train-files"
    finally:
        task.cancel()


async def test_a_service_account_that_never_appears_says_why_not_permissions(kmock, api):
    plan = jobs.JobPlan(name="pizzactl-train-1", namespace=NS, image="trainer:1", env={})
    _namespace(kmock, with_account=False)  # no controller runs: it never appears

    def copy() -> None:
        with k8s_files.files_pod(api, jobs.files_pod(plan), 1.0):
            pass

    with pytest.raises(DeployError) as info:
        await asyncio.to_thread(copy)
    assert "refuses pods until the ServiceAccount pizzactl/default exists" in info.value.message
    assert 'serviceaccount "default" not found' in info.value.message
    assert "permissions" not in info.value.hint and "kubectl get serviceaccount -n pizzactl" in info.value.hint


# --- 3. rollback re-applies what the deploy was made with ------------------------------------------


async def test_rollback_keeps_the_pull_secret_and_gateway_options_of_the_deploy(kmock, api):
    """Under server-side apply, rendering the rollback from today's flags (no --pull-secret) would
    delete imagePullSecrets (ImagePullBackOff) and flip allow-private-URLs back."""
    from pizzactl.deploy import rollback

    _namespace(kmock)
    kmock.objects[SECRETS, NS, "regcred"] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}}
    fake = FakeCluster(kmock)
    deployed_with = _settings(pull_secret="regcred", allow_private_urls=True)
    task = await _playing(fake)
    try:
        await asyncio.to_thread(cluster.release, deployed_with, _images(1), 20.0)
        await asyncio.to_thread(cluster.release, deployed_with, _images(2, "b"), 20.0)
        result = await asyncio.to_thread(rollback, _settings(), None, 20.0)  # a later shell: no such flags
    finally:
        task.cancel()
    assert result["model_version"] == 1
    for name in ("pizzactl-model", "pizzactl-gateway"):
        pod = kmock.objects[DEPLOYMENTS, NS, name]["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], name
    gateway = kmock.objects[DEPLOYMENTS, NS, "pizzactl-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "PIZZACTL_ALLOW_PRIVATE_URLS", "value": "true"} in gateway["env"]
    assert state_mod.load(_settings()).extra["render"] == {
        "pull_secret": "regcred",
        "allow_private_urls": True,
        "api_key": None,
        "api_key_hashes": None,
    }


async def test_rollback_from_a_shell_without_the_api_key_keeps_the_gateway_locked(kmock, api):
    """Deploy owns the keys Secret and a deploy without keys empties it: a rollback rendered from a
    later shell's settings (no PIZZACTL_API_KEY) would open the gateway. The record keeps the
    digests, never the key."""
    import hashlib

    from pizzactl.deploy import rollback
    from pizzactl.deploy.manifests import API_KEYS_SECRET

    _namespace(kmock)
    fake = FakeCluster(kmock)
    deployed_with = _settings(api_key="s3cret-pizza-key")
    task = await _playing(fake)
    try:
        await asyncio.to_thread(cluster.release, deployed_with, _images(1), 20.0)
        await asyncio.to_thread(cluster.release, deployed_with, _images(2, "b"), 20.0)
        await asyncio.to_thread(rollback, _settings(), None, 20.0)
    finally:
        task.cancel()
    digest = hashlib.sha256(b"s3cret-pizza-key").hexdigest()
    hashes = base64.b64decode(kmock.objects[SECRETS, NS, API_KEYS_SECRET]["data"]["hashes"]).decode()
    assert hashes == digest
    assert "s3cret-pizza-key" not in state_mod.state_path(_settings()).read_text()


# --- 11. smaller ones -------------------------------------------------------------------------------


async def test_the_kaggle_secret_loses_the_keys_left_out(kmock, api):
    """stringData is folded into data and never stored, so under server-side apply a key left out
    later would stay: switching from username/key to an API token must not keep the old key."""
    _namespace(kmock)
    old = jobs.kaggle_secret(NS, {"KAGGLE_USERNAME": "pizzafan", "KAGGLE_KEY": "k3y"})
    await asyncio.to_thread(k8s.apply, api, [old])
    await asyncio.to_thread(k8s.apply, api, [jobs.kaggle_secret(NS, {"KAGGLE_API_TOKEN": "t0ken"})])
    data = kmock.objects[SECRETS, NS, jobs.SECRET]["data"]
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == {"KAGGLE_API_TOKEN": "t0ken"}


async def test_a_namespace_pizzactl_did_not_create_keeps_its_labels_and_other_workloads(kmock, api):
    """Forcing pod-security.kubernetes.io/enforce=restricted onto someone's namespace would refuse
    their next pods (Pod Security admission); pizzactl labels only namespaces it creates."""
    from kubernetes import client

    _namespace(kmock, labels={"team": "ml"})
    fake = FakeCluster(kmock)
    task = await _playing(fake)
    try:
        await asyncio.to_thread(cluster.release, _settings(), _images(1), 20.0)
    finally:
        task.cancel()
    assert kmock.objects[NAMESPACES, None, NS]["metadata"]["labels"] == {"team": "ml"}
    theirs = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "theirs"}, "spec": {"containers": [_c()]}}
    await asyncio.to_thread(client.CoreV1Api(api).create_namespaced_pod, NS, theirs)  # still admitted
    assert state_mod.load(_settings()).extra["created_namespace"] is False


async def test_teardown_of_a_record_that_does_not_say_who_made_the_namespace_keeps_it(kmock, api):
    """A first deploy interrupted before its release recorded `created_namespace` (e.g. the kind
    target saves its record before building): teardown must not take the namespace for its own."""
    _namespace(kmock)
    record = DeployState(target="cluster", url="", extra={"context": "prod", "namespace": NS})
    result = await asyncio.to_thread(cluster.teardown, _settings(), record)
    assert not kmock.objects[NAMESPACES, None, NS].deleted
    assert not kmock.objects[NAMESPACES, None, NS].get("metadata", {}).get("deletionTimestamp")
    assert "kept namespace pizzactl" in result["message"]


@pytest.fixture
def dockerd(isolated, monkeypatch, tmp_path):
    from support.docker_fakes import FakeDockerd

    with FakeDockerd(tmp_path / "docker.sock") as fake:
        monkeypatch.setenv("DOCKER_HOST", fake.url)
        yield fake


async def test_a_namespace_scoped_identity_deploys_without_cluster_scope_calls(kmock, api, dockerd, isolated, capsys):
    """--context with a RoleBinding in its namespace only: no nodes to list (architecture, gateway
    address), no Namespace to read or apply; the deploy succeeds and says what it skipped."""
    from pizzactl.deploy import deploy

    version = isolated / "models" / "pizza" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    _namespace(kmock)
    kmock.scoped_to = NS
    fake = FakeCluster(kmock)
    task = await _playing(fake)
    try:
        result = await asyncio.to_thread(deploy, _settings(model_server="builtin"), 30.0)
    finally:
        task.cancel()
    assert result["serving"] == {1: 1} and result["url"] == ""
    err = capsys.readouterr().err
    assert "may not list the cluster's nodes" in err and "may not read Namespace objects" in err
    assert "kubectl port-forward -n pizzactl svc/pizzactl-gateway" in err
    assert state_mod.load(_settings()).extra["created_namespace"] is False


async def test_teardown_gives_up_the_labels_pizzactl_put_on_a_namespace_it_did_not_create(kmock, api):
    """A namespace an earlier pizzactl labelled (restricted Pod Security among them): teardown
    releases what pizzactl applied, under server-side apply, and leaves the owner's own labels."""
    _namespace(kmock, labels={"team": "ml"})  # the owner's label, set by someone else
    labelled = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    await asyncio.to_thread(k8s.apply, api, [labelled])  # what an earlier pizzactl applied
    assert kmock.objects[NAMESPACES, None, NS]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    record = DeployState(
        target="cluster", url="", extra={"context": "prod", "namespace": NS, "created_namespace": False}
    )
    await asyncio.to_thread(cluster.teardown, _settings(), record)
    assert kmock.objects[NAMESPACES, None, NS]["metadata"]["labels"] == {"team": "ml"}
    assert not kmock.objects[NAMESPACES, None, NS].deleted
