"""The kind target through a fake `kind` on PATH (a script that records its calls and config).

Without Docker: cluster creation with the port mapping, reuse, a missing or failing kind.
With Docker (docker tier): a stand-in node container to detect a reused cluster that lacks
the port mapping, and a whole `deploy` -> `status` -> `teardown` against kmock's API server.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import threading

import pytest
import yaml

from pizzactl.config import load_settings
from pizzactl.deploy.targets import kind as kind_target
from pizzactl.errors import DeployError, PortInUseError, UsageError
from pizzactl.kube import kind
from pizzactl.ports import free_port

from support.docker_fakes import FakeDockerd
from support.k8s_fakes import (
    ApplyingEmulator,
    FakeCluster,
    install_fake_kind,
    kind_calls,
    stop_fake_clusters,
)


@pytest.fixture
def fake_kind(tmp_path, monkeypatch):
    home = tmp_path / "kind-home"
    install_fake_kind(tmp_path / "bin", home, docker_cli=True)
    monkeypatch.setenv("FAKE_KIND_HOME", str(home))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")  # unless a test needs Docker
    monkeypatch.setenv("PIZZACTL_STATE_DIR", str(tmp_path / "state"))
    yield home
    stop_fake_clusters(home)


def _settings(**flags):
    return load_settings(
        {"port": free_port(), **flags}, environ={k: v for k, v in os.environ.items() if k == "PIZZACTL_STATE_DIR"}
    )


def test_creates_the_cluster_with_the_host_port_mapped_to_the_gateway_node_port(fake_kind):
    settings = _settings(cluster="pizza-test")
    assert kind.ensure_cluster(settings) is True
    create = [c for c in kind_calls(fake_kind) if c["args"][:2] == ["create", "cluster"]]
    assert len(create) == 1
    args = create[0]["args"]
    assert args[args.index("--name") + 1] == "pizza-test"
    config = yaml.safe_load(create[0]["config"])
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["nodes"][0]["extraPortMappings"] == [
        {"containerPort": 30096, "hostPort": settings.port, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    ]


def test_an_existing_cluster_is_reused_not_recreated(fake_kind):
    (fake_kind / "clusters").parent.mkdir(parents=True, exist_ok=True)
    (fake_kind / "clusters").write_text("pizzactl\n")
    assert kind.ensure_cluster(_settings()) is False
    assert [c["args"][:2] for c in kind_calls(fake_kind)] == [["get", "clusters"]]


def test_images_are_loaded_into_the_named_cluster(fake_kind):
    from support.k8s_fakes import add_local_images

    (fake_kind / "clusters").write_text("pizzactl\n")
    add_local_images(fake_kind, "pizzactl-gateway:0.1.0-abc", "pizzactl-model:v1-builtin-def")
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
    from pizzactl.deploy import deploy

    version = isolated / "models" / "pizza" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    with pytest.raises(UsageError) as info:
        deploy(_settings(context="prod", models_dir=isolated / "models"))
    assert "--registry" in info.value.hint
    assert kind_calls(fake_kind) == []


# --- what real kind does, and what pizzactl does about it ----------------------------------------


def test_the_fake_kind_binds_its_port_and_a_taken_port_fails_as_docker_does(fake_kind):
    settings = _settings(cluster="one")
    kind.create_cluster("one", settings.port)
    with socket.socket() as probe:  # the node's port mapping holds the host port, as docker-proxy does
        assert probe.connect_ex(("127.0.0.1", settings.port)) == 0
    with pytest.raises(DeployError) as info:
        kind.create_cluster("two", settings.port)
    assert "port is already allocated" in info.value.message
    assert kind.clusters() == ["one"]


def test_a_taken_port_stops_the_deploy_before_kind_creates_a_cluster(fake_kind, monkeypatch, tmp_path):
    with FakeDockerd(tmp_path / "docker.sock") as dockerd, socket.socket() as busy:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = _settings(port=busy.getsockname()[1])
        with pytest.raises(PortInUseError) as info:
            kind_target.preflight(settings, None)
    assert f"Port {settings.port}" in info.value.message and "--port" in info.value.hint
    assert not any(c["args"][:2] == ["create", "cluster"] for c in kind_calls(fake_kind))


def test_docker_is_checked_before_kind_is_touched(fake_kind):
    with pytest.raises(DeployError) as info:
        kind_target.preflight(_settings(), None)
    assert "Docker daemon" in info.value.message and "docker context" in info.value.hint
    assert kind_calls(fake_kind) == []


def test_pizzactl_remembers_the_cluster_it_created_across_redeploys_and_keep_cluster(fake_kind):
    settings = _settings()
    assert kind.ensure_cluster(settings) is True
    assert kind.ensure_cluster(settings) is True  # reused, but still ours: teardown will delete it
    (fake_kind / "clusters").write_text(f"{fake_kind.name}-theirs\n")
    theirs = _settings(cluster=f"{fake_kind.name}-theirs")
    assert kind.ensure_cluster(theirs) is False


def test_loading_an_image_that_is_not_built_says_so(fake_kind):
    (fake_kind / "clusters").write_text("pizzactl\n")
    with pytest.raises(DeployError) as info:
        kind.load_images("pizzactl", ["pizzactl-model:v9-builtin-nope"])
    assert 'image: "pizzactl-model:v9-builtin-nope" not present locally' in info.value.message
    assert "pizzactl build" in info.value.hint


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_a_failure_after_creating_the_cluster_still_leaves_it_to_teardown(
    kmock, fake_kind, isolated, monkeypatch, tmp_path
):
    """Building fails after `kind create cluster`: the state already says pizzactl created it."""
    from pizzactl.deploy import deploy, teardown

    version = isolated / "models" / "pizza" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    monkeypatch.setenv("KUBECONFIG", str(isolated / "kubeconfig"))
    monkeypatch.setenv("FAKE_KIND_SERVER", str(kmock.url).rstrip("/"))
    with FakeDockerd(tmp_path / "docker.sock") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        dockerd.build_error = "pip failed: Could not find a version that satisfies the requirement"
        settings = load_settings({"models_dir": isolated / "models", "model_server": "builtin", "port": free_port()})
        with pytest.raises(DeployError, match="pip failed"):
            await asyncio.to_thread(deploy, settings)
        assert kind.clusters() == ["pizzactl"]
        down = await asyncio.to_thread(teardown, settings)
    assert down["cluster_deleted"] is True and kind.clusters() == []


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_kind_deploy_redeploy_and_teardown_without_a_real_daemon(
    kmock, fake_kind, isolated, monkeypatch, tmp_path
):
    """The whole kind path against fakes at every boundary: Docker (FakeDockerd), kind (which
    binds the host port and forwards it to the gateway), the cluster (FakeCluster)."""
    from pizzactl.deploy import deploy, status, teardown
    from pizzactl.kube.kind import created_clusters

    version = isolated / "models" / "pizza" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    monkeypatch.setenv("KUBECONFIG", str(isolated / "kubeconfig"))
    monkeypatch.setenv("FAKE_KIND_SERVER", str(kmock.url).rstrip("/"))
    gateway = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    (fake_kind / "pizzactl.backend").write_text(f"127.0.0.1:{gateway.server_address[1]}")
    cluster = FakeCluster(kmock, kind_home=fake_kind)
    playing = asyncio.create_task(cluster.run(0.02))
    try:
        with FakeDockerd(tmp_path / "docker.sock") as dockerd:
            monkeypatch.setenv("DOCKER_HOST", dockerd.url)
            settings = load_settings(
                {"models_dir": isolated / "models", "model_server": "builtin", "port": free_port()}
            )
            first = await asyncio.to_thread(deploy, settings, 30)
            again = await asyncio.to_thread(deploy, settings, 30)
            st = await asyncio.to_thread(status, settings)
            assert created_clusters(settings) == ["pizzactl"]
            down = await asyncio.to_thread(teardown, settings)
    finally:
        playing.cancel()
        gateway.shutdown()
    assert first["created_cluster"] is True and again["created_cluster"] is True
    assert first["url"] == f"http://127.0.0.1:{settings.port}" and first["serving"] == {1: 1}
    assert st["serving"] == {1: 1} and st["ready"] is True
    assert down["cluster_deleted"] is True and kind.clusters() == []
    assert [c["args"][:2] for c in kind_calls(fake_kind)].count(["create", "cluster"]) == 1


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
    gateway = http.server.HTTPServer(("127.0.0.1", 0), _Ready)  # behind the node's port mapping
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    (fake_kind / "pizzactl.backend").write_text(f"127.0.0.1:{gateway.server_address[1]}")
    port = free_port()
    settings = load_settings({"models_dir": tiny_model, "model_server": "builtin", "port": port})
    cluster = FakeCluster(kmock, kind_home=fake_kind)  # pods of images not `kind load`ed cannot be pulled

    playing = asyncio.create_task(cluster.run(0.05))
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
    assert [c[:2] for c in calls].count(["create", "cluster"]) == 1
    deployment = kmock.objects[kmock.resource("apps/v1/deployments"), "pizzactl", "pizzactl-model"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images["model_image"]

    assert st["ready"] is True and st["target"] == "kind" and st["serving"] == {1: 1}
    gateway_rollout = st["deployments"]["pizzactl-gateway"]
    assert gateway_rollout["done"] and gateway_rollout["available"] == gateway_rollout["desired"] == 2

    assert down["torn_down"] is True
    assert kind_calls(fake_kind)[-1]["args"] == ["delete", "cluster", "--name", "pizzactl"]  # we created it
    assert (await asyncio.to_thread(status, settings))["deployed"] is False


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_teardown_keep_cluster_deletes_only_the_namespace(kmock, fake_kind, tmp_path, monkeypatch):
    from pizzactl.deploy.state import DeployState

    from support.k8s_fakes import NAMESPACES, write_kubeconfig

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

    result = await asyncio.to_thread(kind_target.teardown, _settings(), state, True)
    assert result["cluster_deleted"] is False and "kept the cluster 'pizzactl'" in result["message"]
    assert kmock.objects[NAMESPACES, None, "pizzactl"].deleted
    assert not any(c["args"][:2] == ["delete", "cluster"] for c in kind_calls(fake_kind))

    again = await asyncio.to_thread(kind_target.teardown, _settings(), state, True)
    assert "already gone" in again["message"]


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_an_existing_cluster_records_the_gateway_url_that_answers(kmock, isolated, monkeypatch):
    """--context: after the rollout, the node address + NodePort is recorded when /readyz answers
    there (so `status` and `predict` work), and left empty with a port-forward hint when not."""
    from pizzactl.deploy import manifests
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.state import DeployState
    from pizzactl.deploy.targets import cluster
    from pizzactl.kube import k8s

    from support.k8s_fakes import write_kubeconfig

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
    record = DeployState(target="cluster", url="", extra={"context": "prod"})

    unreachable = await asyncio.to_thread(cluster._remote_url, api, settings, record, 1.0)
    assert unreachable == "" and state_mod.load(settings) is None  # nothing answers on the port yet

    gateway = http.server.HTTPServer(("127.0.0.1", port), _Ready)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        url = await asyncio.to_thread(cluster._remote_url, api, settings, record)
    finally:
        gateway.shutdown()
    assert url == f"http://127.0.0.1:{port}"
    assert state_mod.load(settings).url == url


# --- issue 22: Docker's containerd image store, images kind never collects, progress ----------------


def _kind(home, *args, check=True):
    import subprocess

    return subprocess.run(["kind", *args], capture_output=True, text=True, check=check)


def _docker_cli(*args, check=True):
    import subprocess

    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def test_the_fake_kind_fails_the_containerd_store_way_and_loads_a_one_platform_archive(fake_kind, tmp_path):
    """The fake itself, as kind#3795 reports it: `load docker-image` (docker save + ctr import
    --all-platforms) fails; `docker save --platform` + `load image-archive` works."""
    from support.k8s_fakes import add_local_images, loaded_images, use_containerd_store

    (fake_kind / "clusters").write_text("pizzactl\n")
    (fake_kind / "pizzactl.node.json").write_text("{}")
    add_local_images(fake_kind, "pizzactl-model:v1")
    use_containerd_store(fake_kind)
    failed = _kind(fake_kind, "load", "docker-image", "pizzactl-model:v1", "--name", "pizzactl", check=False)
    assert failed.returncode == 1 and "ctr: content digest sha256:" in failed.stderr and "not found" in failed.stderr
    _docker_cli("save", "-o", str(tmp_path / "all.tar"), "pizzactl-model:v1")
    whole = _kind(fake_kind, "load", "image-archive", str(tmp_path / "all.tar"), "--name", "pizzactl", check=False)
    assert whole.returncode == 1 and "content digest" in whole.stderr
    _docker_cli("save", "--platform", "linux/amd64", "-o", str(tmp_path / "one.tar"), "pizzactl-model:v1")
    _kind(fake_kind, "load", "image-archive", str(tmp_path / "one.tar"), "--name", "pizzactl")
    assert loaded_images(fake_kind, "pizzactl") == {"pizzactl-model:v1"}


def test_the_fake_kind_node_keeps_every_image_until_crictl_rmi(fake_kind):
    """kind never garbage-collects (imageGCHighThresholdPercent: 100): what is loaded stays;
    `docker exec NODE crictl images|rmi` see and remove it."""
    from support.k8s_fakes import KIND_NODE_IMAGES, add_local_images, node_images

    kind.create_cluster("pizzactl", 0)
    add_local_images(fake_kind, "pizzactl-model:v1", "pizzactl-model:v2")
    for image in ("pizzactl-model:v1", "pizzactl-model:v2", "pizzactl-model:v1"):
        _kind(fake_kind, "load", "docker-image", image, "--name", "pizzactl")
    listed = node_images(fake_kind, "pizzactl")
    assert listed == [*KIND_NODE_IMAGES, "docker.io/library/pizzactl-model:v1", "docker.io/library/pizzactl-model:v2"]
    table = _docker_cli("exec", "pizzactl-control-plane", "crictl", "images").stdout.splitlines()
    assert ["docker.io/library/pizzactl-model", "v1"] in [line.split()[:2] for line in table]
    _docker_cli("exec", "pizzactl-control-plane", "crictl", "rmi", "pizzactl-model:v1")
    assert node_images(fake_kind, "pizzactl")[-1:] == ["docker.io/library/pizzactl-model:v2"]
    missing = _docker_cli("exec", "pizzactl-control-plane", "crictl", "rmi", "pizzactl-model:v1", check=False)
    assert missing.returncode == 1 and "no such image" in missing.stderr


def test_kind_load_falls_back_to_a_one_platform_archive_under_the_containerd_store(
    fake_kind, tmp_path, monkeypatch, capfd
):
    """Item 7: `kind load docker-image` fails as in kind#3795; pizzactl loads the archive of
    `docker save --platform` for the node's platform (the daemon's: the node is its container)."""
    from support.k8s_fakes import add_local_images, docker_cli_calls, loaded_images, use_containerd_store

    kind.create_cluster("pizzactl", 0)
    add_local_images(fake_kind, "pizzactl-model:v1")
    use_containerd_store(fake_kind)
    with FakeDockerd(tmp_path / "docker.sock", "aarch64", kind_home=fake_kind) as dockerd:
        dockerd.api_version = "1.48"  # Docker 28: `docker save --platform`
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        kind.load_images("pizzactl", ["pizzactl-model:v1"])
    assert loaded_images(fake_kind, "pizzactl") == {"pizzactl-model:v1"}
    saves = [c for c in docker_cli_calls(fake_kind) if c[:1] == ["save"]]
    assert saves and saves[0][1:3] == ["--platform", "linux/arm64"]
    assert "containerd image store" in capfd.readouterr().err


def test_the_containerd_store_fallback_on_an_older_docker_says_what_to_do(fake_kind, tmp_path, monkeypatch):
    """Docker before 28 (API 1.48) cannot save one platform: the error says how to get out."""
    from support.k8s_fakes import add_local_images, use_containerd_store

    kind.create_cluster("pizzactl", 0)
    add_local_images(fake_kind, "pizzactl-model:v1")
    use_containerd_store(fake_kind)
    with FakeDockerd(tmp_path / "docker.sock", kind_home=fake_kind) as dockerd, pytest.raises(DeployError) as info:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)  # API 1.45
        kind.load_images("pizzactl", ["pizzactl-model:v1"])
    assert "requires API version 1.48" in info.value.message
    assert "containerd-snapshotter" in info.value.hint and "Docker to 28" in info.value.hint


def test_creating_a_cluster_shows_kinds_steps_on_stderr_and_nothing_on_stdout(fake_kind, capfd):
    """Item 11: `kind create cluster` and `kind load` run for minutes; their steps show as they happen."""
    from support.k8s_fakes import add_local_images

    kind.create_cluster("pizzactl", 0)
    add_local_images(fake_kind, "pizzactl-model:v1")
    kind.load_images("pizzactl", ["pizzactl-model:v1"])
    out, err = capfd.readouterr()
    assert "✓ Preparing nodes" in err and "✓ Installing CNI" in err
    assert 'not yet present on node "pizzactl-control-plane", loading...' in err
    assert out == ""


def _version(models, n: int) -> None:
    version = models / "pizza" / str(n)
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(f"graph {n}".encode())


@pytest.fixture
def kind_world(kmock, fake_kind, isolated, monkeypatch, tmp_path):
    """fake kind + FakeDockerd (that knows kind's nodes) + FakeCluster (images not in the node
    cannot be pulled) + a gateway behind the node's port mapping; yields a settings factory."""
    monkeypatch.setenv("KUBECONFIG", str(isolated / "kubeconfig"))
    monkeypatch.setenv("FAKE_KIND_SERVER", str(kmock.url).rstrip("/"))
    gateway = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    (fake_kind / "pizzactl.backend").write_text(f"127.0.0.1:{gateway.server_address[1]}")
    with FakeDockerd(tmp_path / "docker.sock", kind_home=fake_kind) as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        yield FakeCluster(kmock, kind_home=fake_kind)
    gateway.shutdown()


