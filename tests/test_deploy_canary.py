"""`pizzactl deploy --target local --canary P`: the newest version on trial beside the stable one (issue 23)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal

import httpx
import pytest

from pizzactl.errors import EXIT_USER
from pizzactl.model.store import list_versions

from support.cli import make_env, run_pizzactl
from support.processes import alive


@pytest.mark.slow
def test_deploy_canary_serves_both_versions_splits_and_status_shows_them(tiny_model, tmp_path, shared_photos):
    models = tmp_path / "models"
    source = list_versions(tiny_model)[-1][1]
    shutil.copytree(source, models / "pizza" / "1")
    env = make_env(tmp_path, models)
    one = run_pizzactl("deploy", "--target", "local", "--canary", "50", env=env, cwd=tmp_path)
    assert one.returncode == EXIT_USER and "two versions" in one.stderr  # nothing to try yet

    shutil.copytree(source, models / "pizza" / "2")
    seen: set[int] = set()
    try:
        proc = run_pizzactl(
            "deploy", "--target", "local", "--canary", "50", "--json", "--timeout", "240", env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        seen.update(json.loads((tmp_path / "state" / "deploy.json").read_text())["pids"].values())
        assert result["rollout"] == {"mode": "canary", "percent": 50.0, "stable": 1, "candidate": 2}
        assert result["model_version"] == 1  # stable: what users get outside the canary

        photo = base64.b64encode(shared_photos["pizza"][0].read_bytes()).decode()
        versions = []
        for _ in range(20):
            reply = httpx.post(result["url"] + "/predict", json={"image_b64": photo}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-model-version"] == str(reply.json()["model_version"])
            versions.append(reply.json()["model_version"])
        assert versions.count(2) == 10 and versions.count(1) == 10

        status = json.loads(run_pizzactl("status", "--json", env=env, cwd=tmp_path).stdout)
        assert status["rollout"] == {
            "mode": "canary",
            "percent": 50.0,
            "stable": 1,
            "candidate": 2,
            "available": [2, 1],
        }
        shown = run_pizzactl("status", env=env, cwd=tmp_path).stdout
        assert "candidate=2" in shown and "stable=1" in shown
    finally:
        run_pizzactl("teardown", env=env, cwd=tmp_path, timeout=60)
        for pid in seen:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_deploy_canary_on_docker_with_one_version_is_refused_before_anything_changes(tmp_path):
    (tmp_path / "models" / "pizza" / "1").mkdir(parents=True)
    (tmp_path / "models" / "pizza" / "1" / "saved_model.pb").write_bytes(b"")
    env = {**make_env(tmp_path, tmp_path / "models"), "DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}
    proc = run_pizzactl("deploy", "--target", "docker", "--canary", "10", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_USER, proc.stderr
    assert "two versions" in proc.stderr  # before Docker is asked anything
    assert not (tmp_path / "state" / "deploy.json").exists()


def test_deploy_canary_dry_run_shows_the_model_config_and_the_split(tmp_path):
    for version in (1, 2, 3):  # a version is a directory with a saved_model.pb: enough for a dry run
        (tmp_path / "models" / "pizza" / str(version)).mkdir(parents=True)
        (tmp_path / "models" / "pizza" / str(version) / "saved_model.pb").write_bytes(b"")
    env = make_env(tmp_path, tmp_path / "models")
    proc = run_pizzactl("deploy", "--target", "local", "--canary", "10", "--dry-run", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "# canary: version 3 gets 10% of requests, version 2 the rest" in proc.stdout
    assert "--model-config-file" in proc.stdout and "PIZZACTL_CANARY_PERCENT=10" in proc.stdout
    assert "versions: 2 versions: 3" in proc.stdout and 'key: "canary" value: 3' in proc.stdout
    assert not (tmp_path / "state" / "deploy.json").exists()
