"""Canary and shadow on the docker, kind and cluster targets (issue 23): what the model image holds,
what the rendered pods run, what `deploy --dry-run --canary` shows. Offline: no Docker, no cluster
(tests/test_kind.py deploys a canary through the fake kind and the kmock API server)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pizzactl.config import load_settings
from pizzactl.deploy import manifests
from pizzactl.deploy.rollout import Plan
from pizzactl.deploy.targets.docker import container_specs
from pizzactl.kube.images import build_context, plan_images
from pizzactl.serving.modelserver.versions import policy_from_text

from support.cli import invoke

REPO = Path(__file__).resolve().parents[1]
CANARY = Plan(1, 2, "canary", 10.0)


def _models(root: Path, *versions: int) -> Path:
    for version in versions:  # a version is a directory with a saved_model.pb: enough to hash and copy
        (root / "models" / "pizza" / str(version)).mkdir(parents=True)
        (root / "models" / "pizza" / str(version) / "saved_model.pb").write_bytes(f"graph {version}".encode())
    return root / "models"


def _containers(docs) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0] for d in docs if d["kind"] == "Deployment"
    }


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_a_trial_image_holds_both_versions_and_its_model_config_and_its_tag_follows_the_plan(tmp_path):
    models = _models(tmp_path, 1, 2)
    settings = load_settings({"models_dir": models, "model_server": "builtin"}, environ={})
    pinned = CANARY.in_image()
    assert pinned is not None and pinned.versions == (1, 2)
    policy = policy_from_text(pinned.model_config, "pizza")  # what the model server reads at start
    assert policy.select([1, 2, 3]) == [2, 1] and dict(policy.labels) == {"stable": 1, "canary": 2}
    assert 'base_path: "/models/pizza"' in pinned.model_config  # the path inside the container

    with build_context(
        "builtin", models / "pizza" / "1", more_versions=(models / "pizza" / "2",), model_config="x"
    ) as ctx:
        inside = sorted(p.relative_to(ctx / "models").as_posix() for p in (ctx / "models").rglob("*") if p.is_file())
    assert inside == ["pizza/1/saved_model.pb", "pizza/2/saved_model.pb", "pizza/models.config"]

    newest = plan_images(settings).model_image
    trial = plan_images(settings, pinned=pinned).model_image
    after_abort = plan_images(settings, pinned=Plan(1).in_image()).model_image
    assert trial.startswith("pizzactl-model:v1-2-builtin-") and after_abort.startswith("pizzactl-model:v1-builtin-")
    assert len({newest, trial, after_abort}) == 3  # each plan rolls the model Deployment
    assert Plan().in_image() is None and plan_images(settings).model_image == newest  # plain: as before


def test_pinned_pods_start_the_model_server_with_the_model_config_and_the_gateway_with_the_split():
    settings = load_settings({}, environ={})
    plain = manifests.render(settings, "g:1", "m:1", model_version=1, model_server="builtin")
    assert manifests.render(settings, "g:1", "m:1", model_version=1, model_server="builtin", plan=Plan()) == plain

    builtin = _containers(manifests.render(settings, "g:1", "m:1", model_version=1, plan=CANARY))
    assert _env(builtin["pizzactl-model"])["PIZZACTL_MODEL_CONFIG_FILE"] == "/models/pizza/models.config"
    assert builtin["pizzactl-model"]["readinessProbe"]["httpGet"]["path"] == "/v1/models/pizza/versions/1"
    assert {k: v for k, v in _env(builtin["pizzactl-gateway"]).items() if k in CANARY.gateway_env()} == (
        CANARY.gateway_env()
    )

    tf = _containers(manifests.render(settings, "g:1", "m:1", model_version=1, model_server="tfserving", plan=CANARY))
    args = tf["pizzactl-model"]["args"]
    assert "--model_config_file=/models/pizza/models.config" in args
    cmd = (REPO / "docker" / "model.Dockerfile").read_text().rsplit("CMD", 1)[1]
    assert all(flag in args for flag in json.loads(cmd))  # args replace CMD: nothing lost
    assert "PIZZACTL_MODEL_CONFIG_FILE" not in _env(tf["pizzactl-model"])  # TF Serving takes its flag


def test_docker_runs_the_pinned_pods_as_rendered():
    settings = load_settings({}, environ={})
    docs = manifests.render(
        settings, "g:1", "m:1", model_version=1, model_server="tfserving", plan=Plan(1, 2, "shadow")
    )
    specs = {s["name"]: s for s in container_specs(settings, docs)}
    assert "--model_config_file=/models/pizza/models.config" in specs["pizzactl-model"]["command"]
    gateway = specs["pizzactl-gateway"]["environment"]
    assert gateway["PIZZACTL_SHADOW"] == "1" and gateway["PIZZACTL_CANARY_PERCENT"] == "0"


def _dry_run(tmp_path: Path, models: Path, *args: str, **env: str):
    """`pizzactl deploy --dry-run --models MODELS ARGS` as a user runs it, with no Docker daemon."""
    return invoke(
        "deploy",
        "--dry-run",
        "--models",
        str(models),
        *args,
        env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock", "PATH": str(Path(sys.executable).parent), **env},
        cwd=tmp_path,
    )


def test_a_kind_dry_run_with_canary_shows_the_model_config_and_the_gateway_env(tmp_path):
    models = _models(tmp_path, 1, 2)
    proc = _dry_run(tmp_path, models, "--canary", "10", "--model-server", "builtin")
    assert proc.returncode == 0, proc.stderr
    assert "# canary: version 2 gets 10% of requests, version 1 the rest" in proc.stdout
    assert (
        "#   model_config_list {" in proc.stdout and '#       version_labels { key: "canary" value: 2 }' in proc.stdout
    )
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    containers = _containers(docs)
    assert containers["pizzactl-model"]["image"].startswith("pizzactl-model:v1-2-builtin-")
    assert _env(containers["pizzactl-gateway"])["PIZZACTL_CANARY_PERCENT"] == "10"
    assert not (tmp_path / "state" / "deploy.json").exists()


def test_canary_and_shadow_together_are_refused_alike_by_deploy_and_by_the_gateway(tmp_path):
    """One rule for both layers: a gateway started by hand with both settings must not quietly
    run a shadow where deploy would have refused."""
    from pizzactl.errors import ConfigError
    from pizzactl.serving.gateway import create_app

    models = _models(tmp_path, 1, 2)
    proc = _dry_run(tmp_path, models, "--canary", "10", "--shadow")
    assert proc.returncode != 0
    assert "choose one" in proc.stderr
    with pytest.raises(ConfigError, match="choose one") as refused:
        create_app("http://127.0.0.1:9", canary_percent=10, shadow=True)
    assert "PIZZACTL_SHADOW" in refused.value.hint


def test_a_kind_deploy_says_its_gateway_calls_the_model_server_over_rest_when_grpc_is_asked(tmp_path):
    models = _models(tmp_path, 1)
    proc = _dry_run(tmp_path, models, "--model-server", "builtin", PIZZACTL_MODEL_PROTOCOL="grpc")
    assert proc.returncode == 0, proc.stderr
    assert "on kind the gateway calls the model server over REST" in " ".join(proc.stderr.split())
    assert "PIZZACTL_MODEL_PROTOCOL" not in proc.stdout  # the manifests keep the gateway on REST
