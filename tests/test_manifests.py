"""The Kubernetes manifests, as `pizzactl deploy --dry-run` renders them, checked offline.

Validation uses the Kubernetes OpenAPI schemas bundled with kubernetes-validate (strict: an
unknown field is an error), so a typo in k8s/ fails here, not in a user's cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pizzactl.config import load_settings
from pizzactl.deploy import manifests
from pizzactl.kube.images import plan_images

from support.cli import invoke

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_models(tmp_path) -> Path:
    """A models dir with one version: --dry-run only hashes the files, it never loads them."""
    version = tmp_path / "models" / "pizza" / "3"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x08\x01 not really a graph")
    (version / "variables" / "variables.index").write_bytes(b"index")
    return tmp_path / "models"


def render_dry_run(models: Path, cwd: Path, **env: str) -> list[dict]:
    """`pizzactl deploy --dry-run --models MODELS` as a user runs it; the objects it prints."""
    proc = invoke(
        "deploy",
        "--dry-run",
        "--models",
        str(models),
        "--model-server",
        "builtin",
        env={"DOCKER_HOST": f"unix://{cwd}/nothing.sock", **env},
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture
def dry_run(fake_models, isolated):
    """With no Docker and no kind reachable."""
    return None, render_dry_run(fake_models, isolated, PATH=os.path.dirname(sys.executable))


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_dry_run_manifests_are_valid_for_the_bundled_kubernetes_version(dry_run):
    _, docs = dry_run
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "Secret",  # the gateway's API key digests (empty: no keys)
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "HorizontalPodAutoscaler",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
        ]
    )


def test_dry_run_touches_nothing_and_fills_in_the_content_tags(dry_run, fake_models, isolated):
    _, docs = dry_run
    assert not (isolated / "state" / "deploy.json").exists()
    from pizzactl.kube.docker_daemon import local_platform

    settings = load_settings({"models_dir": fake_models, "model_server": "builtin"})
    planned = plan_images(settings, platform=local_platform())  # no Docker, no cluster: this machine's
    deployments = _by_kind(docs, "Deployment")
    images = {name: d["spec"]["template"]["spec"]["containers"][0]["image"] for name, d in deployments.items()}
    assert images == {"pizzactl-gateway": planned.gateway_image, "pizzactl-model": planned.model_image}
    assert images["pizzactl-model"].startswith("pizzactl-model:v3-builtin-")
    assert deployments["pizzactl-model"]["metadata"]["annotations"][manifests.MODEL_VERSION_ANNOTATION] == "3"
    assert all(d["metadata"].get("namespace") == "pizzactl" for d in docs if d["kind"] != "Namespace")


def test_every_pod_is_locked_down_and_probed(dry_run):
    _, docs = dry_run
    for dep in _by_kind(docs, "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["enableServiceLinks"] is False  # else PIZZACTL_MODEL_PORT=tcp://... breaks the servers
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            assert c["readinessProbe"] and c["livenessProbe"]
            assert c["imagePullPolicy"] == "IfNotPresent"  # kind-loaded images are never pulled
    model = _by_kind(docs, "Deployment")["pizzactl-model"]["spec"]["template"]["spec"]["containers"][0]
    assert model["readinessProbe"]["httpGet"]["path"] == "/v1/models/pizza"
    assert model["ports"][0]["containerPort"] == 8501


def test_model_server_exposes_its_grpc_port_8500_in_the_pod_and_the_service(dry_run):
    """8500 is tensorflow/serving's default --port; the builtin server serves gRPC there only when
    PIZZACTL_GRPC_PORT says so, so the pod sets it (issue 24)."""
    _, docs = dry_run
    model = _by_kind(docs, "Deployment")["pizzactl-model"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": 8500} in model["ports"]
    env = {e["name"]: e.get("value") for e in model["env"]}
    assert env["PIZZACTL_GRPC_PORT"] == "8500"
    svc = _by_kind(docs, "Service")["pizzactl-model"]
    assert {"name": "grpc", "port": 8500, "targetPort": "grpc"} in svc["spec"]["ports"]


def test_gateway_is_exposed_on_the_node_port_kind_maps(dry_run):
    _, docs = dry_run
    svc = _by_kind(docs, "Service")["pizzactl-gateway"]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0] == {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30096}
    gateway = _by_kind(docs, "Deployment")["pizzactl-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["ports"][0] == {"name": "http", "containerPort": 9696}
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["PIZZACTL_MODEL_URL"] == "http://pizzactl-model.pizzactl.svc:8501"
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in _by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert set(hpas) == {"pizzactl-model", "pizzactl-gateway"}
    assert hpas["pizzactl-gateway"]["minReplicas"] == 2
    # The HPAs own the replica counts: re-applying must not reset a scaled-up deployment.
    assert all("replicas" not in d["spec"] for d in _by_kind(docs, "Deployment").values())
    assert set(_by_kind(docs, "PodDisruptionBudget")) == {"pizzactl-model", "pizzactl-gateway"}


def test_render_follows_settings():
    settings = load_settings({"allow_private_urls": True}, environ={}).replace(namespace="pizza-staging")
    docs = manifests.render(settings, "reg.example/pizzactl-gateway:1", "reg.example/pizzactl-model:2")
    assert _by_kind(docs, "Namespace").keys() == {"pizza-staging"}
    gateway = _by_kind(docs, "Deployment")["pizzactl-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["image"] == "reg.example/pizzactl-gateway:1"
    assert {"name": "PIZZACTL_ALLOW_PRIVATE_URLS", "value": "true"} in gateway["env"]


def test_kustomization_lists_every_manifest_and_k8s_docker_are_real_top_level_directories():
    k8s_files = sorted(p.name for p in manifests.K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(manifests.kustomization()["resources"]) == k8s_files
    for top in ("k8s", "docker"):
        assert (REPO / top).is_dir() and not (REPO / top).is_symlink()  # symlinks break Windows checkouts
        assert not (REPO / "src" / "pizzactl" / top).exists()  # one copy
    assert manifests.K8S_DIR == REPO / "k8s"


def test_model_threads_follow_the_cpu_limit(tmp_path):
    """TF sizes its pools to the node's cores, not the pod's limit: the render pins them to the limit."""
    settings = load_settings({}, environ={})
    tf = manifests.render(settings, "g:1", "m:1", model_server="tfserving")
    model = _by_kind(tf, "Deployment")["pizzactl-model"]["spec"]["template"]["spec"]["containers"][0]
    assert model["resources"]["limits"]["cpu"] == "2"
    assert "--tensorflow_intra_op_parallelism=2" in model["args"]
    assert "--tensorflow_inter_op_parallelism=1" in model["args"]
    cmd = (REPO / "docker" / "model.Dockerfile").read_text().rsplit("CMD", 1)[1]
    assert all(flag in model["args"] for flag in json.loads(cmd))  # args replace CMD: nothing lost

    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    (k8s_dir / "model.yaml").write_text((k8s_dir / "model.yaml").read_text().replace('cpu: "2"', "cpu: 1500m"))
    builtin = manifests.render(settings, "g:1", "m:1", model_server="builtin", k8s_dir=k8s_dir)
    model = _by_kind(builtin, "Deployment")["pizzactl-model"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in model["env"]}
    assert env["PIZZACTL_TF_INTRA_OP_THREADS"] == "2" and env["OMP_NUM_THREADS"] == "2"
    assert "args" not in model  # the builtin server's own CMD stays


def test_pods_carry_the_model_version_and_the_pull_secret():
    settings = load_settings({"pull_secret": "regcred"}, environ={})
    docs = manifests.render(settings, "g:1", "m:1", model_version=7)
    deployments = _by_kind(docs, "Deployment")
    model_pod = deployments["pizzactl-model"]["spec"]["template"]
    assert model_pod["metadata"]["labels"][manifests.MODEL_VERSION_LABEL] == "7"
    for dep in deployments.values():
        assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert (
        "imagePullSecrets"
        not in _by_kind(manifests.render(load_settings({}, environ={}), "g", "m"), "Deployment")["pizzactl-gateway"][
            "spec"
        ]["template"]["spec"]
    )


@pytest.mark.slow
def test_a_built_wheel_ships_k8s_and_docker_and_renders_from_them(tmp_path, fake_models):
    """A non-editable install (the wheel `pip install .` builds) holds pizzactl/k8s and pizzactl/docker."""
    import zipfile

    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(wheels.glob("pizzactl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pizzactl/k8s/kustomization.yaml" in names and "pizzactl/docker/gateway.Dockerfile" in names
    assert "pizzactl/k8s/training/job.yaml" in names and "pizzactl/docker/trainer.Dockerfile" in names  # train --on
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    docs = render_dry_run(fake_models, tmp_path, PYTHONPATH=str(target))
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = "import pizzactl.deploy.manifests as m; print(m.K8S_DIR)"
    where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(target / "pizzactl" / "k8s")
    assert docs[0]["kind"] == "Namespace"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_builds_the_same_objects_pizzactl_renders():
    proc = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(proc.stdout) if d}
    rendered = manifests.render(load_settings({}, environ={}), "g:1", "m:1")
    assert built == {(d["kind"], d["metadata"]["name"]) for d in rendered}


def test_a_gateway_in_front_of_tf_serving_is_told_the_class_names(tmp_path):
    """TF Serving serves no pizzactl.json: the render passes the deployed version's classes on."""
    version = tmp_path / "models" / "pizza" / "4"
    (version / "assets.extra").mkdir(parents=True)
    (version / "assets.extra" / "pizzactl.json").write_text(json.dumps({"classes": ["hot dog", "pizza", "salad"]}))
    settings = load_settings({"models_dir": str(tmp_path / "models")}, environ={})

    def gateway_env(model_server: str, model_version: int | None) -> dict:
        docs = manifests.render(settings, "g:1", "m:1", model_version=model_version, model_server=model_server)
        container = _by_kind(docs, "Deployment")["pizzactl-gateway"]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert gateway_env("tfserving", 4)["PIZZACTL_CLASSES"] == "hot dog,pizza,salad"
    assert "PIZZACTL_CLASSES" not in gateway_env("builtin", 4)  # it reads them from the model server
    assert "PIZZACTL_CLASSES" not in gateway_env("tfserving", 5)  # no such version: columns are numbered
