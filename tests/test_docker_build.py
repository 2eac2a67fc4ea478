"""`pizzactl build`: real images from the tiny exported model (docker tier).

The gateway image must stay small and TensorFlow-free; tags come from content (never
:latest), so unchanged inputs give the same tag and a changed model gives a new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import docker
from pizzactl.config import load_settings
from pizzactl.kube.images import build_context, plan_images

from support.cli import run_pizzactl

REPO = Path(__file__).resolve().parents[1]

MAX_GATEWAY_BYTES = 250 * 1000 * 1000


@pytest.mark.docker
@pytest.mark.slow
def test_gateway_image_is_small_and_has_no_tensorflow(built_images, docker_ready):
    assert 0 < built_images.gateway_size <= MAX_GATEWAY_BYTES, built_images.gateway_size
    with pytest.raises(docker.errors.ContainerError) as info:
        docker_ready.containers.run(built_images.gateway_image, ["python", "-c", "import tensorflow"], remove=True)
    assert b"No module named 'tensorflow'" in info.value.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_gateway_image_runs_as_non_root_with_a_healthcheck(built_images, docker_ready):
    config = docker_ready.images.get(built_images.gateway_image).attrs["Config"]
    assert config["User"].split(":")[0] not in ("", "0", "root")
    assert any("/healthz" in part for part in config["Healthcheck"]["Test"])
    assert "pizzactl" not in config["Labels"]  # that label marks what teardown removes; containers inherit it
    uid = docker_ready.containers.run(built_images.gateway_image, ["id", "-u"], remove=True)
    assert uid.strip() != b"0"


@pytest.mark.docker
@pytest.mark.slow
def test_model_server_image_holds_the_model_and_tensorflow(built_images, docker_ready):
    assert built_images.model_version == 1
    # the gRPC face's modules import: stubs built into the package, grpcio and grpcio-health-checking
    script = (
        "import os, tensorflow as tf, pizzactl.serving.modelserver.grpc_v2; "
        "print(tf.__version__, sorted(os.listdir('/models/pizza')))"
    )
    out = docker_ready.containers.run(built_images.model_image, ["python", "-c", script], remove=True)
    assert out.decode().split()[0].startswith("2.")
    assert "['1']" in out.decode()
    config = docker_ready.images.get(built_images.model_image).attrs["Config"]
    assert "PIZZACTL_GRPC_PORT=8500" in config["Env"]  # gRPC on, on TF Serving's port (issue 24)
    assert {"8500/tcp", "8501/tcp"} <= set(config["ExposedPorts"])


@pytest.mark.docker
@pytest.mark.slow
def test_tags_come_from_content_never_latest(built_images, tiny_model, tmp_path):
    assert not built_images.gateway_image.endswith(":latest")
    assert not built_images.model_image.endswith(":latest")
    settings = load_settings({"models_dir": tiny_model, "model_server": "builtin"}, environ={}, cwd=tmp_path)
    first, again = plan_images(settings), plan_images(settings)
    assert (again.gateway_image, again.model_image) == (first.gateway_image, first.model_image)
    assert first.model_image.startswith("pizzactl-model:v1-builtin-")

    changed = tmp_path / "models"
    shutil.copytree(tiny_model, changed)
    (changed / "pizza" / "1" / "assets.extra" / "note.txt").write_text("retrained")
    other = plan_images(settings.replace(models_dir=changed))
    assert other.gateway_image == first.gateway_image
    assert other.model_image != first.model_image
    assert other.model_image.startswith("pizzactl-model:v1-builtin-")


@pytest.mark.docker
@pytest.mark.slow
def test_build_cli_prints_image_names_and_sizes_as_json(built_images, tiny_model, tmp_path):
    planned = plan_images(
        load_settings({"models_dir": tiny_model, "model_server": "builtin"}, environ={}, cwd=tmp_path)
    )
    env = {**os.environ, "PIZZACTL_MODELS_DIR": str(tiny_model)}
    proc = run_pizzactl("build", "--model-server", "builtin", "--json", env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["gateway_image"] == planned.gateway_image  # the tag the content determines
    assert result["model_image"] == planned.model_image
    assert 0 < result["gateway_size"] <= 250_000_000 < result["model_size"]


def _requirement_names(role: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "docker/requirements.py"), role, str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    )
    return {re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower() for line in proc.stdout.splitlines()}


def test_gateway_requirements_leave_out_tensorflow_numpy_and_cli_clients():
    gateway = _requirement_names("gateway")
    assert {"fastapi", "uvicorn", "aiohttp", "pillow"} <= gateway
    assert not gateway & {"tensorflow", "numpy", "docker", "kubernetes", "kaggle", "kagglehub"}
    assert "numpy" in _requirement_names("modelserver")


def test_build_context_holds_the_package_and_the_model_only(tmp_path):
    version = tmp_path / "models" / "pizza" / "4"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    with build_context("builtin", version) as ctx:
        assert sorted(p.name for p in ctx.iterdir()) == [".dockerignore", "docker", "models", "pyproject.toml", "src"]
        assert (ctx / "models/pizza/4/saved_model.pb").read_bytes() == b"graph"
        assert (ctx / "docker/modelserver.Dockerfile").is_file()  # where a clone has it
        assert (ctx / "src/pizzactl/serving/gateway.py").is_file()
        assert not list(ctx.rglob("__pycache__"))
        project = tomllib.loads((ctx / "pyproject.toml").read_text())["project"]
        assert project["name"] == "pizzactl"
        declared = [*project["dependencies"], *(r for reqs in project["optional-dependencies"].values() for r in reqs)]
        assert any(d.startswith("fastapi") for d in declared)  # the [serve] extra's, via [gateway]
        assert not any("tensorflow" in d for d in declared)  # the Dockerfile's own layer, never pip's
        size = sum(p.stat().st_size for p in ctx.rglob("*") if p.is_file())
        assert size < 5_000_000
    with build_context("gateway") as ctx:
        assert not (ctx / "models").exists()


def test_model_files_are_world_readable_in_the_context_whatever_the_umask(tmp_path):
    """COPY keeps file modes: a model exported under umask 077 must still be readable by the
    images' non-root users (uid 10001 / 65532 in the pod spec)."""
    import stat

    version = tmp_path / "models" / "pizza" / "3"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    (version / "variables" / "variables.index").write_bytes(b"index")
    for path in [version, version / "variables", *version.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    with build_context("tfserving", version) as ctx:
        for path in (ctx / "models").rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o004, f"{path} is {oct(mode)}"
            if path.is_dir():
                assert mode & 0o001