async def _playing(cluster, fn, *args):
    playing = asyncio.create_task(cluster.run(0.02))
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        playing.cancel()


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_rollback_on_a_recreated_cluster_loads_the_images_it_goes_back_to(kind_world, fake_kind, isolated):
    """Item 8: the cluster was deleted and deploy made a new one (v2 only in its node); rollback
    to v1 must load v1 first, not sit in ImagePullBackOff until the timeout."""
    from pizzactl.deploy import deploy, rollback

    from support.k8s_fakes import node_images

    models = isolated / "models"
    settings = load_settings({"models_dir": models, "model_server": "builtin", "port": free_port()})
    _version(models, 1)
    first = await _playing(kind_world, deploy, settings, 30)
    _version(models, 2)
    await _playing(kind_world, deploy, settings, 30)
    kind.run_kind("delete", "cluster", "--name", "pizzactl")  # e.g. Docker Desktop reset, `kind delete cluster`
    await _playing(kind_world, deploy, settings, 30)
    assert f"docker.io/library/{first['images']['model_image']}" not in node_images(fake_kind, "pizzactl")
    back = await _playing(kind_world, rollback, settings, None, 15)
    assert back["model_version"] == 1 and back["serving"] == {1: 1}


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_images_no_release_needs_are_removed_from_the_kind_node(kind_world, fake_kind, isolated):
    """Item 8: kind never GCs; after v3 serves, v1's model image leaves the node; v3 (serving),
    v2 (the rollback target), the gateway and kind's own images stay."""
    from pizzactl.deploy import deploy

    from support.k8s_fakes import KIND_NODE_IMAGES, node_images

    models = isolated / "models"
    settings = load_settings({"models_dir": models, "model_server": "builtin", "port": free_port()})
    releases = []
    for n in (1, 2, 3):
        _version(models, n)
        releases.append(await _playing(kind_world, deploy, settings, 30))
    inside = node_images(fake_kind, "pizzactl")
    model = [f"docker.io/library/{r['images']['model_image']}" for r in releases]
    assert model[0] not in inside and model[1] in inside and model[2] in inside
    assert f"docker.io/library/{releases[2]['images']['gateway_image']}" in inside
    assert set(KIND_NODE_IMAGES) <= set(inside)


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_switching_target_keeps_a_kind_cluster_whose_training_is_not_home(
    kmock, fake_kind, isolated, monkeypatch, tmp_path
):
    """Item 4: deploy --target docker after a kind deploy would delete the cluster pizzactl made,
    with a running training Job in it: refused, the cluster stays, the hint says what to do."""
    from pizzactl.deploy import deploy
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.state import DeployState
    from pizzactl.kube import training

    from support.k8s_fakes import write_kubeconfig

    monkeypatch.setenv(
        "KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", str(kmock.url).rstrip("/"), "kind-pizzactl"))
    )
    _version(isolated / "models", 1)
    settings = load_settings({"models_dir": isolated / "models", "model_server": "builtin", "port": free_port()})
    assert kind.ensure_cluster(settings) is True
    state_mod.save(
        settings,
        DeployState(
            target="kind",
            url=f"http://127.0.0.1:{settings.port}",
            ports={"gateway": settings.port},
            extra={"cluster": "pizzactl", "context": "kind-pizzactl", "namespace": "pizzactl"},
        ),
    )
    job = "pizzactl-train-20261207-090000"
    training.save_state(
        settings,
        {"context": "kind-pizzactl", "cluster": "pizzactl", "namespace": "pizzactl", "job": job, "image": "t:1"},
    )
    kmock.resources["v1/pods"] = {}
    kmock.objects[kmock.resource("batch/v1/jobs"), "pizzactl", job] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job, "namespace": "pizzactl"},
        "status": {"active": 1},
    }
    with FakeDockerd(tmp_path / "docker.sock", kind_home=fake_kind) as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        with pytest.raises(DeployError) as info:
            await asyncio.to_thread(deploy, settings.replace(target="docker"))
    assert f"Job {job}" in info.value.message and "--target docker" in info.value.message
    assert "train --on kind --attach" in info.value.hint and "pizzactl teardown" in info.value.hint
    assert kind.clusters() == ["pizzactl"] and state_mod.load(settings).target == "kind"
    training.save_state(settings, {**training.load_state(settings), "collected": True})  # `train` brought it home
    await asyncio.to_thread(kind_target.refuse_while_training, settings, state_mod.load(settings), "docker")


