"""`pizzactl build`: real images from the tiny exported model (docker tier).

The gateway image must stay small and TensorFlow-free; tags come from content (never
:latest), so unchanged inputs give the same tag and a changed model gives a new one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import docker
import pytest

from pizzactl.config import load_settings
from pizzactl.deploy.images import plan_images

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MAX_GATEWAY_BYTES = 250 * 1000 * 1000


def test_gateway_image_is_small_and_has_no_tensorflow(built_images, docker_ready):
    assert 0 < built_images.gateway_size <= MAX_GATEWAY_BYTES, built_images.gateway_size
    with pytest.raises(docker.errors.ContainerError) as info:
        docker_ready.containers.run(built_images.gateway_image, ["python", "-c", "import tensorflow"], remove=True)
    assert b"No module named 'tensorflow'" in info.value.stderr


def test_gateway_image_runs_as_non_root_with_a_healthcheck(built_images, docker_ready):
    config = docker_ready.images.get(built_images.gateway_image).attrs["Config"]
    assert config["User"].split(":")[0] not in ("", "0", "root")
    assert any("/healthz" in part for part in config["Healthcheck"]["Test"])
    uid = docker_ready.containers.run(built_images.gateway_image, ["id", "-u"], remove=True)
    assert uid.strip() != b"0"


def test_model_server_image_holds_the_model_and_tensorflow(built_images, docker_ready):
    assert built_images.model_version == 1
    out = docker_ready.containers.run(
        built_images.model_image,
        ["python", "-c", "import os, tensorflow as tf; print(tf.__version__, sorted(os.listdir('/models/pizza')))"],
        remove=True,
    )
    assert out.decode().split()[0].startswith("2.")
    assert "['1']" in out.decode()


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


def test_build_cli_prints_image_names_and_sizes_as_json(built_images, tiny_model, tmp_path):
    planned = plan_images(load_settings({"models_dir": tiny_model, "model_server": "builtin"}, environ={}, cwd=tmp_path))
    env = {**os.environ, "PIZZACTL_MODELS_DIR": str(tiny_model)}
    proc = subprocess.run(
        [sys.executable, "-m", "pizzactl", "build", "--model-server", "builtin", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["gateway_image"] == planned.gateway_image  # the tag the content determines
    assert result["model_image"] == planned.model_image
    assert 0 < result["gateway_size"] <= 250_000_000 < result["model_size"]
