"""`pizzactl deploy --target docker`: the two images as containers on a private network.

The model server is reachable only on the user-defined network (by its container name); the
gateway is published on the host port. Both run read-only, without capabilities, as non-root,
like the Kubernetes manifests ask. Everything carries the label `pizzactl=1`, so teardown
(and a test) can find every leftover.
"""

from __future__ import annotations

from typing import Any

from pizzactl.config import Settings
from pizzactl.console import log
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.images import build_images
from pizzactl.deploy.state import DeployState
from pizzactl.errors import DeployError, PortInUseError

TARGET = "docker"
LABEL = "pizzactl"
LABELS = {LABEL: "1"}
NETWORK = "pizzactl"
MODEL = "pizzactl-model"
GATEWAY = "pizzactl-gateway"
GATEWAY_PORT = 9696
MODEL_PORT = 8501


def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as exc:
        raise DeployError(
            f"Cannot reach the Docker daemon: {str(exc).splitlines()[-1][:200] if str(exc) else type(exc).__name__}",
            hint="Start Docker, then run `pizzactl doctor`.",
        ) from None


def _hardening() -> dict[str, Any]:
    return {
        "read_only": True,
        "tmpfs": {"/tmp": "rw,size=256m"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "labels": LABELS,
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 3},
    }


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def deploy(settings: Settings, timeout: float = 300.0) -> dict[str, Any]:
    """Build the images, start model server and gateway, wait until the gateway is ready."""
    from pizzactl.serving.processes import port_free

    if not port_free(settings.host, settings.port):
        raise PortInUseError(
            f"Port {settings.port} on {settings.host} is in use.",
            hint=f"Stop what uses it (`pizzactl teardown`?) or pass --port, e.g. --port {settings.port + 1}.",
        )
    client = docker_client()
    images = build_images(settings, push=False)
    _remove_labelled(client)  # leftovers of a deploy that was killed half-way

    url = f"http://{_client_host(settings.host)}:{settings.port}"
    network = client.networks.create(NETWORK, driver="bridge", labels=LABELS, check_duplicate=True)
    record = DeployState(
        target=TARGET,
        url=url,
        model_version=images.model_version,
        model_dir=str(settings.models_dir),
        ports={"gateway": settings.port},
        extra={"network": network.name, "containers": [], "images": images.as_dict()},
    )
    try:
        model = client.containers.run(
            images.model_image,
            name=MODEL,
            detach=True,
            network=NETWORK,
            **_hardening(),
        )
        record.extra["containers"].append(model.name)
        state_mod.save(settings, record)
        gateway = client.containers.run(
            images.gateway_image,
            name=GATEWAY,
            detach=True,
            network=NETWORK,
            ports={f"{GATEWAY_PORT}/tcp": (settings.host, settings.port)},
            environment={
                "PIZZACTL_MODEL_URL": f"http://{MODEL}:{MODEL_PORT}",
                "PIZZACTL_ALLOW_PRIVATE_URLS": "true" if settings.allow_private_urls else "false",
            },
            **_hardening(),
        )
        record.extra["containers"].append(gateway.name)
        state_mod.save(settings, record)
    except DeployError:
        raise
    except Exception as exc:
        _remove_labelled(client)
        state_mod.clear(settings)
        raise DeployError(f"Starting the containers failed: {exc}", hint="Run `pizzactl doctor`.") from None

    log(f"Waiting for {url}/readyz ...")
    try:
        _wait_ready(client, url, timeout)
    except DeployError:
        _remove_labelled(client)
        state_mod.clear(settings)
        raise
    log(f"[green]✓[/] gateway ready at {url}")
    return {
        "target": TARGET,
        "url": url,
        "model_version": images.model_version,
        "containers": record.extra["containers"],
        "network": NETWORK,
        "images": images.as_dict(),
    }


def _wait_ready(client, url: str, timeout: float) -> None:
    from pizzactl.serving.processes import poll_ready

    def check() -> None:
        for name in (MODEL, GATEWAY):
            c = client.containers.get(name)
            if c.status in ("exited", "dead"):
                raise DeployError(
                    f"Container {name} stopped (exit code {c.attrs['State'].get('ExitCode')}); its last log lines:\n"
                    + _logs(c),
                    hint="Fix the error above; `pizzactl build` rebuilds the images.",
                )

    last = poll_ready(url, timeout, check=check, interval=1.0)
    if last is not None:
        tails = "\n".join(f"--- {name}\n{_logs(client.containers.get(name))}" for name in (MODEL, GATEWAY))
        raise DeployError(
            f"The gateway was not ready after {timeout:.0f}s ({last}). Last log lines:\n{tails}",
            hint="Retry with a longer --timeout, or read the logs above.",
        )


def _logs(container, lines: int = 20) -> str:
    try:
        return container.logs(tail=lines).decode(errors="replace").rstrip()
    except Exception:
        return "(no logs)"


def _remove_labelled(client) -> list[str]:
    """Remove every container and network labelled pizzactl=1; returns what was removed."""
    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        try:
            c.remove(force=True)
            removed.append(c.name)
        except Exception:  # already gone
            pass
    for n in client.networks.list(filters={"label": f"{LABEL}=1"}):
        try:
            n.remove()
            removed.append(f"network {n.name}")
        except Exception:
            pass
    return removed


def status(settings: Settings, state: DeployState) -> dict[str, Any]:
    import httpx

    containers: dict[str, str] = {}
    try:
        client = docker_client()
        for name in state.extra.get("containers", []):
            try:
                containers[name] = client.containers.get(name).status
            except Exception:
                containers[name] = "gone"
    except DeployError:
        containers = {name: "unknown (docker unreachable)" for name in state.extra.get("containers", [])}
    try:
        ready = httpx.get(f"{state.url}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        ready = False
    return {"ready": ready, "containers": containers}


def teardown(settings: Settings, state: DeployState | None = None) -> dict[str, Any]:
    removed = _remove_labelled(docker_client())
    what = ", ".join(removed) if removed else "nothing (already gone)"
    return {"message": f"Removed {what}.", "removed": removed}