def _env(kmock, deployment: str) -> dict[str, str]:
    dep = kmock.objects[kmock.resource("apps/v1/deployments"), "pizzactl", deployment]
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0].get("env", [])}


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_a_canary_on_kind_serves_both_versions_rolls_on_promote_and_leaves_no_gateway_env(
    kind_world, kmock, isolated
):
    """Issue 23: deploy --canary 10 on kind puts versions 1 and 2 with the model config in one
    model image and gives the gateway the split; status reports the trial; a promote-like deploy
    (Plan(2)) rolls the model Deployment; the next plain deploy drops the trial's gateway env
    (server-side apply removes what the manager stops sending)."""
    from pizzactl.deploy import deploy, status
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.rollout import Plan

    models = isolated / "models"
    settings = load_settings({"models_dir": models, "model_server": "builtin", "port": free_port()})
    _version(models, 1)
    _version(models, 2)
    canary = await _playing(kind_world, deploy, settings.replace(canary_percent=10.0), 30)

    assert canary["model_version"] == 1 and canary["images"]["model_image"].startswith("pizzactl-model:v1-2-builtin-")
    trial = {"mode": "canary", "percent": 10.0, "stable": 1, "candidate": 2}
    assert state_mod.load(settings).extra["rollout"] == trial
    model_env, gateway_env = _env(kmock, "pizzactl-model"), _env(kmock, "pizzactl-gateway")
    assert model_env["PIZZACTL_MODEL_CONFIG_FILE"] == "/models/pizza/models.config"
    assert gateway_env["PIZZACTL_CANARY_PERCENT"] == "10" and gateway_env["PIZZACTL_CANARY_VERSION"] == "canary"
    st = await _playing(kind_world, status, settings)
    assert st["rollout"] == {**trial, "available": [2, 1]} and st["serving"] == {1: 1}

    promoted = await _playing(kind_world, deploy, settings, 30, Plan(2))
    assert promoted["images"]["model_image"] != canary["images"]["model_image"]
    assert (await _playing(kind_world, status, settings))["serving"] == {2: 1}  # the new pods replaced the old
    record = state_mod.load(settings)
    assert "rollout" not in record.extra and record.extra["pinned_version"] == 2
    assert _env(kmock, "pizzactl-gateway")["PIZZACTL_CANARY_PERCENT"] == "0"

    await _playing(kind_world, deploy, settings, 30)  # the newest, no model config
    assert not any(k.startswith("PIZZACTL_CANARY") or k == "PIZZACTL_SHADOW" for k in _env(kmock, "pizzactl-gateway"))
    assert "PIZZACTL_MODEL_CONFIG_FILE" not in _env(kmock, "pizzactl-model")
    assert "pinned_version" not in state_mod.load(settings).extra


