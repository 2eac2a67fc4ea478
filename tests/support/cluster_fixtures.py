"""Fixtures and helpers the cluster tests share (deploy, rollout, train --on, capacity).

A pytest plugin (conftest's `pytest_plugins`), so tests do not import each other.
"""

from __future__ import annotations

import pytest

from pizzactl.config import load_settings
from pizzactl.kube.images import Images

from support.docker_fakes import FakeDockerd
from support.k8s_fakes import write_kubeconfig
from support.photos import make_classes

REGISTRY = "reg.example/me"


@pytest.fixture
def world(kmock, isolated, monkeypatch, tmp_path):
    """A kube context `prod` on kmock, a fake Docker daemon, no Kaggle credentials anywhere."""
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(isolated / "kubeconfig", str(kmock.url).rstrip("/"), "prod")))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    with FakeDockerd(tmp_path / "docker.sock") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        yield dockerd


@pytest.fixture
def photos(tmp_path):
    """A dataset folder of 4 synthetic photos per class (the fake cluster's trainer only counts them)."""
    return make_classes(tmp_path / "photos-4", ["not_pizza", "pizza"], per_class=4, size=64)


def cluster_settings(**flags):
    """Settings of a deploy to the context `prod`, pushing to a registry."""
    return load_settings({"context": "prod", "registry": REGISTRY, **flags})


def release_images(version: int, tag: str = "a") -> Images:
    """The images of one release of model `version` (`tag`: a different build of the same version)."""
    return Images(
        gateway_image=f"{REGISTRY}/pizzactl-gateway:0.1.0-{tag}",
        model_image=f"{REGISTRY}/pizzactl-model:v{version}-builtin-{tag}",
        model_server="builtin",
        model_version=version,
    )
