"""`pizzactl train --on CONTEXT|kind`: a training Job against a cluster that behaves like one.

The Kubernetes client runs unpatched against kmock; tests/support/k8s_batch_fakes.TrainingCluster plays
the Job controller, scheduler, volume binding, kubelet, exec and log streaming over time, and
FakeDockerd is the Docker daemon that builds and pushes the trainer image. What the trainer
writes is `write_train_outputs` (the shapes `pizzactl train --json` leaves); the real trainer
image runs in tests/test_train_docker.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
import yaml

from pizzactl.config import load_settings
from pizzactl.errors import TrainingError, UsageError
from pizzactl.kube import training as kube_training
from pizzactl.model.store import list_versions
from pizzactl.train.remote import jobs, on_cluster, train_on

from support.cli import PIZZACTL
from support.k8s_batch_fakes import (
    JOBS,
    LOSE_NODE,
    PVCS,
    RUN_ID,
    USAGE,
    TrainingCluster,
    node,
    write_train_outputs,
)
from support.k8s_fakes import PODS, SECRETS, ApplyingEmulator

pytestmark = pytest.mark.kmock(cls=ApplyingEmulator)
NS = "pizzactl"


def _settings(**flags):
    return load_settings({"registry": "reg.example/me", "backoff_limit": 1, **flags})


def _cluster(kmock, tmp_path, **kw) -> TrainingCluster:
    return TrainingCluster(kmock, volumes=tmp_path / "volumes", trainer=write_train_outputs, **kw)


def _job_pods(kmock) -> list:
    return [
        p for k, p in kmock.objects.items() if k[0] == PODS and not p.deleted and "job-name" in p["metadata"]["labels"]
    ]


async def _train(cluster, settings, on="prod", **options):
    playing = asyncio.create_task(cluster.run(0.02))
    try:
        return await asyncio.to_thread(train_on, settings, on, **{"timeout": 20.0, **options})
    finally:
        playing.cancel()


# --- what it applies --------------------------------------------------------------------------------


async def _dry_run(settings, on="prod") -> list[dict]:
    """In a thread: the dry run reads the nodes' architecture from kmock, which answers on this loop."""
    from pizzactl.train.remote import dry_run

    return [d for d in yaml.safe_load_all(await asyncio.to_thread(dry_run, settings, on)) if d]


