"""`pizzactl deploy` (the default target): a kind cluster pizzactl creates or reuses.

Check Docker first (kind needs it), check the host port before creating a cluster, create the
cluster `settings.cluster` with an extraPortMapping from the host port to the gateway's
NodePort (30096) and record at once that pizzactl created it, build the images, `kind load`
them, then release them as on any cluster (targets/cluster.py). A reused cluster without that
mapping cannot be fixed in place (kind cannot add port mappings later), so we say so.
"Created by pizzactl" lives in state_dir/kind-clusters.json, which outlives the deploy state:
redeploys and `teardown --keep-cluster` never forget it, and teardown deletes only those.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pizzactl.config import Settings
from pizzactl.console import log
from pizzactl.deploy import capacity, k8s
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.manifests import GATEWAY_NODE_PORT
from pizzactl.deploy.state import DeployState
from pizzactl.deploy.targets import cluster as cluster_target
from pizzactl.errors import DeployError

TARGET = "kind"
CREATED_FILE = "kind-clusters.json"
INSTALL_HINT = (
    "Install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), e.g. "
    "`go install sigs.k8s.io/kind@v0.27.0` or `brew install kind`, then run `pizzactl doctor`."
)


# --- the kind CLI ----------------------------------------------------------------------------------


def kind_bin() -> str:
    path = shutil.which("kind")
    if not path:
        raise DeployError("The kind command is not installed.", hint=INSTALL_HINT)
    return path


def run_kind(*args: str, timeout: float = 600) -> str:
    """Run `kind ARGS`; its stdout, or a DeployError with the end of its stderr."""
    cmd = [kind_bin(), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"`kind {' '.join(args)}` took longer than {timeout:.0f}s.",
            hint="Check that Docker is healthy: `pizzactl doctor`.",
        ) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise DeployError(
            f"`kind {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}",
            hint="Run `pizzactl doctor`; kind needs a running Docker daemon.",
        )
    return proc.stdout


def clusters() -> list[str]:
    out = run_kind("get", "clusters")
    return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("No kind clusters")]


def cluster_config(host_port: int, listen_address: str = "127.0.0.1") -> dict[str, Any]:
    """The kind Cluster config: one control-plane node that maps host_port to the gateway NodePort."""
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [
            {
                "role": "control-plane",
                "extraPortMappings": [
                    {
                        "containerPort": GATEWAY_NODE_PORT,
                        "hostPort": host_port,
                        "listenAddress": listen_address,
                        "protocol": "TCP",
                    }
                ],
            }
        ],
    }


def create_cluster(name: str, host_port: int, listen_address: str = "127.0.0.1") -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="pizzactl-kind-", delete=False) as fh:
        yaml.safe_dump(cluster_config(host_port, listen_address), fh, sort_keys=False)
        config_path = fh.name
    try:
        log(f"Creating kind cluster {name!r} (host port {host_port} -> NodePort {GATEWAY_NODE_PORT}) ...")
        run_kind("create", "cluster", "--name", name, "--config", config_path, "--wait", "120s", timeout=900)
    finally:
        os.unlink(config_path)


def port_bindings(name: str) -> dict[str, list[dict[str, str]]] | None:
    """The control-plane node container's port bindings, from Docker; None if it cannot be inspected."""
    from pizzactl.deploy.docker_daemon import docker_client

    try:
        container = docker_client(30).containers.get(f"{name}-control-plane")
        return container.attrs.get("HostConfig", {}).get("PortBindings") or {}
    except Exception:
        return None


def mapped_host_port(name: str) -> int | None:
    """The host port that reaches the gateway NodePort in cluster `name`, if any."""
    bindings = port_bindings(name)
    for binding in (bindings or {}).get(f"{GATEWAY_NODE_PORT}/tcp", []) or []:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def created_path(settings: Settings) -> Path:
    return Path(settings.state_dir).expanduser() / CREATED_FILE


def created_clusters(settings: Settings) -> list[str]:
    try:
        return list(json.loads(created_path(settings).read_text()))
    except (FileNotFoundError, ValueError):
        return []


def _record_created(settings: Settings, name: str, created: bool) -> None:
    names = [n for n in created_clusters(settings) if n != name] + ([name] if created else [])
    path = created_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(names))


