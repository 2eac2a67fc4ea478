"""`pizzactl train --on docker`: the trainer image, for real (docker tier), and its container spec.

The docker-tier tests build the trainer image once per session and train small_cnn for one
epoch on a few shared photos in a container, from a `pizzactl` that cannot import TensorFlow:
the version must meet the model contract and the run must look as a local `train` leaves it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pizzactl.config import load_settings
from pizzactl.errors import UsageError
from pizzactl.train.remote import on_docker

from support.cli import PIZZACTL, run_pizzactl
from support.docker_fakes import FakeDockerd

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "small_cnn", "--weights", "none", "--image-size", "64", "--batch-size", "8"]
NO_TENSORFLOW = "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"


@pytest.fixture
def photos(copy_photos) -> Path:
    return copy_photos(6)


# --- the container spec (no daemon) -------------------------------------------------------------


def test_the_container_is_the_jobs_pod_as_a_non_root_locked_down_container(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t")
    settings = load_settings({"data_dir": photos, "backbone": "small_cnn", "gpus": 1}, environ={})
    spec = on_docker.container_spec(settings, "pizzactl-trainer:x", "pizzactl-train-1", photos, tmp_path / "out")
    assert spec["user"].split(":")[0] != "0"
    assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"] and spec["init"] is True
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert spec["entrypoint"][:2] == ["sh", "-c"] and "pizzactl train --json" in spec["entrypoint"][2]
    mounts = {m["Target"]: m for m in spec["mounts"]}
    assert mounts[str(photos)]["ReadOnly"] is True and mounts[str(photos)]["Source"] == str(photos)
    assert mounts["/out"]["Source"] == str(tmp_path / "out") and not mounts["/out"]["ReadOnly"]
    assert mounts["/cache"]["Type"] == "volume"
    env = spec["environment"]
    assert env["PIZZACTL_DATA_DIR"] == str(photos) and env["PIZZACTL_BACKBONE"] == "small_cnn"
    assert env["OUTPUT_DIR"] == "/out" and env["PIZZACTL_MODELS_DIR"] == "/out/models"
    assert "s3cr3t" not in json.dumps(env)  # the data is resolved here: no credentials go in
    assert spec["device_requests"][0]["Count"] == 1 and spec["device_requests"][0]["Capabilities"] == [["gpu"]]


def test_a_remote_docker_daemon_is_refused_because_mounts_would_name_its_folders(photos, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "ssh://builder@build.example")
    with pytest.raises(UsageError, match="mounts local folders"):
        on_docker.train(load_settings({"data_dir": photos}, environ={}))


def test_build_trainer_picks_tensorflow_for_the_platform_and_gpu(tmp_path, monkeypatch):
    from pizzactl.kube.images import build_trainer

    settings = load_settings({}, environ={})
    with FakeDockerd(tmp_path / "docker.sock") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        cpu = build_trainer(settings)
        gpu = build_trainer(settings, gpu=True)
        dockerd.architecture = "aarch64"
        arm = build_trainer(settings)
        again = build_trainer(settings)
    builds = {b["t"]: json.loads(b["buildargs"]) for b in dockerd.builds()}
    assert builds[cpu.image]["TENSORFLOW"] == "tensorflow-cpu==2.21.0" and cpu.image.startswith(
        "pizzactl-trainer:0.1.0-cpu-"
    )
    assert builds[gpu.image]["TENSORFLOW"] == "tensorflow[and-cuda]==2.21.0" and "-gpu-" in gpu.image
    assert builds[arm.image]["TENSORFLOW"] == "tensorflow==2.21.0" and arm.platform == "linux/arm64"
    assert again.image == arm.image and len(dockerd.builds()) == 3  # content-tagged: built once


def test_build_trainer_from_the_cli_prints_the_image_or_its_json(tmp_path, monkeypatch, capsys):
    from pizzactl.cli import main

    with FakeDockerd(tmp_path / "docker.sock") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        _run_main(main, ["build", "--trainer", "--gpu"])
        table = capsys.readouterr().out
        _run_main(main, ["build", "--trainer", "--json"])
        built = json.loads(capsys.readouterr().out)
    assert "trainer (CUDA, linux/amd64)" in table and "pizzactl-trainer:0.1.0-gpu-" in table
    assert built["image"].startswith("pizzactl-trainer:0.1.0-cpu-") and built["gpu"] is False
    assert [b["t"] for b in dockerd.builds()][-1] == built["image"]


def _run_main(main, args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (None, 0)


def test_the_trainer_image_gets_the_train_extra_but_not_docker_or_kubernetes(tmp_path):
    from pizzactl.kube.images import build_context

    with build_context("trainer") as ctx:
        proc = subprocess.run(
            [sys.executable, str(ctx / "docker" / "requirements.py"), "trainer", str(ctx / "pyproject.toml")],
            capture_output=True,
            text=True,
            check=True,
        )
    names = {line.split("<")[0].split(">")[0].split("=")[0].split("[")[0].strip() for line in proc.stdout.splitlines()}
    assert {"matplotlib", "kaggle", "typer"} <= names
    assert not names & {"tensorflow", "tensorflow-cpu", "docker", "kubernetes"}  # TF is the Dockerfile's own layer


# --- for real (docker tier) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def trainer_image(docker_ready):
    from pizzactl.kube.images import build_trainer

    return build_trainer(load_settings({}, environ={})).image


def _pizzactl(args: list[str], cwd: Path, env: dict[str, str], tmp_path: Path, **kw) -> subprocess.Popen:
    """`pizzactl ARGS` in a fresh process that cannot import TensorFlow."""
    shim = tmp_path / "no-tensorflow"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(NO_TENSORFLOW)
    full_env = {**os.environ, **env, "PYTHONPATH": str(shim)}
    full_env.pop("DOCKER_HOST", None)
    return subprocess.Popen(
        [*PIZZACTL, *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _paths(tmp_path: Path) -> dict[str, str]:
    return {f"PIZZACTL_{n.upper()}_DIR": str(tmp_path / n) for n in ("models", "runs", "state")}


@pytest.mark.docker
@pytest.mark.slow
def test_train_on_docker_leaves_a_version_meeting_the_model_contract_and_a_local_run(trainer_image, photos, tmp_path):
    """Three classes (the shared photos and a generated third): the softmax export, its metadata
    and the run with its TensorBoard logs land here as a local `train` leaves them."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from support.photos import make_classes

    make_classes(photos, ["sushi"], per_class=6, size=64)
    classes = ["not_pizza", "pizza", "sushi"]
    proc = _pizzactl(
        ["train", "--on", "docker", "--data", str(photos), *TINY, "--epochs", "1", "--json"],
        tmp_path,
        _paths(tmp_path),
        tmp_path,
    )
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert "epoch 1/1" in stderr and "Training in container" in stderr  # the log, streamed
    result = json.loads(stdout)
    version = tmp_path / "models" / "pizza" / "1"
    assert result["model_dir"] == str(version) and result["version"] == 1 and result["backbone"] == "small_cnn"
    meta = json.loads((version / "assets.extra" / "pizzactl.json").read_text())
    assert meta["image_size"] == 64 and meta["run_id"] == result["run_id"]
    assert meta["classes"] == classes and result["classes"] == classes
    blobs = [p.read_bytes() for p in sorted(photos.glob("*/*.jpg"))[::4][:4]]
    out = tf.saved_model.load(str(version)).signatures["serving_default"](image_bytes=tf.constant(blobs))
    probability, probabilities = out["probability"].numpy(), out["probabilities"].numpy()
    assert probability.shape == (4,) and ((probability >= 0) & (probability <= 1)).all()
    assert probabilities.shape == (4, 3) and abs(probabilities.sum(axis=1) - 1).max() < 1e-4
    assert {label.decode() for label in out["label"].numpy()} <= set(classes)

    run = tmp_path / "runs" / result["run_id"]
    for name in ("config.json", "metrics.json", "history.csv", "train.log", "model.keras", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert len(json.loads((run / "metrics.json").read_text())["confusion_matrix"]) == 3
    board = EventAccumulator(str(run / "tensorboard" / "validation"), size_guidance={"tensors": 0})
    board.Reload()
    assert "scratch/loss" in board.Tags()["tensors"] and "confusion_matrix" in board.Tags()["tensors"]
    config = json.loads((run / "config.json").read_text())
    assert config["data_dir"] == str(photos) and config["trained_on"]["on"] == "docker"
    assert json.loads((run / "metrics.json").read_text())["model_dir"] == str(version)
    assert (run / "model.keras").stat().st_uid == os.geteuid() and version.stat().st_uid == os.geteuid()
    listed = run_pizzactl("runs", "list", "--json", cwd=tmp_path, env={**os.environ, **_paths(tmp_path)}, check=True)
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [result["run_id"]]
    import docker

    assert docker.from_env().containers.list(all=True, filters={"label": "dev.pizzactl.train=1"}) == []
    assert not list((tmp_path / "state" / "train").glob("*"))  # the outbox is gone
    assert docker.from_env().volumes.get("pizzactl-train-cache")  # weights and features for the next run
    down = run_pizzactl("teardown", "--json", cwd=tmp_path, env={**os.environ, **_paths(tmp_path)}, check=True)
    assert "Removed the Docker volume pizzactl-train-cache" in json.loads(down.stdout)["message"]
    assert not [v for v in docker.from_env().volumes.list() if v.name == "pizzactl-train-cache"]


@pytest.mark.docker
@pytest.mark.slow
def test_an_error_in_the_container_comes_back_with_its_hint(trainer_image, photos, tmp_path):
    proc = _pizzactl(
        ["train", "--on", "docker", "--data", str(photos), "--backbone", "resnet9000"],
        tmp_path,
        _paths(tmp_path),
        tmp_path,
    )
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 3, stderr[-2000:]
    assert "Training in the container failed (exit code 2)" in stderr and "resnet9000" in stderr
    assert not (tmp_path / "models" / "pizza").exists()


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_stops_and_removes_the_container_and_publishes_nothing(trainer_image, photos, tmp_path):
    import docker

    client = docker.from_env()
    proc = _pizzactl(
        ["train", "--on", "docker", "--data", str(photos), *TINY, "--epochs", "500"],
        tmp_path,
        _paths(tmp_path),
        tmp_path,
    )
    deadline = time.monotonic() + 300
    while not client.containers.list(filters={"label": "dev.pizzactl.train=1", "status": "running"}):
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stderr.read() if proc.poll() is not None else "no container"
        )
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Stopping the training container" in stderr
    assert client.containers.list(all=True, filters={"label": "dev.pizzactl.train=1"}) == []
    assert not list((tmp_path / "models").glob("pizza/[0-9]*"))