async def test_dry_run_prints_every_object_valid_and_never_a_credential(world, monkeypatch, tmp_path):
    """No --data: the Job downloads the dataset, so the Kaggle credentials become a Secret the
    pod reads; the YAML shows the Secret's keys, never its values. Every object passes the
    Kubernetes schema (strict), and nothing touches Docker or the cluster."""
    import kubernetes_validate

    monkeypatch.setenv("KAGGLE_USERNAME", "pizzafan")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-kaggle-key")
    settings = _settings(gpus=1, node_selector="pool=gpu", train_memory="6Gi", train_deadline=3600)
    from pizzactl.train.remote import dry_run

    text = await asyncio.to_thread(dry_run, settings, "prod")
    assert "s3cr3t-kaggle-key" not in text and "pizzafan" not in text
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["Namespace", "PersistentVolumeClaim", "Secret", "Pod", "Job"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32", strict=True)
    secret, job = docs[2], docs[4]
    assert set(secret["stringData"]) == {"KAGGLE_USERNAME", "KAGGLE_KEY"}
    spec = job["spec"]
    assert spec["backoffLimit"] == 1 and spec["activeDeadlineSeconds"] == 3600
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    container = pod["containers"][0]
    assert container["image"].startswith("reg.example/me/pizzactl-trainer:0.1.0-gpu-")
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "6Gi"},
        "limits": {"memory": "6Gi", "nvidia.com/gpu": "1"},
    }
    assert container["envFrom"] == [{"secretRef": {"name": jobs.SECRET}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PIZZACTL_DATASET"] == "carlosrunner/pizza-not-pizza" and "PIZZACTL_DATA_DIR" not in env
    assert env["PIZZACTL_MODELS_DIR"] == f"/workspace/jobs/{job['metadata']['name']}/models"
    assert world.requests == []  # no Docker


async def test_with_data_there_is_no_secret_and_the_data_is_mounted_read_only(world, photos):
    docs = await _dry_run(_settings(data_dir=photos, backbone="small_cnn", epochs=1))
    assert "Secret" not in [d["kind"] for d in docs]
    container = docs[-1]["spec"]["template"]["spec"]["containers"][0]
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    assert data["readOnly"] is True and data["subPath"].startswith("data/")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PIZZACTL_DATA_DIR"] == "/data"
    assert env["PIZZACTL_BACKBONE"] == "small_cnn" and env["PIZZACTL_EPOCHS"] == "1"
    assert "PIZZACTL_SEED" not in env  # only what the user gave: the recipes apply as locally


def test_a_context_without_registry_is_refused_before_anything_is_built(world, photos):
    with pytest.raises(UsageError, match="--registry"):
        train_on(load_settings({"data_dir": photos}), "prod")
    assert world.builds() == []


# --- a run ------------------------------------------------------------------------------------------


async def test_a_job_trains_and_its_version_and_run_land_locally(kmock, world, photos, isolated, tmp_path, capsys):
    """The dataset goes to the volume once per content, the log streams, the version is published
    as the next local version by rename, the run comes back with local paths, the outbox leaves
    the volume. A second run reuses the uploaded dataset."""
    from pizzactl.train.runs import list_runs

    (isolated / "models" / "pizza" / "1").mkdir(parents=True)  # an older local version
    (isolated / "models" / "pizza" / "1" / "saved_model.pb").write_bytes(b"graph")
    cluster = _cluster(kmock, tmp_path)
    settings = _settings(data_dir=photos)
    result = await _train(cluster, settings)

    version = isolated / "models" / "pizza" / "2"
    assert result["version"] == 2 and result["model_dir"] == str(version)
    assert (version / "saved_model.pb").is_file() and [v for v, _ in list_versions(isolated / "models")] == [1, 2]
    assert not [p for p in (isolated / "models" / "pizza").iterdir() if p.name.startswith(".")]
    run = isolated / "runs" / RUN_ID
    config = json.loads((run / "config.json").read_text())
    assert config["data_dir"] == str(photos) and config["n_train"] == 8  # read through the read-only mount
    assert config["trained_on"]["on"] == "prod" and config["trained_on"]["job"] == result["job"]["name"]
    assert json.loads((run / "metrics.json").read_text())["model_dir"] == str(version)
    assert result["run_dir"] == str(run) and result["leaderboard"][0]["run_dir"] == str(run)
    assert sorted(p.parent.name for p in (run / "tensorboard").glob("*/events.out.tfevents.*")) == [
        "train",
        "validation",
    ]  # `tensorboard --logdir runs` shows it as a local run
    assert [r["run_id"] for r in list_runs(settings)] == [RUN_ID]
    stderr = capsys.readouterr().err
    assert "[scratch] epoch 3/3" in stderr and "Uploading" in stderr
    uploaded = list(cluster.volume().glob("data/*"))
    assert len(uploaded) == 1 and len(list(uploaded[0].glob("*/*.jpg"))) == 8
    assert not (cluster.volume() / "jobs" / result["job"]["name"]).exists()
    assert not [k for k, p in kmock.objects.items() if k[0] == PODS and k[2] == jobs.FILES_POD and not p.deleted]
    assert any(path.endswith("/push") for path in world.paths())  # the trainer image went to --registry

    again = await _train(cluster, settings)
    assert again["version"] == 3 and (isolated / "runs" / f"{RUN_ID}-2").is_dir()
    assert "already on the training volume" in capsys.readouterr().err
    assert len(list(cluster.volume().glob("data/*"))) == 1


async def test_any_number_of_classes_goes_up_and_comes_home(kmock, world, photos, isolated, tmp_path, capsys):
    """A third class folder is uploaded with the others; the trainer's classes come back in the
    result, the version's metadata and the leaderboard's macro columns, as a local run has them."""
    from pizzactl.cli.train import print_result

    from support.photos import make_classes

    make_classes(photos, ["sushi"], per_class=4)
    result = await _train(_cluster(kmock, tmp_path), _settings(data_dir=photos))
    assert result["classes"] == ["not_pizza", "pizza", "sushi"]
    meta = json.loads((isolated / "models" / "pizza" / "1" / "assets.extra" / "pizzactl.json").read_text())
    assert meta["classes"] == result["classes"]
    assert json.loads((isolated / "runs" / RUN_ID / "config.json").read_text())["n_train"] == 12
    print_result(result)
    out = capsys.readouterr().out
    assert "macro f1" in out and "macro auc" in out and "trained on prod" in out and str(isolated / "models") in out


async def test_status_shows_the_running_job_then_the_deadline_stops_it(kmock, world, photos, tmp_path, isolated):
    """status while it runs: phase, epoch, last log line. Past activeDeadlineSeconds the Job
    fails with DeadlineExceeded and pizzactl says so; no version is published."""
    from pizzactl.deploy import status

    cluster = _cluster(kmock, tmp_path, attempts=["hang"], epochs=50)
    settings = _settings(data_dir=photos, train_deadline=200)  # 20 steps: time to look while it runs
    playing = asyncio.create_task(cluster.run(0.05))
    training = asyncio.create_task(asyncio.to_thread(train_on, settings, "prod", timeout=20.0))
    try:
        seen = None
        for _ in range(200):
            await asyncio.sleep(0.05)
            if kube_training.load_state(settings) and kube_training.load_state(settings).get("job"):
                st = await asyncio.to_thread(status, settings)
                if st.get("training", {}).get("epoch"):
                    seen = st
                    break
        with pytest.raises(TrainingError) as info:
            await training
    finally:
        playing.cancel()
    assert seen is not None and seen["deployed"] is False
    assert seen["training"]["phase"] == "Running" and seen["training"]["job"].startswith("pizzactl-train-")
    assert "epoch" in seen["training"]["last_line"]
    assert "deadline of 200s (activeDeadlineSeconds)" in info.value.message and "--deadline" in info.value.hint
    assert list_versions(isolated / "models") == []


async def test_no_gpu_node_says_so_with_the_scheduler_event_and_stops_the_job(kmock, world, photos, tmp_path):
    """The cluster has a GPU, so the check before building passes, but another pod holds it:
    the scheduler's event says why the training pod waits, and the Job is stopped."""
    cluster = _cluster(kmock, tmp_path, nodes=[node(gpus=1)])
    kmock.objects[PODS, "other", "gpu-holder"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-holder", "namespace": "other", "labels": {}},
        "spec": {
            "nodeName": "pizzactl-control-plane",
            "containers": [{"name": "c", "image": "cuda", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running"},
    }
    with pytest.raises(TrainingError) as info:
        await _train(cluster, _settings(data_dir=photos, gpus=1), timeout=1.5)
    assert "Insufficient nvidia.com/gpu" in info.value.message and "cannot start" in info.value.message
    assert "NVIDIA device plugin" in info.value.hint
    assert cluster.jobs() == {}  # stopped, its pod with it (propagation Background)
    assert list(cluster.deleted_jobs.values()) == ["Background"]


async def test_a_gpu_node_pool_with_its_taint_takes_the_job(kmock, world, photos, tmp_path):
    gpu = node(
        "gpu-1",
        gpus=1,
        labels={"pool": "gpu"},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    )
    cluster = _cluster(kmock, tmp_path, nodes=[node(), gpu])
    result = await _train(cluster, _settings(data_dir=photos, gpus=1, node_selector="pool=gpu"))
    assert result["version"] == 1
    placed = {p["spec"].get("nodeName") for p in _job_pods(kmock)}
    assert placed == {"gpu-1"}


def _zoned_cluster(kmock, tmp_path) -> TrainingCluster:
    """A cloud cluster: CPU nodes in one zone, a tainted GPU pool in another."""
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    gpu = node("gpu-1", gpus=1, labels={"pool": "gpu"}, taints=[taint], zone="zone-b")
    return _cluster(kmock, tmp_path, nodes=[node("cpu-1", zone="zone-a"), gpu])


async def test_the_volume_is_created_in_the_zone_of_the_nodes_the_job_may_use(kmock, world, photos, tmp_path):
    """A new volume is a zonal disk made where its first pod (the upload's) lands: that pod goes
    where the Job may go, or a GPU pool in another zone could never mount it."""
    cluster = _zoned_cluster(kmock, tmp_path)
    result = await _train(cluster, _settings(data_dir=photos, gpus=1, node_selector="pool=gpu"))
    assert result["version"] == 1 and cluster.volume_zones[NS, "pizzactl-train"] == "zone-b"
    assert {p["spec"].get("nodeName") for p in _job_pods(kmock)} == {"gpu-1"}


async def test_a_volume_left_in_another_zone_is_explained_with_the_way_out(kmock, world, photos, tmp_path):
    cluster = _zoned_cluster(kmock, tmp_path)
    await _train(cluster, _settings(data_dir=photos))  # a CPU run first: its volume is made in zone-a
    with pytest.raises(TrainingError) as info:
        await _train(cluster, _settings(data_dir=photos, gpus=1, node_selector="pool=gpu"), timeout=1.5)
    assert "volume node affinity conflict" in info.value.message and "`pizzactl teardown`" in info.value.hint


async def test_an_image_that_cannot_be_pulled_fails_at_once_with_what_to_do(kmock, world, photos, tmp_path):
    cluster = _cluster(kmock, tmp_path)
    cluster.behave("pizzactl-trainer", "pull")
    with pytest.raises(TrainingError) as info:
        await _train(cluster, _settings(), timeout=20.0)  # no --data: no files pod, the Job's own pod
    assert "training pod" in info.value.message and "cannot start: image" in info.value.message  # at once
    assert "cannot be pulled (ErrImagePull)" in info.value.message and "pull access denied" in info.value.message
    assert "--registry" in info.value.hint


async def test_out_of_memory_is_retried_then_explained_with_the_limit(kmock, world, photos, tmp_path, isolated, capsys):
    cluster = _cluster(kmock, tmp_path, needs_memory="6Gi")
    with pytest.raises(TrainingError) as info:
        await _train(cluster, _settings(data_dir=photos, train_memory="4Gi", backoff_limit=1))
    assert "OOMKilled, exit code 137" in info.value.message and "limit of 4Gi, on 2 of 2 attempts" in info.value.message
    assert "--memory 8Gi" in info.value.hint
    assert capsys.readouterr().err.count("out of memory (OOMKilled") == 2  # each attempt, as it happened
    job = next(iter(cluster.jobs().values()))
    assert job["status"]["failed"] == 2 and any(
        c["reason"] == "BackoffLimitExceeded" for c in job["status"]["conditions"]
    )
    assert list_versions(isolated / "models") == []


async def test_a_lost_node_is_retried_without_using_up_the_backoff_limit(kmock, world, photos, tmp_path, capsys):
    cluster = _cluster(kmock, tmp_path, attempts=[LOSE_NODE])
    result = await _train(cluster, _settings(data_dir=photos, backoff_limit=0))
    assert result["version"] == 1 and result["job"]["attempts"] >= 1
    stderr = capsys.readouterr().err
    assert "TaintManagerEviction: Marking for deletion Pod" in stderr or "DeletionByTaintManager" in stderr
    assert "disruptions do not count against backoffLimit" in stderr
    assert next(iter(cluster.jobs().values()))["status"]["failed"] == 0


async def test_a_usage_error_fails_the_job_without_retries(kmock, world, photos, tmp_path):
    cluster = _cluster(kmock, tmp_path, attempts=[USAGE])
    with pytest.raises(TrainingError) as info:
        await _train(cluster, _settings(data_dir=photos, backoff_limit=3))
    assert "usage error" in info.value.message and "Unknown backbone 'resnet9000'" in info.value.message
    assert len(_job_pods(kmock)) == 1


async def test_the_job_downloading_the_dataset_reads_kaggle_credentials_from_a_secret(
    kmock, world, tmp_path, monkeypatch
):
    home = tmp_path / "home" / ".kaggle"
    home.mkdir(parents=True)
    (home / "kaggle.json").write_text(json.dumps({"username": "pizzafan", "key": "k3y"}))
    cluster = _cluster(kmock, tmp_path)
    result = await _train(cluster, _settings())
    assert result["version"] == 1
    secret = kmock.objects[SECRETS, NS, jobs.SECRET]
    stored = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}  # the API keeps data only
    assert stored == {"KAGGLE_USERNAME": "pizzafan", "KAGGLE_KEY": "k3y"}
    job = json.dumps(next(iter(cluster.jobs().values())))
    assert "k3y" not in job and jobs.SECRET in job


async def test_an_incomplete_export_publishes_nothing_and_attach_collects_it_later(
    kmock, world, photos, tmp_path, isolated
):
    """The trainer's version lacks saved_model.pb: nothing is published, the outputs stay on the
    volume; once they are whole, `--attach` follows the finished Job and brings them home."""
    cluster = _cluster(kmock, tmp_path)
    cluster.trainer = lambda *a: write_train_outputs(*a, complete=False)
    settings = _settings(data_dir=photos)
    with pytest.raises(TrainingError, match="incomplete"):
        await _train(cluster, settings)
    assert list_versions(isolated / "models") == []
    assert not list((isolated / "models" / "pizza").glob(".tmp-*"))
    job = kube_training.load_state(settings)["job"]
    (cluster.volume() / "jobs" / job / "models" / "pizza" / "1" / "saved_model.pb").write_bytes(b"graph")
    result = await _train(cluster, settings, attach=True)
    assert result["version"] == 1 and result["job"]["name"] == job


# --- teardown -----------------------------------------------------------------------------------------


async def test_teardown_removes_what_training_created_and_only_that(kmock, world, photos, tmp_path):
    from pizzactl.deploy import teardown
    from pizzactl.kube import k8s

    api = k8s.connect("prod")
    theirs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "their-secret", "namespace": NS},
            "stringData": {"a": "b"},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "their-data", "namespace": NS},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    ]
    await asyncio.to_thread(k8s.apply, api, theirs)
    cluster = _cluster(kmock, tmp_path)
    settings = _settings(data_dir=photos)
    await _train(cluster, settings)
    assert kube_training.load_state(settings)["created_namespace"] is False
    down = await asyncio.to_thread(teardown, settings)
    assert down["torn_down"] is True
    alive = {
        (k[0], k[2])
        for k, o in kmock.objects.items()
        if k[1] == NS and not o.deleted and k[0] in (JOBS, SECRETS, PVCS, PODS)
    }
    assert alive == {(SECRETS, "their-secret"), (PVCS, "their-data")}
    assert kube_training.load_state(settings) is None
    again = await asyncio.to_thread(teardown, settings)
    assert again["torn_down"] is False


async def test_teardown_deletes_the_namespace_training_created(kmock, world, photos, tmp_path):
    from pizzactl.deploy import teardown
    from pizzactl.kube import k8s

    cluster = _cluster(kmock, tmp_path)
    settings = _settings(data_dir=photos)
    await _train(cluster, settings)
    assert kube_training.load_state(settings)["created_namespace"] is True
    await asyncio.to_thread(teardown, settings)
    phase = await asyncio.to_thread(k8s.namespace_phase, k8s.connect("prod"), NS)
    assert phase in (None, "Terminating")


async def test_cluster_weights_file_is_refused(world, photos, tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"w")
    with pytest.raises(UsageError, match="names a file on this machine"):
        await asyncio.to_thread(on_cluster.dry_run, _settings(data_dir=photos, weights=str(weights)), "prod")


# --- Ctrl-C, and the kind path end to end ---------------------------------------------------------


async def test_ctrl_c_stops_the_job(kmock, world, photos, tmp_path, isolated):
    """`pizzactl train --on CONTEXT` in its own process; SIGINT while the Job runs stops the Job."""
    import os
    import signal

    cluster = _cluster(kmock, tmp_path, attempts=["hang"], epochs=1000)
    playing = asyncio.create_task(cluster.run(0.02))
    try:
        proc = await asyncio.create_subprocess_exec(
            *PIZZACTL, "train", "--on", "prod", "--registry", "reg.example/me",
            "--data", str(photos),
            cwd=isolated, env=dict(os.environ), stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(600):
            await asyncio.sleep(0.05)
            if any(lines for lines in cluster.pod_logs.values() if any("epoch" in line for line in lines)):
                break
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        playing.cancel()
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert "Stopping Job" in stderr.decode() and "(interrupted)" in stderr.decode()
    assert cluster.jobs() == {} and list(cluster.deleted_jobs.values()) == ["Background"]
    assert list_versions(isolated / "models") == []


class _Ready:
    """A stand-in gateway behind kind's port mapping: deploy waits for /healthz there."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"


async def test_train_on_kind_loads_the_trainer_and_rolls_the_new_version_out(
    kmock, world, photos, isolated, tmp_path, monkeypatch
):
    """deploy to kind (on a port of its own), then `train --on kind` without --port: the trainer
    image is `kind load`ed (never pushed), the Job runs in the same cluster whatever port it maps
    (issue 22 item 2: the node's port bindings are Docker's answer, FakeDockerd(kind_home)), and
    the new version rolls out where pizzactl deploys (the caller's `roll_out`, as `pizzactl train` runs it); `status` shows the finished Job; teardown
    deletes the cluster pizzactl created."""
    from pizzactl.deploy import deploy, status, teardown
    from pizzactl.deploy.after_training import roll_out
    from pizzactl.kube import kind
    from pizzactl.ports import free_port

    from support.k8s_fakes import install_fake_kind, loaded_images, stop_fake_clusters

    home = tmp_path / "kind-home"
    install_fake_kind(tmp_path / "bin", home, docker_cli=True)
    world.kind_home = home  # the kind node is a container of this daemon
    monkeypatch.setenv("FAKE_KIND_HOME", str(home))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KIND_SERVER", str(kmock.url).rstrip("/"))
    gateway = _Ready()
    (home / "pizzactl.backend").write_text(gateway.address)
    first = isolated / "models" / "pizza" / "1"
    first.mkdir(parents=True)
    (first / "saved_model.pb").write_bytes(b"graph")
    settings = load_settings(
        {"model_server": "builtin", "port": free_port(), "data_dir": photos, "allow_private_urls": True}
    )
    cluster = _cluster(kmock, tmp_path, kind_home=home)
    playing = asyncio.create_task(cluster.run(0.02))
    try:
        deployed = await asyncio.to_thread(deploy, settings, 30)
        plain = load_settings({"data_dir": photos})  # no --model-server, no --port: the deployment's are kept
        trained = await asyncio.to_thread(train_on, plain, "kind", timeout=20.0)
        assert "deployed" not in trained  # training rolls nothing out; its caller (`pizzactl train`) does
        result = await asyncio.to_thread(roll_out, plain, trained)
        gateway_pod = kmock.objects[kmock.resource("apps/v1/deployments"), NS, "pizzactl-gateway"]["spec"]["template"]
        loaded = loaded_images(home, "pizzactl")
        st = await asyncio.to_thread(status, settings)
        down = await asyncio.to_thread(teardown, settings)
    finally:
        playing.cancel()
        gateway.server.shutdown()
        stop_fake_clusters(home)
    assert deployed["model_version"] == 1
    assert result["version"] == 2 and result["trained_on"]["context"] == "kind-pizzactl"
    assert result["trained_on"]["image"] in loaded and result["trained_on"]["image"].startswith("pizzactl-trainer:")
    assert not [p for p in world.paths() if p.endswith("/push")]  # kind: loaded, never pushed
    assert result["deployed"]["model_version"] == 2 and result["deployed"]["serving"] == {2: 1}
    assert result["deployed"]["images"]["model_server"] == "builtin" and result["deployed"]["url"] == deployed["url"]
    assert st["model_version"] == 2 and st["training"]["phase"] == "Succeeded"
    # the rollout re-applied the deploy's options, not `plain`'s (which would say "false")
    assert {"name": "PIZZACTL_ALLOW_PRIVATE_URLS", "value": "true"} in gateway_pod["spec"]["containers"][0]["env"]
    assert down["cluster_deleted"] is True and kind.clusters() == [] and kube_training.load_state(settings) is None


def test_status_prints_the_training_job_with_or_without_a_deployment(capsys):
    from pizzactl.cli.deploy import print_status
    from pizzactl.deploy.results import Status

    training = {"job": "pizzactl-train-1", "context": "prod", "phase": "Running", "attempts": 2, "epoch": "3/30"}
    print_status(
        Status(
            deployed=False,
            message="Nothing deployed.",
            training={**training, "last_line": "[head] epoch 3/30  loss 0.4"},
        )
    )
    out = capsys.readouterr().out
    assert "Nothing deployed." in out and "Job pizzactl-train-1 in prod: Running, epoch 3/30, attempt 2" in out
    assert "[head] epoch 3/30  loss 0.4" in out  # log lines keep their brackets (no rich markup)


async def test_train_on_kind_creates_its_cluster_even_when_the_gateway_port_is_taken(
    kmock, world, photos, isolated, tmp_path, monkeypatch
):
    """Issue 22 item 2: training never uses the host port, so a taken port does not stop it; the
    cluster pizzactl creates maps a port kind picks (hostPort 0), which a later deploy is told."""
    import socket

    from pizzactl.kube import kind

    from support.k8s_fakes import install_fake_kind, kind_calls, stop_fake_clusters

    home = tmp_path / "kind-home"
    install_fake_kind(tmp_path / "bin", home, docker_cli=True)
    world.kind_home = home
    monkeypatch.setenv("FAKE_KIND_HOME", str(home))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KIND_SERVER", str(kmock.url).rstrip("/"))
    cluster = _cluster(kmock, tmp_path, kind_home=home)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = load_settings({"data_dir": photos, "port": busy.getsockname()[1]})
        try:
            result = await _train(cluster, settings, "kind")
        finally:
            stop_fake_clusters(home)
    assert result["version"] == 1 and result["trained_on"]["context"] == "kind-pizzactl"
    create = [c for c in kind_calls(home) if c["args"][:2] == ["create", "cluster"]]
    assert yaml.safe_load(create[0]["config"])["nodes"][0]["extraPortMappings"][0]["hostPort"] == 0
    assert kind.created_clusters(settings) == ["pizzactl"]


async def test_dry_run_plans_the_trainer_for_the_nodes_architecture(kmock, world):
    """Issue 22 item 11: `train --on CONTEXT --dry-run` reads (only reads) the nodes' architecture."""
    from pizzactl.kube.images import plan_trainer

    from support.k8s_fakes import NODES

    arm = node("arm-1")
    arm["metadata"]["labels"]["kubernetes.io/arch"] = "arm64"
    arm["status"]["nodeInfo"]["architecture"] = "arm64"
    kmock.resources["v1/nodes"] = {}
    kmock.objects[NODES, None, "arm-1"] = arm
    settings = _settings()
    job = (await _dry_run(settings))[-1]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == plan_trainer(settings, platform="linux/arm64").image != plan_trainer(settings).image
    assert world.requests == []  # no Docker


def test_training_elsewhere_rolls_out_only_where_pizzactl_deploys_to_that_cluster(isolated):
    """The caller's rule (`pizzactl train` after `train_on`): a Docker or local result never rolls
    out, not even with --deploy; a cluster's only with --deploy or a deployment on that context."""
    from pizzactl.deploy.after_training import roll_out

    settings = load_settings({})
    local = {"version": 2}
    docker = {"version": 2, "trained_on": {"on": "docker", "image": "pizzactl-trainer:x"}}
    cluster = {"version": 2, "trained_on": {"on": "prod", "context": "prod", "job": "pizzactl-train-1"}}
    assert roll_out(settings, local, True) == local and roll_out(settings, docker, True) == docker
    assert roll_out(settings, cluster, None) == cluster  # nothing deployed there
    assert roll_out(settings, cluster, False) == cluster  # --no-deploy
