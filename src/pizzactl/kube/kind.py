"""kind clusters as pizzactl uses them: created with the gateway's port mapping, images loaded, pruned.

`ensure_cluster` (deploy) creates the cluster `settings.cluster` with an extraPortMapping from
the host port to the gateway's NodePort (30096), or reuses it if it maps that port (kind cannot
add port mappings later, so a cluster without one is refused); `ensure_training_cluster` (train
--on kind) reuses it whatever it maps. "Created by pizzactl" lives in
state_dir/kind-clusters.json, which outlives the deploy state: redeploys and `teardown
--keep-cluster` never forget it, and teardown deletes only those.

kind never garbage-collects images in its node (its kubelet runs with
imageGCHighThresholdPercent: 100), so every model and trainer image pizzactl loads would stay
until the Docker disk fills: state_dir/kind-images.json records what pizzactl loaded, and
`prune_images` removes the ones a caller no longer keeps (`docker exec NODE crictl rmi`).
`kind load docker-image` is `docker save` + `ctr import --all-platforms`, which fails under
Docker's containerd image store (kubernetes-sigs/kind#3795); pizzactl then saves the one
platform the node runs (`docker save --platform`) and loads that archive (`kind load
image-archive`), the workaround kind documents. kind's own steps show as progress on stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from pizzactl.config import Settings
from pizzactl.console import err, log
from pizzactl.errors import DeployError
from pizzactl.files import atomic_write, write_json
from pizzactl.kube.docker_daemon import daemon_platform, docker_api, docker_client
from pizzactl.kube.shipped import GATEWAY_NODE_PORT
from pizzactl.ports import port_free

CREATED_FILE = "kind-clusters.json"
IMAGES_FILE = "kind-images.json"  # {cluster: [image refs pizzactl loaded, in load order]}
CONTAINERD_STORE_ERROR = re.compile(r"ctr: content digest sha256:[0-9a-f]+: not found")
CONTAINERD_STORE_HINT = (
    "Docker's containerd image store trips `kind load` (kubernetes-sigs/kind#3795). Update Docker to 28 or "
    "later (`docker save --platform`), or turn the store off: Docker Desktop: Settings > General > "
    '"Use containerd for pulling and storing images"; dockerd: `"features": {"containerd-snapshotter": false}` '
    "in /etc/docker/daemon.json, then restart Docker and build again."
)
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


def run_kind(*args: str, timeout: float = 600, progress: str | None = None) -> str:
    """Run `kind ARGS`; its stdout, or a DeployError with the end of its stderr.

    With `progress`, kind's stderr lines (its steps: " ✓ Preparing nodes 📦") show as they come:
    in a spinner on a terminal, as dim lines on a plain stderr; stdout stays for results.
    """
    cmd = [kind_bin(), *args]
    try:
        if progress is None:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        else:
            proc = _run_showing_progress(cmd, timeout, progress)
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


def _run_showing_progress(cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """subprocess.run(cmd) that shows each stderr line while the command runs (rich status on a
    terminal); raises subprocess.TimeoutExpired after `timeout` seconds."""
    from rich.live import Live
    from rich.markup import escape
    from rich.spinner import Spinner

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    lines: list[str] = []
    try:
        spinner = Spinner("dots", text=escape(what) + " ...")
        # stdout is not redirected through the spinner: `--json` results there stay byte-exact
        with Live(spinner, console=err, transient=True, redirect_stdout=False, redirect_stderr=False):
            for line in proc.stderr or []:
                text = line.rstrip()
                lines.append(text)
                if not text.strip():
                    continue
                if err.is_terminal:
                    spinner.update(text=f"{escape(what)}: {escape(text.strip())}")
                elif not text.lstrip().startswith("•"):  # a step that started; its ✓ line follows
                    err.print(f"  [dim]{escape(text)}[/]", highlight=False)
        proc.wait()
    finally:
        timer.cancel()
        reader.join(5)
    if expired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(stdout), "\n".join(lines))


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
        mapping = f"host port {host_port}" if host_port else "a host port kind picks"
        log(f"Creating kind cluster {name!r} ({mapping} -> NodePort {GATEWAY_NODE_PORT}) ...")
        run_kind(
            "create",
            "cluster",
            "--name",
            name,
            "--config",
            config_path,
            "--wait",
            "120s",
            timeout=900,
            progress=f"Creating kind cluster {name!r}",
        )
    finally:
        os.unlink(config_path)


def port_bindings(name: str) -> dict[str, list[dict[str, str]]] | None:
    """The control-plane node container's port bindings, from Docker; None if it cannot be inspected."""
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
    atomic_write(created_path(settings), json.dumps(names))  # half a file would forget what teardown deletes


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
    _create(settings, name, settings.port)
    return True


