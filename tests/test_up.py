"""`pizzactl up`: train if needed, deploy where the machine allows, predict a sample, say what next.

The target choice is checked at its boundaries (a fake `kind` on PATH, a Docker endpoint that
does not answer); the whole job runs for real once: a tiny from-scratch model on shared photos,
deployed as local processes because this PATH has no kind, a sample photo predicted through the
gateway, then `up` again reuses the model instead of training.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from pizzactl.config import load_settings
from pizzactl.up import choose_target

from support.cli import make_env, run_pizzactl
from support.photos import link_photos


def fake_kind(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    kind = bin_dir / "kind"
    kind.write_text("#!/bin/sh\nexit 0\n")
    kind.chmod(kind.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def path_without_kind() -> str:
    return os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "kind").exists()
    )


def test_without_kind_up_deploys_locally_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without_kind())
    choice = choose_target(load_settings({}, cwd=tmp_path, environ={}))
    assert choice.target == "local"
    assert "kind is not installed" in choice.reason


def test_with_kind_but_no_docker_daemon_up_deploys_locally_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_kind(tmp_path / "bin")) + os.pathsep + path_without_kind())
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    choice = choose_target(load_settings({}, cwd=tmp_path, environ={}))
    assert choice.target == "local"
    assert "Docker is not reachable" in choice.reason


@pytest.mark.docker
def test_with_kind_and_a_docker_daemon_up_goes_to_kind(tmp_path, monkeypatch, docker_ready):
    monkeypatch.setenv("PATH", str(fake_kind(tmp_path / "bin")) + os.pathsep + path_without_kind())
    choice = choose_target(load_settings({}, cwd=tmp_path, environ={}))
    assert choice.target == "kind"
    assert "kind and Docker" in choice.reason


def test_a_target_the_user_set_wins_over_detection(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without_kind())
    choice = choose_target(load_settings({}, cwd=tmp_path, environ={"PIZZACTL_TARGET": "docker"}))
    assert choice.target == "docker"
    assert "PIZZACTL_TARGET" in choice.reason


@pytest.mark.slow
def test_up_trains_deploys_locally_predicts_a_sample_and_then_reuses_the_model(tmp_path, shared_photos):
    data = link_photos(tmp_path / "data", shared_photos, per_class=8)
    env = make_env(
        tmp_path,
        tmp_path / "models",
        PATH=path_without_kind(),
        PIZZACTL_BACKBONE="small_cnn",
        PIZZACTL_WEIGHTS="none",
        PIZZACTL_EPOCHS="1",
        PIZZACTL_IMAGE_SIZE="64",
    )
    try:
        proc = run_pizzactl("up", "--data", str(data), "--json", env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["trained"] is True and result["target"] == "local"
        assert "kind is not installed" in result["target_reason"]
        assert Path(result["model_dir"]) == tmp_path / "models" / "pizza" / "1"
        sample = result["sample"]
        assert Path(sample["source"]).parent.name == "pizza" and sample["label"] in ("pizza", "not_pizza")
        assert 0.0 <= sample["probability"] <= 1.0 and sample["model_version"] == 1
        assert httpx.get(result["url"] + "/readyz", timeout=5).status_code == 200
        assert httpx.get(result["web_page"], timeout=5).headers["content-type"].startswith("text/html")
        assert result["next"]["teardown"] == "pizzactl teardown"

        again = run_pizzactl("up", "--data", str(data), env=env, cwd=tmp_path, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "Using the exported model" in again.stderr and "training" not in again.stderr
        assert "pizzactl teardown" in again.stdout and result["web_page"] in again.stdout
        assert not (tmp_path / "models" / "pizza" / "2").exists()
    finally:
        run_pizzactl("teardown", env=env, cwd=tmp_path, timeout=60)
