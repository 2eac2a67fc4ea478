"""`pizzactl deploy --canary/--shadow --auto` on real shared photos (issue 23): a worse candidate
is aborted, an equally good one promoted, by the gateway's live comparison (GET /rollout).

Version 1 is the tiny real classifier (conftest). The worse candidate is the same network with
its head's weights shuffled (a fixed permutation): its labels on the traffic photos agree with
version 1's on well under the 0.9 threshold (checked here in-process, so the premise is not
assumed). The equally good candidate is version 1 re-exported as version 2. The test sends the
shared photos as traffic while `deploy --auto` watches. The criteria are lowered to the traffic
sent (40 compared inputs) and the p99 slack made wide: latency on a shared 2-core CI machine is
not what these tests are about (tests/test_decide.py flips each criterion alone).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pizzactl.errors import EXIT_USER
from pizzactl.model.store import list_versions

from support.cli import PIZZACTL, make_env, run_pizzactl
from support.processes import alive

CRITERIA_ENV = {
    "PIZZACTL_ROLLOUT_MIN_PAIRS": "40",
    "PIZZACTL_ROLLOUT_MIN_REQUESTS": "40",
    "PIZZACTL_ROLLOUT_P99_SLACK_MS": "2000",
    "PIZZACTL_ROLLOUT_POLL_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def traffic(shared_photos) -> list[Path]:
    """Photos the tiny classifier was not fitted on (it saw the first 20 of each class)."""
    return [
        p for pair in zip(shared_photos["pizza"][20:80], shared_photos["not_pizza"][20:80], strict=True) for p in pair
    ]


@pytest.fixture(scope="module")
def worse_models(tiny_model, tiny_classifier, traffic, tmp_path_factory) -> Path:
    """MODELS with version 1 (the tiny classifier) and version 2 (its head shuffled)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize
    from pizzactl.model.export import export_model

    models = tmp_path_factory.mktemp("worse_models")
    shutil.copytree(list_versions(tiny_model)[-1][1], models / "pizza" / "1")
    good = tiny_classifier.model
    worse = keras.models.clone_model(good)
    worse.set_weights(good.get_weights())
    kernel, bias = good.layers[-1].get_weights()
    worse.layers[-1].set_weights([np.random.default_rng(0).permutation(kernel.ravel()).reshape(kernel.shape), bias])
    pixels = tf.stack([decode_resize(p.read_bytes(), tiny_classifier.image_size) for p in traffic])
    agree = np.mean((good.predict(pixels, verbose=0) > 0.5) == (worse.predict(pixels, verbose=0) > 0.5))
    assert agree < 0.75, f"the shuffled head agrees with version 1 on {agree:.0%} of the traffic: not worse enough"
    export_model(worse, models, tiny_classifier.metadata, tiny_classifier.check_images)
    assert [v for v, _ in list_versions(models)] == [1, 2]
    return models