def ensure_cluster(settings: Settings) -> bool:
    """Create the kind cluster, or reuse it if it maps the port; True if pizzactl created it (now or before)."""
    name = settings.cluster
    if name in clusters():
        bindings = port_bindings(name)
        port = mapped_host_port(name)
        if bindings is not None and port is None:
            raise DeployError(
                f"The kind cluster {name!r} exists but does not map NodePort {GATEWAY_NODE_PORT} to a host port, "
                "so the gateway would be unreachable (kind cannot add port mappings to a running cluster).",
                hint=f"Delete it (`kind delete cluster --name {name}`) and deploy again, or deploy into another "
                f"cluster: `pizzactl deploy --cluster pizzactl2`.",
            )
        if port is not None and port != settings.port:
            raise DeployError(
                f"The kind cluster {name!r} maps the gateway to host port {port}, not {settings.port}.",
                hint=f"Deploy with --port {port}, or delete the cluster (`kind delete cluster --name {name}`).",
            )
        log(f"Reusing kind cluster {name!r}.")
        return name in created_clusters(settings)
    _record_created(settings, name, False)  # a cluster of that name made by someone else is gone
    create_cluster(name, settings.port, _listen_address(settings.host))
    _record_created(settings, name, True)
    return True


def _listen_address(host: str) -> str:
    return host if host not in ("localhost", "") else "127.0.0.1"


def load_images(name: str, images: list[str]) -> None:
    for image in images:
        log(f"Loading {image} into kind cluster {name!r} ...")
        try:
            run_kind("load", "docker-image", image, "--name", name, timeout=900)
        except DeployError as exc:
            if "not present locally" in exc.message:
                exc.hint = "The image is not in the Docker daemon kind uses: build it (`pizzactl build`) in the same docker context."
            raise


def delete_cluster(settings: Settings, name: str) -> None:
    """Delete a kind cluster (if it still exists) and forget that pizzactl created it."""
    if name in clusters():
        run_kind("delete", "cluster", "--name", name)
    _record_created(settings, name, False)


def kube_context(name: str) -> str:
    return f"kind-{name}"


# --- the target ---------------------------------------------------------------------------------


def _url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def preflight(settings: Settings, previous: DeployState | None) -> None:
    """Before anything changes: Docker answers, and a cluster still to be created finds its port free."""
    from pizzactl.deploy.docker_daemon import docker_client
    from pizzactl.serving.processes import require_free_port

    docker_client(30)  # kind drives Docker; say so before kind fails in its own words
    kind_bin()
    ours = previous is not None and previous.ports.get("gateway") == settings.port  # torn down first
    if not ours and settings.cluster not in clusters():
        require_free_port(_listen_address(settings.host), settings.port, what="kind cluster's port mapping")


def deploy(settings: Settings, timeout: float = 300.0) -> dict[str, Any]:
    """Create or reuse the cluster, build and load the images, release them, wait for the host port."""
    from pizzactl.deploy.images import build
    from pizzactl.serving.processes import wait_until_ready

    preflight(settings, None)
    created = ensure_cluster(settings)
    previous = state_mod.load(settings)
    same = previous is not None and previous.target == TARGET and previous.extra.get("cluster") == settings.cluster
    record = previous if same and previous is not None else _record(settings)
    record.extra["created_cluster"] = created
    state_mod.save(settings, record)  # now: a failure below still leaves something teardown knows
    capacity.check_deployment(k8s.connect(kube_context(settings.cluster)), settings)  # before building
    images = build(settings.replace(registry=None), push=False)
    load_images(settings.cluster, [images.gateway_image, images.model_image])
    result = cluster_target.release(settings, images, timeout, record=record)
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
    return cluster_target.rollback(settings, state, to, timeout)


def teardown(settings: Settings, state: DeployState, keep_cluster: bool = False) -> dict[str, Any]:
    """Delete the kind cluster if pizzactl created it (unless keep_cluster), else what pizzactl applied."""
    cluster = state.extra.get("cluster")
    if cluster and cluster in created_clusters(settings) and not keep_cluster:
        delete_cluster(settings, cluster)
        return {"message": f"Deleted the kind cluster {cluster!r}.", "cluster_deleted": True}
    if cluster and cluster not in clusters():
        return {"message": f"The kind cluster {cluster!r} is already gone.", "cluster_deleted": False}
    result = cluster_target.teardown(settings, state)
    kept = "kept the cluster pizzactl created" if cluster in created_clusters(settings) else "kept the cluster"
    return {**result, "message": result["message"].rstrip(".") + f"; {kept} {cluster!r}.", "cluster_deleted": False}
