"""`pizzactl deploy --target docker`: real containers, a real prediction, a clean teardown."""

from __future__ import annotations

import json

import httpx
import pytest

from pizzactl.config import load_settings
from pizzactl.deploy import deploy, status, teardown
from pizzactl.ports import free_port


def _leftovers(client) -> tuple[list, list]:
    return (
        client.containers.list(all=True, filters={"label": "pizzactl=1"}),
        client.networks.list(filters={"label": "pizzactl=1"}),
    )


@pytest.mark.docker
@pytest.mark.slow
def test_docker_deploy_predicts_a_photo_and_teardown_leaves_nothing(
    built_images, docker_ready, tiny_model, shared_photos, isolated
):
    port = free_port()
    settings = load_settings({"target": "docker", "models_dir": tiny_model, "model_server": "builtin", "port": port})
    try:
        result = deploy(settings, timeout=240)
        assert result["target"] == "docker"
        assert result["url"] == f"http://127.0.0.1:{port}"
        assert result["model_version"] == 1

        st = status(settings)
        assert st["deployed"] and st["ready"] and st["target"] == "docker"
        assert set(st["containers"].values()) == {"running"}

        photo = shared_photos["pizza"][0].read_bytes()
        resp = httpx.post(f"{result['url']}/predict", content=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert resp.status_code == 200, resp.text
        prediction = resp.json()
        assert 0.0 <= prediction["probability"] <= 1.0
        assert prediction["label"] in ("pizza", "not_pizza")
        assert prediction["model_version"] == 1

        model = docker_ready.containers.get("pizzactl-model")
        host = model.attrs["HostConfig"]
        # The rendered pod spec, field by field (k8s/model.yaml): a rehearsal of the cluster.
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
        assert model.attrs["Config"]["User"] == "65532:65532"  # runAsUser, not the image's USER
        assert host["Memory"] == 2 * 2**30 and host["NanoCpus"] == 2 * 10**9
        assert "/tmp" in host["Tmpfs"] and "no-new-privileges:true" in host["SecurityOpt"]
        env = dict(e.split("=", 1) for e in model.attrs["Config"]["Env"])
        assert env["PIZZACTL_TF_INTRA_OP_THREADS"] == "2"
        gateway_env = dict(
            e.split("=", 1) for e in docker_ready.containers.get("pizzactl-gateway").attrs["Config"]["Env"]
        )
        assert gateway_env["PIZZACTL_MODEL_URL"] == "http://pizzactl-model.pizzactl.svc:8501"  # Service DNS
        published = {k: v for k, v in (model.attrs["NetworkSettings"]["Ports"] or {}).items() if v}
        assert list(published) == ["8500/tcp"]  # the gRPC port only, on a port Docker picked
        assert st["grpc"] == f"127.0.0.1:{published['8500/tcp'][0]['HostPort']}" == result["grpc"]
        assert env["PIZZACTL_GRPC_PORT"] == "8500"
    finally:
        down = teardown(settings)
    assert down["torn_down"] is True
    containers, networks = _leftovers(docker_ready)
    assert containers == [] and networks == []
    assert teardown(settings)["torn_down"] is False  # a second teardown does nothing


def test_docker_deploy_without_a_daemon_says_how_to_fix_it(isolated, monkeypatch):
    from pizzactl.errors import DeployError

    version = isolated / "some-models" / "pizza" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{isolated}/no-docker.sock")
    settings = load_settings({"target": "docker", "models_dir": version.parents[1], "port": free_port()})
    with pytest.raises(DeployError) as info:
        deploy(settings, timeout=5)
    assert "Docker daemon" in info.value.message
    assert "pizzactl doctor" in info.value.hint


@pytest.mark.docker
@pytest.mark.slow
def test_docker_rollback_runs_with_what_the_deploy_was_made_with_not_this_shells_flags(
    built_images, docker_ready, tiny_model, isolated
):
    """A rollback from a later shell (no PIZZACTL_API_KEY, no --allow-private-urls, another
    default port) must not open the gateway or move it: it runs the recorded options again."""
    import hashlib
    from dataclasses import replace

    from pizzactl.deploy import rollback
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.targets import docker as docker_target

    port = free_port()
    made_with = {"target": "docker", "models_dir": tiny_model, "model_server": "builtin", "port": port}
    settings = load_settings({**made_with, "api_key": "rollback-key-1", "allow_private_urls": True}, environ={})
    later = load_settings({"target": "docker", "models_dir": tiny_model, "model_server": "builtin"}, environ={})
    try:
        docker_target.deploy(settings, timeout=240, images=built_images)
        st = state_mod.load(settings)
        # an earlier release to go back to (the same images: what matters is how they are run)
        state_mod.save(settings, replace(st, extra={**st.extra, "history": [st.extra["images"]]}))
        result = rollback(later, None, timeout=240)
        assert result["url"] == f"http://127.0.0.1:{port}"
        env = dict(e.split("=", 1) for e in docker_ready.containers.get("pizzactl-gateway").attrs["Config"]["Env"])
        assert env["PIZZACTL_API_KEY_HASHES"] == hashlib.sha256(b"rollback-key-1").hexdigest()
        assert env["PIZZACTL_ALLOW_PRIVATE_URLS"] == "true"
        assert httpx.get(f"{result['url']}/metrics", timeout=30).status_code == 401
        assert "rollback-key-1" not in state_mod.state_path(settings).read_text()
    finally:
        teardown(settings)


@pytest.mark.docker
@pytest.mark.slow
def test_docker_canary_serves_both_versions_from_one_image_and_status_reports_them(
    built_images, docker_ready, tiny_model, shared_photos, isolated
):
    """Issue 23 on Docker: the model image holds versions 1 and 2 and the model config, the model
    server loads both, the gateway container splits 50/50, status reports both AVAILABLE."""
    import shutil

    models = isolated / "models"
    for version in ("1", "2"):
        shutil.copytree(tiny_model / "pizza" / "1", models / "pizza" / version)
    settings = load_settings(
        {"target": "docker", "models_dir": models, "model_server": "builtin", "port": free_port(), "canary_percent": 50}
    )
    trial = {"mode": "canary", "percent": 50.0, "stable": 1, "candidate": 2}
    try:
        result = deploy(settings, timeout=240)
        assert result["rollout"] == trial and result["model_version"] == 1
        assert result["images"]["model_image"].startswith("pizzactl-model:v1-2-builtin-")

        photo = shared_photos["pizza"][0].read_bytes()
        versions = []
        for _ in range(10):
            resp = httpx.post(
                f"{result['url']}/predict", content=photo, headers={"Content-Type": "image/jpeg"}, timeout=60
            )
            assert resp.status_code == 200, resp.text
            versions.append(resp.json()["model_version"])
        assert versions.count(1) == versions.count(2) == 5  # the split counts, it does not draw

        st = status(settings)
        assert st["rollout"] == {**trial, "available": [2, 1]}
    finally:
        teardown(settings)
    assert _leftovers(docker_ready) == ([], [])


def test_docker_publishes_the_model_grpc_port_on_a_free_host_port_and_status_shows_it(isolated, monkeypatch):
    """The rendered model pod's `grpc` port (8500) is published as `-p HOST::8500` (Docker picks the
    host port, so a TF Serving already on 8500 is no obstacle); status reads the port back."""
    from pizzactl.deploy import manifests
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.targets.docker import container_specs

    from support.cli import invoke
    from support.docker_fakes import FakeDockerd

    settings = load_settings({"target": "docker", "port": 9797})
    specs = {s["name"]: s for s in container_specs(settings, manifests.render(settings, "g:1", "m:1"))}
    assert specs["pizzactl-model"]["ports"] == {"8500/tcp": ("127.0.0.1", None)}
    assert specs["pizzactl-gateway"]["ports"] == {"9696/tcp": ("127.0.0.1", 9797)}
    assert specs["pizzactl-model"]["environment"]["PIZZACTL_GRPC_PORT"] == "8500"

    url = f"http://127.0.0.1:{free_port()}"  # nothing answers: not ready, still listed
    names = ["pizzactl-model", "pizzactl-gateway"]
    state_mod.save(
        settings, state_mod.DeployState(target="docker", url=url, model_version=1, extra={"containers": names})
    )
    with FakeDockerd(isolated / "docker.sock") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        dockerd.add_container("pizzactl-model", ports={"8500/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]})
        dockerd.add_container("pizzactl-gateway", ports={"9696/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9797"}]})
        shown = invoke("status")
        data = json.loads(invoke("status", "--json").stdout)
    assert shown.returncode == 0, shown.stderr
    assert "grpc" in shown.stdout and "127.0.0.1:49153" in shown.stdout
    assert data["grpc"] == "127.0.0.1:49153" and data["containers"] == dict.fromkeys(names, "running")
