"""The kind target through a fake `kind` on PATH (a script that records its calls and config).

Without Docker: cluster creation with the port mapping, reuse, a missing or failing kind.
With Docker (docker tier): a stand-in node container to detect a reused cluster that lacks
the port mapping, and a whole `deploy` -> `status` -> `teardown` against kmock's API server.
"""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest
import yaml

from pizzactl.config import load_settings
from pizzactl.deploy.targets import kind
from pizzactl.errors import DeployError, UsageError
from pizzactl.serving.processes import free_port

from k8s_fakes import ApplyingEmulator, install_fake_kind, kind_calls, mark_rolled_out


@pytest.fixture
def fake_kind(tmp_path, monkeypatch):
    home = tmp_path / "kind-home"
    install_fake_kind(tmp_path / "bin", home)
    monkeypatch.setenv("FAKE_KIND_HOME", str(home))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")  # unless a test needs Docker
    return home


def _settings(**flags):
    return load_settings({"port": 19696, **flags}, environ={})


def test_creates_the_cluster_with_the_host_port_mapped_to_the_gateway_node_port(fake_kind):
    assert kind.ensure_cluster(_settings(cluster="pizza-test")) is True
    create = [c for c in kind_calls(fake_kind) if c["args"][:2] == ["create", "cluster"]]
    assert len(create) == 1
    args = create[0]["args"]
    assert args[args.index("--name") + 1] == "pizza-test"
    config = yaml.safe_load(create[0]["config"])
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["nodes"][0]["extraPortMappings"] == [
        {"containerPort": 30096, "hostPort": 19696, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    ]


def test_an_existing_cluster_is_reused_not_recreated(fake_kind):
    (fake_kind / "clusters").parent.mkdir(parents=True, exist_ok=True)
    (fake_kind / "clusters").write_text("pizzactl\n")
    assert kind.ensure_cluster(_settings()) is False
    assert [c["args"][:2] for c in kind_calls(fake_kind)] == [["get", "clusters"]]


def test_images_are_loaded_into_the_named_cluster(fake_kind):
    kind.load_images("pizzactl", ["pizzactl-gateway:0.1.0-abc", "pizzactl-model:v1-builtin-def"])
    assert [c["args"] for c in kind_calls(fake_kind)] == [
        ["load", "docker-image", "pizzactl-gateway:0.1.0-abc", "--name", "pizzactl"],
        ["load", "docker-image", "pizzactl-model:v1-builtin-def", "--name", "pizzactl"],
    ]


def test_missing_kind_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeployError) as info:
        kind.ensure_cluster(_settings())
    assert "kind" in info.value.message and "kind.sigs.k8s.io" in info.value.hint


def test_a_failing_kind_shows_its_error(fake_kind, monkeypatch):
    monkeypatch.setenv("FAKE_KIND_FAIL", "create cluster")
    with pytest.raises(DeployError) as info:
        kind.ensure_cluster(_settings())
    assert "node(s) already exist" in info.value.message
    assert "exit 1" in info.value.message


def test_context_without_registry_is_refused_before_anything_runs(fake_kind, isolated):
    with pytest.raises(UsageError) as info:
        kind.deploy(_settings(context="prod"), dry_run=False)
    assert "--registry" in info.value.hint
    assert kind_calls(fake_kind) == []


# --- docker tier --------------------------------------------------------------------------------