@pytest.fixture(scope="module")
def equal_models(tiny_model, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("equal_models")
    for version in ("1", "2"):
        shutil.copytree(list_versions(tiny_model)[-1][1], models / "pizza" / version)
    return models


def _auto(
    tmp_path: Path, models: Path, traffic: list[Path], *trial: str
) -> tuple[subprocess.CompletedProcess[str], dict, str]:
    """Run `deploy --target local TRIAL --auto --json`, send the traffic photos until it decides;
    the finished process, the deploy record and the gateway URL."""
    env = make_env(tmp_path, models, **CRITERIA_ENV)
    url = f"http://127.0.0.1:{env['PIZZACTL_PORT']}"
    args = [*PIZZACTL, "deploy", "--target", "local", *trial, "--auto", "--auto-timeout", "240", "--json"]
    args += ["--timeout", "240"]
    deploy = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    photos = [base64.b64encode(p.read_bytes()).decode() for p in traffic]
    sent = 0
    try:
        with httpx.Client(timeout=60) as client:
            while deploy.poll() is None and sent < 2000:
                try:
                    client.post(url + "/predict", json={"image_b64": photos[sent % len(photos)]})
                    sent += 1
                except httpx.TransportError:  # not up yet, or restarting after the decision
                    time.sleep(0.2)
        stdout, stderr = deploy.communicate(timeout=300)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    record_path = tmp_path / "state" / "deploy.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    return subprocess.CompletedProcess(args, deploy.returncode, stdout, stderr), record, url


def _served(url: str, photo: Path, n: int = 6) -> set[int]:
    body = {"image_b64": base64.b64encode(photo.read_bytes()).decode()}
    return {int(httpx.post(url + "/predict", json=body, timeout=60).headers["x-model-version"]) for _ in range(n)}


def _cleanup(tmp_path: Path, env_models: Path, record: dict) -> None:
    run_pizzactl("teardown", env=make_env(tmp_path, env_models), cwd=tmp_path, timeout=60)
    for pid in (record.get("pids") or {}).values():
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
def test_deploy_canary_auto_aborts_a_worse_candidate_on_real_photos(worse_models, traffic, tmp_path):
    record: dict = {}
    try:
        proc, record, url = _auto(tmp_path, worse_models, traffic, "--canary", "50")
        assert proc.returncode == 0, proc.stderr
        outcome = json.loads(proc.stdout)
        assert (outcome["action"], outcome["decided_by"], outcome["model_version"]) == ("abort", "auto", 1)
        failing = [c["name"] for c in outcome["decision"]["checks"] if c["ok"] is False]
        assert failing == ["label agreement"], outcome["decision"]
        assert _served(url, traffic[0]) == {1}
        [entry] = record["extra"]["rollouts"]
        assert (entry["action"], entry["candidate"], entry["decided_by"]) == ("abort", 2, "auto")
        assert entry["evidence"]["agreement"] < 0.9 and entry["evidence"]["pairs"] >= 40
        assert entry["criteria"]["min_agreement"] == 0.9
    finally:
        _cleanup(tmp_path, worse_models, record)


@pytest.mark.slow
def test_deploy_shadow_auto_promotes_an_equally_good_candidate(equal_models, traffic, tmp_path):
    record: dict = {}
    try:
        proc, record, url = _auto(tmp_path, equal_models, traffic, "--shadow")
        assert proc.returncode == 0, proc.stderr
        outcome = json.loads(proc.stdout)
        assert (outcome["action"], outcome["decided_by"], outcome["model_version"]) == ("promote", "auto", 2)
        assert outcome["decision"]["evidence"]["agreement"] == 1.0
        assert _served(url, traffic[0]) == {2}
        [entry] = record["extra"]["rollouts"]
        assert (entry["action"], entry["mode"], entry["stable"], entry["candidate"]) == ("promote", "shadow", 1, 2)
    finally:
        _cleanup(tmp_path, equal_models, record)


@pytest.mark.slow
def test_auto_without_enough_traffic_leaves_the_trial_running_and_exits_non_zero(equal_models, tmp_path):
    env = make_env(tmp_path, equal_models, PIZZACTL_ROLLOUT_POLL_SECONDS="0.5")
    record: dict = {}
    try:
        proc = run_pizzactl(
            *("deploy", "--target", "local", "--canary", "50", "--auto", "--auto-timeout", "3", "--json"),
            *("--timeout", "240"),
            env=env,
            cwd=tmp_path,
        )
        record = json.loads((tmp_path / "state" / "deploy.json").read_text())
        assert proc.returncode == EXIT_USER, proc.stderr
        assert "decided nothing in 3s" in proc.stderr and "still running" in proc.stderr
        assert json.loads(proc.stdout)["decision"]["action"] == "wait"  # what it saw, for a script
        assert record["extra"]["rollout"]["candidate"] == 2 and "rollouts" not in record["extra"]
        assert httpx.get(record["url"] + "/readyz", timeout=10).status_code == 200  # still serving
    finally:
        _cleanup(tmp_path, equal_models, record)
