"""`pizzactl deploy` (the default target): a kind cluster, or any cluster with --context.

kind: create (or reuse) the cluster `settings.cluster` through the kind CLI, with an
extraPortMapping from the host port to the gateway's NodePort (30096), build the images,
`kind load` them, apply the manifests and wait for the rollout. A reused cluster without
that mapping cannot be fixed in place (kind cannot add port mappings later), so we say so.

--context CTX --registry REG: push the images and deploy to that existing cluster instead;
pizzactl never creates or deletes such a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from typing import Any

import yaml

from pizzactl.config import Settings
from pizzactl.console import log
from pizzactl.deploy import k8s, manifests
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.manifests import GATEWAY_NODE_PORT
from pizzactl.deploy.state import DeployState
from pizzactl.errors import DeployError, UsageError

TARGET = "kind"
DEPLOYMENTS = ["pizzactl-model", "pizzactl-gateway"]
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
    try:
        import docker

        container = docker.from_env(timeout=30).containers.get(f"{name}-control-plane")
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


def ensure_cluster(settings: Settings) -> bool:
    """Create the kind cluster, or reuse it if it maps the port; True if we created it."""
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
        return False
    create_cluster(name, settings.port, _listen_address(settings.host))
    return True


def _listen_address(host: str) -> str:
    return host if host not in ("localhost", "") else "127.0.0.1"


def load_images(name: str, images: list[str]) -> None:
    for image in images:
        log(f"Loading {image} into kind cluster {name!r} ...")
        run_kind("load", "docker-image", image, "--name", name, timeout=900)


def kube_context(name: str) -> str:
    return f"kind-{name}"


# --- the target ---------------------------------------------------------------------------------


def _url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def deploy(settings: Settings, dry_run: bool = False, timeout: float = 300.0) -> dict[str, Any] | str:
    """Deploy to kind (or to --context); with dry_run, return the manifests and touch nothing."""
    from pizzactl.deploy.images import build_images, plan_images

    if settings.context and not settings.registry and not dry_run:
        raise UsageError(
            "--context needs --registry: the cluster must pull the images from somewhere.",
            hint="Pass --registry REGISTRY (e.g. ghcr.io/you) and log in with `docker login` first.",
        )
    if dry_run:
        images = plan_images(settings)
        docs = manifests.render(settings, images.gateway_image, images.model_image, model_version=images.model_version)
        return manifests.to_yaml(docs)

    created = False
    if settings.context:
        context = settings.context
        images = build_images(settings, push=True)
    else:
        kind_bin()  # fail before building when kind is missing
        created = ensure_cluster(settings)
        context = kube_context(settings.cluster)
        images = build_images(settings.replace(registry=None), push=False)
        load_images(settings.cluster, [images.gateway_image, images.model_image])

    url = _url(settings) if not settings.context else f"NodePort {GATEWAY_NODE_PORT} on any node of {context}"
    record = DeployState(
        target=TARGET,
        url=url if not settings.context else "",
        model_version=images.model_version,
        model_dir=str(settings.models_dir),
        ports={"gateway": settings.port, "node_port": GATEWAY_NODE_PORT},
        extra={
            "cluster": None if settings.context else settings.cluster,
            "created_cluster": created,
            "context": context,
            "namespace": settings.namespace,
            "images": images.as_dict(),
        },
    )
    state_mod.save(settings, record)

    api = k8s.connect(context)
    docs = manifests.render(settings, images.gateway_image, images.model_image, model_version=images.model_version)
    log(f"Applying {len(docs)} objects to {context} (namespace {settings.namespace}) ...")
    k8s.apply(api, docs)
    k8s.wait_rollout(api, settings.namespace, DEPLOYMENTS, timeout)
    if not settings.context:
        _wait_gateway(url, settings.cluster, timeout=min(60.0, timeout))
    else:
        url = _remote_url(api, settings, context, record)
    return {
        "target": TARGET,
        "url": url,
        "model_version": images.model_version,
        "context": context,
        "namespace": settings.namespace,
        "cluster": record.extra["cluster"],
        "created_cluster": created,
        "images": images.as_dict(),
    }


def _remote_url(api, settings: Settings, context: str, record: DeployState, wait: float = 15.0) -> str:
    """The gateway's address on an existing cluster (LoadBalancer, else node IP + NodePort),
    recorded for `status` and `predict` when it answers from here; "" (with what to do) when not."""
    from pizzactl.serving.processes import poll_ready

    url = k8s.gateway_url(api, settings.namespace) or ""
    if url and poll_ready(url, wait, interval=1.0) is None:
        state_mod.save(settings, replace(record, url=url))
        log(f"[green]✓[/] gateway ready at {url}")
        return url
    where = f"{url} does not answer from this machine" if url else "the cluster reports no external address for it"
    log(
        f"[yellow]The gateway is running in {context}, but {where}.[/] Reach it with "
        f"`kubectl port-forward -n {settings.namespace} svc/pizzactl-gateway {settings.port}:80` and "
        f"`pizzactl predict --endpoint http://127.0.0.1:{settings.port} PHOTO`."
    )
    return ""


def _wait_gateway(url: str, cluster: str, timeout: float) -> None:
    """The rollout is done; wait until the host port really reaches a ready gateway."""
    from pizzactl.serving.processes import poll_ready

    last = poll_ready(url, timeout, interval=1.0)
    if last is not None:
        raise DeployError(
            f"The pods are ready but {url}/readyz is not reachable ({last}).",
            hint=f"Check the port mapping of the kind node: `docker port {cluster}-control-plane`.",
        )


def status(settings: Settings, state: DeployState) -> dict[str, Any]:
    context = state.extra.get("context")
    namespace = state.extra.get("namespace", settings.namespace)
    try:
        api = k8s.connect(context)
        deployments = k8s.deployments_status(api, namespace, DEPLOYMENTS)
    except DeployError as exc:
        return {"ready": False, "context": context, "error": exc.message}
    ready = all(d.get("done") for d in deployments.values())
    return {"ready": ready, "context": context, "namespace": namespace, "deployments": deployments}


def teardown(settings: Settings, state: DeployState, keep_cluster: bool = False) -> dict[str, Any]:
    """Delete the namespace; delete the kind cluster too if pizzactl created it (unless keep_cluster)."""
    context = state.extra.get("context")
    namespace = state.extra.get("namespace", settings.namespace)
    cluster = state.extra.get("cluster")
    if cluster and state.extra.get("created_cluster") and not keep_cluster:
        if cluster in clusters():
            run_kind("delete", "cluster", "--name", cluster)
        return {"message": f"Deleted the kind cluster {cluster!r}.", "cluster_deleted": True}
    try:
        deleted = k8s.delete_namespace(k8s.connect(context), namespace)
    except DeployError as exc:
        if cluster and cluster not in clusters():
            return {"message": f"The kind cluster {cluster!r} is already gone.", "cluster_deleted": False}
        raise exc
    what = f"Deleted namespace {namespace} in {context}" if deleted else f"Namespace {namespace} was already gone"
    return {"message": what + (f"; kept the cluster {cluster!r}." if cluster else "."), "cluster_deleted": False}