@pytest.fixture
def node_container(docker_ready, monkeypatch):
    """Start a stand-in for kind's control-plane node container (same name, chosen port bindings)."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    started = []

    def start(cluster: str, host_port: int | None):
        ports = {"30096/tcp": ("127.0.0.1", host_port)} if host_port else None
        container = docker_ready.containers.run(
            "python:3.11-slim",
            ["sleep", "300"],
            name=f"{cluster}-control-plane",
            detach=True,
            ports=ports,
            labels={"pizzactl-test": "1"},
            network_mode=None,
        )
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True)


@pytest.mark.docker
def test_a_reused_cluster_without_the_port_mapping_is_explained(fake_kind, node_container, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    (fake_kind / "clusters").write_text("pizzactl-nomap\n")
    node_container("pizzactl-nomap", None)
    with pytest.raises(DeployError) as info:
        kind.ensure_cluster(_settings(cluster="pizzactl-nomap"))
    assert "does not map NodePort 30096" in info.value.message
    assert "kind delete cluster --name pizzactl-nomap" in info.value.hint


@pytest.mark.docker
def test_a_reused_cluster_mapping_another_port_names_that_port(fake_kind, node_container, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    (fake_kind / "clusters").write_text("pizzactl-other\n")
    other = free_port()
    node_container("pizzactl-other", other)
    with pytest.raises(DeployError) as info:
        kind.ensure_cluster(_settings(cluster="pizzactl-other"))
    assert f"--port {other}" in info.value.hint
    assert kind.ensure_cluster(_settings(cluster="pizzactl-other", port=other)) is False


class _Ready(http.server.BaseHTTPRequestHandler):
    """Stands in for the kind node's port mapping to a ready gateway pod."""

    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
        self.wfile.write(b'{"ready": true}')

    def log_message(self, *args):
        pass


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_kind_deploy_status_and_teardown_end_to_end(
    kmock, fake_kind, built_images, tiny_model, isolated, monkeypatch
):
    from pizzactl.deploy import deploy, status, teardown

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(isolated / "kubeconfig"))
    monkeypatch.setenv("FAKE_KIND_SERVER", str(kmock.url).rstrip("/"))
    kmock.resources["v1/pods"] = {}
    kmock.resources["v1/events"] = {}
    port = free_port()
    gateway = http.server.HTTPServer(("127.0.0.1", port), _Ready)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    settings = load_settings({"models_dir": tiny_model, "model_server": "builtin", "port": port})

    async def controller():
        while True:
            mark_rolled_out(kmock)
            await asyncio.sleep(0.1)

    playing = asyncio.create_task(controller())
    try:
        result = await asyncio.to_thread(deploy, settings, 60)
        st = await asyncio.to_thread(status, settings)
        down = await asyncio.to_thread(teardown, settings)
    finally:
        playing.cancel()
        gateway.shutdown()

    assert result["url"] == f"http://127.0.0.1:{port}"
    assert result["created_cluster"] is True and result["context"] == "kind-pizzactl"
    calls = [c["args"] for c in kind_calls(fake_kind)]
    images = result["images"]  # what deploy built (the session's images, unless the source changed since)
    assert images["model_image"].startswith("pizzactl-model:v1-builtin-")
    assert ["load", "docker-image", images["gateway_image"], "--name", "pizzactl"] in calls
    assert ["load", "docker-image", images["model_image"], "--name", "pizzactl"] in calls
    assert calls.index(["create", "cluster", "--name", "pizzactl", "--config", calls[1][-3], "--wait", "120s"]) == 1
    deployment = kmock.objects[kmock.resource("apps/v1/deployments"), "pizzactl", "pizzactl-model"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images["model_image"]

    assert st["ready"] is True and st["target"] == "kind"
    gateway_rollout = st["deployments"]["pizzactl-gateway"]
    assert gateway_rollout["done"] and gateway_rollout["available"] == gateway_rollout["desired"] >= 1

    assert down["torn_down"] is True
    assert kind_calls(fake_kind)[-1]["args"] == ["delete", "cluster", "--name", "pizzactl"]  # we created it
    assert (await asyncio.to_thread(status, settings))["deployed"] is False


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_teardown_keep_cluster_deletes_only_the_namespace(kmock, fake_kind, tmp_path, monkeypatch):
    from pizzactl.deploy.state import DeployState

    from k8s_fakes import NAMESPACES, write_kubeconfig

    monkeypatch.setenv(
        "KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", str(kmock.url).rstrip("/"), "kind-pizzactl"))
    )
    kmock.objects[NAMESPACES, None, "pizzactl"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "pizzactl"},
    }
    (fake_kind / "clusters").write_text("pizzactl\n")
    state = DeployState(
        target="kind",
        url="http://127.0.0.1:9696",
        extra={"cluster": "pizzactl", "created_cluster": True, "context": "kind-pizzactl", "namespace": "pizzactl"},
    )

    result = await asyncio.to_thread(kind.teardown, _settings(), state, True)
    assert result["cluster_deleted"] is False and "kept the cluster 'pizzactl'" in result["message"]
    assert kmock.objects[NAMESPACES, None, "pizzactl"].deleted
    assert not any(c["args"][:2] == ["delete", "cluster"] for c in kind_calls(fake_kind))

    again = await asyncio.to_thread(kind.teardown, _settings(), state, True)
    assert "already gone" in again["message"]


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_an_existing_cluster_records_the_gateway_url_that_answers(kmock, isolated, monkeypatch):
    """--context: after the rollout, the node address + NodePort is recorded when /readyz answers
    there (so `status` and `predict` work), and left empty with a port-forward hint when not."""
    from pizzactl.deploy import k8s, manifests
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.state import DeployState

    from k8s_fakes import write_kubeconfig

    kmock.resources["v1/services"] = {}
    kmock.resources["v1/nodes"] = {}
    config = write_kubeconfig(isolated / "kubeconfig", str(kmock.url).rstrip("/"), "prod")
    api = k8s.connect("prod", kubeconfig=str(config))
    settings = load_settings({"context": "prod", "registry": "registry.example/me"})
    await asyncio.to_thread(k8s.apply, api, manifests.render(settings, "gw:v1", "model:v1", model_version=1))
    port = free_port()
    svc = kmock.objects[kmock.resource("v1/services"), settings.namespace, "pizzactl-gateway"]
    svc.patch({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": port}]}})
    kmock.objects[kmock.resource("v1/nodes"), None, "n1"] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }
    record = DeployState(target="kind", url="", extra={"context": "prod"})

    unreachable = await asyncio.to_thread(kind._remote_url, api, settings, "prod", record, 1.0)
    assert unreachable == "" and state_mod.load(settings) is None  # nothing answers on the port yet

    gateway = http.server.HTTPServer(("127.0.0.1", port), _Ready)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        url = await asyncio.to_thread(kind._remote_url, api, settings, "prod", record)
    finally:
        gateway.shutdown()
    assert url == f"http://127.0.0.1:{port}"
    assert state_mod.load(settings).url == url