def _create(settings: Settings, name: str, host_port: int) -> None:
    _record_created(settings, name, False)  # a cluster of that name made by someone else is gone
    _forget_images(settings, name)  # a new node holds none of them
    create_cluster(name, host_port, listen_address(settings.host))
    _record_created(settings, name, True)


def ensure_training_cluster(settings: Settings) -> bool:
    """The cluster `train --on kind` runs in: reused whatever host port it maps (training never
    uses the port), else created, mapping `settings.port` when it is free (so a later `deploy`
    reuses the cluster) and otherwise a port kind picks. True if pizzactl created it."""
    docker_client(30)  # kind drives Docker; say so before kind fails in its own words
    kind_bin()
    name = settings.cluster
    if name in clusters():
        log(f"Reusing kind cluster {name!r}.")
        return name in created_clusters(settings)
    port = settings.port if port_free(listen_address(settings.host), settings.port) else 0
    if not port:
        log(
            f"Host port {settings.port} is taken; training needs no host port, so kind picks one for the "
            f"gateway of a later `pizzactl deploy` (it tells you which: `docker port {name}-control-plane`)."
        )
    _create(settings, name, port)
    return True


def listen_address(host: str) -> str:
    return host if host not in ("localhost", "") else "127.0.0.1"


def load_images(name: str, images: list[str], settings: Settings | None = None, platform: str | None = None) -> None:
    """`kind load docker-image` each image (kind skips what the node has); under Docker's
    containerd image store, the one-platform archive instead. With `settings`, remember what was
    loaded (for `prune_images`)."""
    for image in images:
        log(f"Loading {image} into kind cluster {name!r} ...")
        try:
            run_kind("load", "docker-image", image, "--name", name, timeout=900, progress=f"Loading {image}")
        except DeployError as exc:
            if "not present locally" in exc.message:
                exc.hint = "The image is not in the Docker daemon kind uses: build it (`pizzactl build`) in the same docker context."
            if not CONTAINERD_STORE_ERROR.search(exc.message):
                raise
            log(
                "[yellow]`kind load docker-image` fails under Docker's containerd image store (kind#3795); "
                "loading a one-platform archive instead (`docker save --platform` + `kind load image-archive`).[/]"
            )
            _load_archive(name, image, platform)
        if settings is not None:
            _remember_image(settings, name, image)


def _load_archive(name: str, image: str, platform: str | None) -> None:
    """`docker save --platform P IMAGE` + `kind load image-archive`: one platform, so ctr finds all its content."""
    if platform is None:
        platform = daemon_platform(docker_api(30))  # the node is a container of this daemon
    with tempfile.TemporaryDirectory(prefix="pizzactl-kind-load-") as tmp:
        archive = os.path.join(tmp, "image.tar")
        run_docker("save", "--platform", platform, "-o", archive, image, hint=CONTAINERD_STORE_HINT)
        try:
            run_kind("load", "image-archive", archive, "--name", name, timeout=900, progress=f"Loading {image}")
        except DeployError as exc:
            exc.hint = CONTAINERD_STORE_HINT
            raise