@pytest.mark.kmock(cls=ApplyingEmulator)
async def test_rollback_from_a_canary_on_kind_ends_the_trial(kind_world, kmock, isolated):
    """Issue 23: rollback during a trial goes back to the release before it, with that release's
    plan: version 1 alone, no model config, no split in the gateway, no trial in the record."""
    from pizzactl.deploy import deploy, rollback, status
    from pizzactl.deploy import state as state_mod

    models = isolated / "models"
    settings = load_settings({"models_dir": models, "model_server": "builtin", "port": free_port()})
    _version(models, 1)
    first = await _playing(kind_world, deploy, settings, 30)
    _version(models, 2)
    await _playing(kind_world, deploy, settings.replace(canary_percent=25.0), 30)
    assert state_mod.load(settings).extra["rollout"]["candidate"] == 2

    back = await _playing(kind_world, rollback, settings, None, 30)
    assert back["model_version"] == 1 and back["images"]["model_image"] == first["images"]["model_image"]
    assert "rollout" not in state_mod.load(settings).extra
    assert not any(k.startswith("PIZZACTL_CANARY") for k in _env(kmock, "pizzactl-gateway"))
    assert "PIZZACTL_MODEL_CONFIG_FILE" not in _env(kmock, "pizzactl-model")
    st = await _playing(kind_world, status, settings)
    assert "rollout" not in st and st["serving"] == {1: 1}
