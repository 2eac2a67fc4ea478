"""Pods that can never fit the cluster are found before images are built (issue 22, item 9).

Against tests/support/k8s_batch_fakes.TrainingCluster, whose scheduler fits Job and Deployment pods to
node allocatable as kube-scheduler does; FakeDockerd records what would have been built.
"""

from __future__ import annotations

import asyncio

import pytest

from pizzactl.config import load_settings
from pizzactl.deploy.targets import cluster as cluster_target
from pizzactl.errors import DeployError, TrainingError
from pizzactl.kube import capacity, k8s
from pizzactl.kube.images import Images
from pizzactl.train.remote import train_on

from support.k8s_batch_fakes import TrainingCluster, forbid_listing_nodes, node, write_train_outputs
from support.k8s_fakes import PODS, ApplyingEmulator

pytestmark = pytest.mark.kmock(cls=ApplyingEmulator)
NS = "pizzactl"
COLIMA = node(cpu="2", memory="1948Mi")  # Colima's default VM: 2 CPU, 2 GiB, less what the system keeps


def _cluster(kmock, tmp_path, **kw) -> TrainingCluster:
    return TrainingCluster(kmock, volumes=tmp_path / "volumes", trainer=write_train_outputs, **kw)


async def _run(cluster, fn, *args, **kw):
    playing = asyncio.create_task(cluster.run(0.02))
    try:
        return await asyncio.to_thread(fn, *args, **kw)
    finally:
        playing.cancel()


def _train_settings(**flags):
    return load_settings({"registry": "reg.example/me", "backoff_limit": 1, **flags})


async def test_gpus_on_a_cluster_without_gpu_nodes_fail_before_anything_is_built(kmock, world, photos, tmp_path):
    cluster = _cluster(kmock, tmp_path, nodes=[node()])
    with pytest.raises(TrainingError) as info:
        await _run(cluster, train_on, _train_settings(data_dir=photos, gpus=1), "prod", timeout=20.0)
    assert "asks for 1 nvidia.com/gpu" in info.value.message and "no node offers any" in info.value.message
    assert "without --gpus" in info.value.hint and "NVIDIA device plugin" in info.value.hint
    assert world.builds() == [] and cluster.jobs() == {}


async def test_a_trainer_bigger_than_colimas_vm_fails_before_anything_is_built(kmock, world, photos, tmp_path):
    cluster = _cluster(kmock, tmp_path, nodes=[COLIMA])
    with pytest.raises(TrainingError) as info:
        await _run(cluster, train_on, _train_settings(data_dir=photos), "prod", timeout=20.0)
    message = info.value.message
    assert "the training pod asks for 2 CPU and 4Gi of memory" in message and "1.9Gi" in message
    assert "--memory 4Gi" in info.value.hint and "colima start --cpu 4 --memory 8" in info.value.hint
    assert world.builds() == [] and cluster.jobs() == {}
    # asking for what fits goes ahead
    result = await _run(cluster, train_on, _train_settings(data_dir=photos, train_memory="1Gi"), "prod", timeout=20.0)
    assert result["version"] == 1


async def test_a_deploy_that_cannot_fit_fails_before_building(kmock, world, isolated, tmp_path):
    version = isolated / "models" / "pizza" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    cluster = _cluster(kmock, tmp_path, nodes=[node(cpu="1", memory="512Mi")])
    settings = load_settings({"context": "prod", "registry": "reg.example/me", "model_server": "builtin"})
    with pytest.raises(DeployError) as info:
        await _run(cluster, cluster_target.deploy, settings, 3.0)
    assert "together the pods ask for" in info.value.message and "k8s/model.yaml" in info.value.hint
    assert world.builds() == []


async def test_a_model_server_pod_that_fits_no_node_stays_pending_with_the_schedulers_words(kmock, world, tmp_path):
    """The fake scheduler honours allocatable for Deployment pods too (a release skips the check)."""
    cluster = _cluster(kmock, tmp_path, nodes=[node(cpu="200m", memory="8Gi")])
    settings = load_settings({"context": "prod", "registry": "reg.example/me"})
    images = Images("reg.example/me/pizzactl-gateway:a", "reg.example/me/pizzactl-model:v1-a", "builtin", 1)
    with pytest.raises(DeployError) as info:
        await _run(cluster, cluster_target.release, settings, images, 1.5)
    assert "0/1 nodes are available: 1 Insufficient cpu." in info.value.message
    pending = [p for k, p in kmock.objects.items() if k[0] == PODS and "pizzactl-model" in k[2] and not p.deleted]
    assert pending and all(p["status"]["phase"] == "Pending" for p in pending)


async def test_nodes_that_cannot_be_listed_skip_the_check_with_a_note(kmock, world, tmp_path, capsys):
    _cluster(kmock, tmp_path, nodes=[node(cpu="1", memory="512Mi")])
    forbid_listing_nodes(kmock)
    api = k8s.connect("prod")
    need = capacity.Need("the training pod", cpu=2, memory=4 * 2**30)
    assert await asyncio.to_thread(capacity.check, api, [need], hint="") is None
    assert "Cannot list the cluster's nodes" in capsys.readouterr().err


def test_quantities_are_read_as_kubernetes_writes_them():
    assert capacity.quantity("250m") == 0.25 and capacity.quantity("1948Mi") == 1948 * 2**20
    assert capacity.quantity("4Gi") == 4 * 2**30 and capacity.quantity("1e3") == 1000 and capacity.quantity("2") == 2
    with pytest.raises(DeployError):
        capacity.quantity("lots")


# --- a full training volume (item 10) ----------------------------------------------------------------


def _dataset_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.glob("*/*.jpg"))


async def test_a_volume_that_fills_up_during_the_upload_says_so(kmock, world, photos, tmp_path):
    """GNU tar reads the whole archive, writes what fits and exits 2 with "Cannot write: No space
    left on device": that line, not a bare exit code, is what the user sees."""
    cluster = _cluster(kmock, tmp_path)
    cluster.volume_bytes = _dataset_bytes(photos) // 2
    with pytest.raises(TrainingError) as info:
        await _run(cluster, train_on, _train_settings(data_dir=photos), "prod", timeout=20.0)
    assert "Cannot write: No space left on device" in info.value.message
    assert "`pizzactl teardown`" in info.value.hint and "train_volume_size" in info.value.hint
    assert cluster.jobs() == {}  # no Job started on half a dataset


async def test_a_full_volume_ends_the_command_mid_upload_and_says_why(kmock, world, copy_photos, tmp_path):
    """The volume is full before anything is written: `mkdir` fails at once, the command ends and
    the API server closes the connection while megabytes are still being sent. The error is the
    command's stderr and exit code, not the broken connection."""
    photos = copy_photos(80)  # ~9 MB, more than the socket buffers hold: still sending when it ends
    cluster = _cluster(kmock, tmp_path)
    cluster.volume_bytes = 0
    with pytest.raises(TrainingError) as info:
        await _run(cluster, train_on, _train_settings(data_dir=photos), "prod", timeout=20.0)
    message = info.value.message
    assert "cannot create directory '/workspace/data/" in message and "No space left on device" in message
    assert "(exit 1)" in message and "`pizzactl teardown`" in info.value.hint