def run_docker(*args: str, hint: str, timeout: float = 900) -> str:
    """The docker CLI, which kind itself drives: it reaches the daemon (and the node containers) kind uses."""
    docker = shutil.which("docker")
    if not docker:
        raise DeployError("The docker command is not installed (kind needs it too).", hint=INSTALL_HINT)
    try:
        proc = subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeployError(f"`docker {' '.join(args)}` took longer than {timeout:.0f}s.", hint=hint) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DeployError(f"`docker {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}", hint=hint)
    return proc.stdout


# --- images in the node: what pizzactl loaded, what the node has, pruning ----------------------------


def images_path(settings: Settings) -> Path:
    return Path(settings.state_dir).expanduser() / IMAGES_FILE


def loaded_by_pizzactl(settings: Settings, name: str) -> list[str]:
    try:
        return list(json.loads(images_path(settings).read_text()).get(name, []))
    except (FileNotFoundError, ValueError, AttributeError):
        return []


def _save_loaded(settings: Settings, name: str, images: list[str]) -> None:
    try:
        data = json.loads(images_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    if images:
        data[name] = images
    else:
        data.pop(name, None)
    write_json(images_path(settings), data)


def _remember_image(settings: Settings, name: str, image: str) -> None:
    _save_loaded(settings, name, [i for i in loaded_by_pizzactl(settings, name) if i != image] + [image])


def _forget_images(settings: Settings, name: str) -> None:
    _save_loaded(settings, name, [])


def normalized(ref: str) -> str:
    """An image reference as containerd's CRI names it: `pizzactl-model:v1` is docker.io/library/pizzactl-model:v1."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"


def nodes(name: str) -> list[str]:
    return [line.strip() for line in run_kind("get", "nodes", "--name", name).splitlines() if line.strip()]


def node_images(node: str) -> set[str]:
    """What `docker exec NODE crictl images` lists (normalized references)."""
    out = run_docker("exec", node, "crictl", "images", "-o", "json", hint="Check the node: `docker ps`.", timeout=60)
    return {tag for image in json.loads(out).get("images", []) for tag in image.get("repoTags") or []}


def missing_images(name: str, images: list[str]) -> list[str]:
    """The images some node of the cluster lacks (all of them when the nodes cannot be asked)."""
    try:
        present = [node_images(node) for node in nodes(name)]
    except (DeployError, ValueError):
        return list(images)
    return [i for i in images if not present or any(normalized(i) not in p for p in present)]


def prune_images(settings: Settings, name: str, keep: set[str]) -> list[str]:
    """Remove from the nodes the images pizzactl loaded that are not in `keep`; what went. Best effort:
    a failure only says so (the deploy it follows has succeeded)."""
    loaded = loaded_by_pizzactl(settings, name)
    drop = [i for i in loaded if i not in keep]
    if not drop:
        return []
    removed: set[str] = set()
    try:
        for node in nodes(name):
            there = node_images(node)
            refs = [i for i in drop if normalized(i) in there]
            if refs:
                run_docker(
                    "exec",
                    node,
                    "crictl",
                    "rmi",
                    *refs,
                    hint="Remove it by hand: `docker exec NODE crictl rmi IMAGE`.",
                    timeout=120,
                )
                removed.update(refs)
    except (DeployError, ValueError) as exc:
        log(f"[yellow]Could not remove old images from the kind node: {exc}[/]")
        return sorted(removed)
    _save_loaded(settings, name, [i for i in loaded if i in keep])
    if removed:
        log(
            f"Removed {len(removed)} image(s) pizzactl no longer serves from kind cluster {name!r} (kind never garbage-collects them)."
        )
    return sorted(removed)


def delete_cluster(settings: Settings, name: str) -> None:
    """Delete a kind cluster (if it still exists) and forget that pizzactl created it."""
    if name in clusters():
        run_kind("delete", "cluster", "--name", name)
    _record_created(settings, name, False)
    _forget_images(settings, name)


def kube_context(name: str) -> str:
    return f"kind-{name}"
