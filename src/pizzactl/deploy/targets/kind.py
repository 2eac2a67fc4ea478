"""`pizzactl deploy` (the default target): a kind cluster pizzactl creates or reuses.

Check Docker first (kind needs it), check the host port before creating a cluster, create or
reuse the cluster (`kube.kind.ensure_cluster`: the port mapping, "created by pizzactl"), build
the images, `kind load` them, then release them as on any cluster (targets/cluster.py). After
each successful release the images that neither serve nor are the rollback target nor the last
trainer are pruned from the node (kind never garbage-collects them); a rollback first loads the
images it goes back to when the node lacks them (a recreated cluster, an image pruned by an
older release).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pizzactl.config import Settings
from pizzactl.console import log
from pizzactl.deploy import manifests
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.rollout import Plan
from pizzactl.deploy.state import DeployState
from pizzactl.deploy.targets import cluster as cluster_target
from pizzactl.errors import DeployError
from pizzactl.kube import capacity, k8s
from pizzactl.kube import training as kube_training
from pizzactl.kube.docker_daemon import docker_client
from pizzactl.kube.images import build
from pizzactl.kube.kind import (
    clusters,
    created_clusters,
    delete_cluster,
    ensure_cluster,
    kind_bin,
    kube_context,
    listen_address,
    load_images,
    missing_images,
    prune_images,
)
from pizzactl.kube.shipped import GATEWAY_NODE_PORT
from pizzactl.serving.processes import require_free_port, wait_until_ready

TARGET = "kind"


# --- images in the node: what a release keeps ---------------------------------------------------


def images_to_keep(settings: Settings, state: DeployState) -> set[str]:
    """What serves, what `rollback` goes back to, and the trainer of the last training run."""
    releases = [state.extra.get("images") or {}, *(state.extra.get("history") or [])[-1:]]
    keep = {r[k] for r in releases for k in ("gateway_image", "model_image") if r.get(k)}
    training = kube_training.load_state(settings) or {}
    if training.get("cluster") == state.extra.get("cluster") and training.get("image"):
        keep.add(training["image"])
    return keep


# --- the target ---------------------------------------------------------------------------------


def _url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def preflight(settings: Settings, previous: DeployState | None) -> None:
    """Before anything changes: Docker answers, and a cluster still to be created finds its port free."""
    docker_client(30)  # kind drives Docker; say so before kind fails in its own words
    kind_bin()
    ours = previous is not None and previous.ports.get("gateway") == settings.port  # torn down first
    if not ours and settings.cluster not in clusters():
        require_free_port(listen_address(settings.host), settings.port, what="kind cluster's port mapping")


def deploy(settings: Settings, timeout: float = 300.0, plan: Plan | None = None) -> dict[str, Any]:
    """Create or reuse the cluster, build and load the images, release them, wait for the host port."""
    preflight(settings, None)
    created = ensure_cluster(settings)
    previous = state_mod.load(settings)
    same = previous is not None and previous.target == TARGET and previous.extra.get("cluster") == settings.cluster
    record = previous if same and previous is not None else _record(settings)
    record.extra["created_cluster"] = created
    state_mod.save(settings, record)  # now: a failure below still leaves something teardown knows
    capacity.check_deployment(
        k8s.connect(kube_context(settings.cluster)), manifests.render(settings, "pizzactl-gateway", "pizzactl-model")
    )  # before building
    images = build(settings.replace(registry=None), push=False, pinned=plan.in_image() if plan is not None else None)
    load_images(settings.cluster, [images.gateway_image, images.model_image], settings, images.platform)
    result = cluster_target.release(settings, images, timeout, record=record, plan=plan)
    _prune_after_release(settings, settings.cluster)
    wait_until_ready(
        record.url,
        min(60.0, timeout),
        what="the gateway through the kind port mapping",
        hint=f"Check the port mapping of the kind node: `docker port {settings.cluster}-control-plane`.",
    )
    return {**result, "url": record.url, "cluster": settings.cluster, "created_cluster": created}


def _record(settings: Settings) -> DeployState:
    return DeployState(
        target=TARGET,
        url=_url(settings),
        model_dir=str(settings.models_dir),
        ports={"gateway": settings.port, "node_port": GATEWAY_NODE_PORT},
        extra={"cluster": settings.cluster, "context": kube_context(settings.cluster), "namespace": settings.namespace},
    )


def status(settings: Settings, state: DeployState) -> dict[str, Any]:
    return cluster_target.status(settings, state)


def rollback(settings: Settings, state: DeployState, to: int | None, timeout: float) -> dict[str, Any]:
    """As on any cluster, after loading the images it goes back to if the node lacks them."""
    cluster = state.extra.get("cluster") or settings.cluster
    chosen = cluster_target.rollback_target(state, to)
    if chosen:
        release = chosen[0]
        wanted = [release[k] for k in ("gateway_image", "model_image") if release.get(k)]
        missing = missing_images(cluster, wanted)
        if missing:
            log(f"The kind node lacks {', '.join(missing)}; loading it again.")
            load_images(cluster, missing, settings, release.get("platform"))
    result = cluster_target.rollback(settings, state, to, timeout)
    _prune_after_release(settings, cluster)
    return result


def _prune_after_release(settings: Settings, cluster: str) -> None:
    current = state_mod.load(settings)
    if current is not None and current.target == TARGET and not current.extra.get("failed"):
        prune_images(settings, cluster, images_to_keep(settings, current))


def refuse_while_training(settings: Settings, state: DeployState, target: str) -> None:
    """Switching target tears the kind deployment down, and with it the cluster pizzactl created:
    refuse while that cluster holds a training Job whose result is not home yet (its uploaded data,
    cache and outbox live on the cluster's volume). Keeping the cluster instead would keep its
    host port mapping too, which the new target usually wants."""
    cluster = state.extra.get("cluster")
    training = kube_training.load_state(settings) or {}
    if (
        not cluster
        or cluster not in created_clusters(settings)
        or training.get("cluster") != cluster
        or not training.get("job")
        or training.get("collected")
        or cluster not in clusters()
    ):
        return
    phase = str((kube_training.training_status(settings) or {}).get("phase", "unknown"))
    if phase.startswith("Failed") or phase == "gone":
        return
    where = f"--context {settings.context}" if target == "cluster" else f"--target {target}"
    flag = "" if cluster == "pizzactl" else f" --cluster {cluster}"
    raise DeployError(
        f"Deploying with {where} would delete the kind cluster {cluster!r} that pizzactl created, and training "
        f"Job {training['job']} ({phase}) runs there: its data, cache and result are not copied home yet.",
        hint=f"Let it finish and bring the model home: `pizzactl train --on kind{flag} --attach`, then deploy again. "
        "Or give it up: `pizzactl teardown` deletes the cluster with the Job, then deploy.",
    )


def teardown(settings: Settings, state: DeployState, keep_cluster: bool = False) -> dict[str, Any]:
    """Delete the kind cluster if pizzactl created it (unless keep_cluster), else what pizzactl applied."""
    cluster = state.extra.get("cluster")
    if cluster and cluster in created_clusters(settings) and not keep_cluster:
        delete_cluster(settings, cluster)
        return {"message": f"Deleted the kind cluster {cluster!r}.", "cluster_deleted": True}
    if cluster and cluster not in clusters():
        return {"message": f"The kind cluster {cluster!r} is already gone.", "cluster_deleted": False}
    made_cluster = state.extra.get("created_cluster") or cluster in created_clusters(settings)
    if "created_namespace" not in state.extra and made_cluster:
        # an interrupted first deploy never said; in a cluster pizzactl created, the namespace is its own
        state = replace(state, extra={**state.extra, "created_namespace": True})
    result = cluster_target.teardown(settings, state)
    kept = "kept the cluster pizzactl created" if cluster in created_clusters(settings) else "kept the cluster"
    return {**result, "message": result["message"].rstrip(".") + f"; {kept} {cluster!r}.", "cluster_deleted": False}


def reconfigure(settings: Settings, previous: DeployState, plan: Plan, timeout: float = 300.0) -> None:
    """A new plan here means new pods, which deploy rolls out: nothing to take in place."""
    return None
