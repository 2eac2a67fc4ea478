"""`pizzactl deploy --target docker`: the rendered pods, run as containers — a rehearsal of the cluster.

Each Deployment that `manifests.render` produces becomes one container with its pod spec
translated field by field: image, args, env, user and group (runAsUser/runAsGroup), a
read-only root filesystem, dropped capabilities, no-new-privileges, CPU and memory limits,
emptyDir volumes as size-limited tmpfs. Services become network aliases on a private network
(so the gateway reaches `pizzactl-model.NAMESPACE.svc` as in the cluster), and the NodePort
Service is published on the host port; a container port named `grpc` (the model server's 8500)
is published on a host port Docker picks (no collision with a local TF Serving), which `status`
reads back from the container. What passes here runs the same way in a pod.
Everything carries the label `pizzactl=1`, so teardown (and a test) finds every leftover.
"""

from __future__ import annotations

import re
from typing import Any

from pizzactl import httpclient
from pizzactl.config import MODEL_GRPC_PORT, MODEL_NAME, MODEL_PORT, Settings
from pizzactl.console import log
from pizzactl.deploy import manifests, rollout
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.rollout import Plan
from pizzactl.deploy.state import DeployState
from pizzactl.deploy.targets import cluster as cluster_target
from pizzactl.errors import DeployError, PortInUseError
from pizzactl.kube.docker_daemon import docker_client
from pizzactl.kube.images import Images, build
from pizzactl.ports import port_free
from pizzactl.serving.processes import wait_until_ready

TARGET = "docker"
LABEL = "pizzactl"
LABELS = {LABEL: "1"}
NETWORK = "pizzactl"
MODEL_CONTAINER = "pizzactl-model"  # the model Deployment's name, its container's here
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()  # type: ignore[union-attr]
    return int(float(number) * _UNITS.get(unit, 1))


def _nano_cpus(quantity: str) -> int:
    text = str(quantity)
    return int(float(text[:-1]) * 1e6) if text.endswith("m") else int(float(text) * 1e9)


def container_specs(settings: Settings, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """docker `containers.run` keyword arguments for each rendered Deployment, in apply order."""
    namespace = settings.namespace
    services = [d for d in docs if d["kind"] == "Service"]
    specs = []
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        container = pod["containers"][0]
        sc = {**pod_sc, **container.get("securityContext", {})}
        limits = container.get("resources", {}).get("limits", {})
        sizes = {v["name"]: v.get("emptyDir", {}).get("sizeLimit") for v in pod.get("volumes", []) if "emptyDir" in v}
        tmpfs = {
            m["mountPath"]: f"rw,mode=1777,size={_bytes(sizes[m['name']])}" if sizes.get(m["name"]) else "rw,mode=1777"
            for m in container.get("volumeMounts", [])
            if m["name"] in sizes
        }
        mine = [s for s in services if _selects(s, dep)]
        aliases = [a for s in mine for a in (s["metadata"]["name"], f"{s['metadata']['name']}.{namespace}.svc")]
        ports: dict[str, tuple[str, int | None]] = {}
        for svc in mine:
            if svc["spec"].get("type") == "NodePort":
                target = _container_port(container, svc["spec"]["ports"][0]["targetPort"])
                ports[f"{target}/tcp"] = (settings.host, settings.port)
        for port in container.get("ports", []):
            if port.get("name") == "grpc":  # host port '' : Docker picks a free one
                ports[f"{port['containerPort']}/tcp"] = (settings.host, None)
        spec: dict[str, Any] = {
            "image": container["image"],
            "name": name,
            "detach": True,
            "environment": environment(container, docs),
            "read_only": bool(sc.get("readOnlyRootFilesystem")),
            "cap_drop": list(sc.get("capabilities", {}).get("drop", [])),
            "security_opt": ["no-new-privileges:true"] if sc.get("allowPrivilegeEscalation") is False else [],
            "tmpfs": tmpfs,
            "labels": {**LABELS, "app.kubernetes.io/name": name},
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 3},
            "network": NETWORK,
            "ports": ports,
            "aliases": aliases,
        }
        if "runAsUser" in sc:
            spec["user"] = f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"
        if container.get("args"):
            spec["command"] = list(container["args"])  # Kubernetes args replace the image's CMD
        if limits.get("memory"):
            spec["mem_limit"] = _bytes(limits["memory"])
        if limits.get("cpu"):
            spec["nano_cpus"] = _nano_cpus(limits["cpu"])
        specs.append(spec)
    return specs


def environment(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's env, `valueFrom.secretKeyRef` resolved from the rendered Secrets as the
    kubelet does (a missing optional Secret or key leaves the variable out, a required one fails)."""
    import base64

    secrets = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "Secret"}
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
        data = secrets.get(ref.get("name", ""), {})
        if ref.get("key") in data:
            env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif not ref.get("optional"):
            raise DeployError(
                f"{entry['name']} refers to {ref.get('name')}/{ref.get('key')}, which the rendered manifests lack.",
                hint="Docker runs only what pizzactl renders: add the Secret to the manifests.",
            )
    return env


def _selects(service: dict[str, Any], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    selector = service["spec"].get("selector", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _container_port(container: dict[str, Any], target: int | str) -> int:
    for port in container.get("ports", []):
        if target in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    return int(target)


# --- the target ---------------------------------------------------------------------------------


def preflight(settings: Settings, previous: DeployState | None) -> None:

    if previous is not None and previous.ports.get("gateway") == settings.port:
        return
    if not port_free(settings.host, settings.port):
        raise PortInUseError(
            f"Port {settings.port} on {settings.host} is in use.",
            hint=f"Stop what uses it (`pizzactl teardown`?) or pass --port, e.g. --port {settings.port + 1}.",
        )


def deploy(
    settings: Settings, timeout: float = 300.0, plan: Plan | None = None, *, images: Images | None = None
) -> dict[str, Any]:
    """Build the images (unless given: a rollback, with the plan they were built for), run the
    rendered pods, wait until the gateway is ready. A pinned `plan` (deploy/rollout.py): the
    model image holds its versions and model config, the gateway container gets its settings."""
    preflight(settings, None)
    client = docker_client()
    if images is None:
        images = build(settings, push=False, pinned=plan.in_image() if plan is not None else None)
    plan = plan or Plan()
    _remove_labelled(client)  # leftovers of a deploy that was killed half-way
    url = f"http://{_client_host(settings.host)}:{settings.port}"
    record = DeployState(
        target=TARGET,
        url=url,
        model_version=images.model_version,
        model_dir=str(settings.models_dir),
        ports={"gateway": settings.port},
        extra={
            "network": NETWORK,
            "containers": [],
            "images": cluster_target.release_record(images, plan),
            "render": recorded_options(settings),
            **cluster_target.rollout_extra(plan),
        },
    )
    if plan.pinned:
        log(f"{plan.mode.capitalize() if plan.trial else 'Pinned'}: {plan.describe()}.")
    previous = state_mod.load(settings)
    if previous is not None and previous.target == TARGET:
        record.extra["history"] = list(previous.extra.get("history", []))
    client.networks.create(NETWORK, driver="bridge", labels=LABELS, check_duplicate=True)
    try:
        for spec in container_specs(settings, cluster_target.render(settings, images, plan)):
            _run(client, spec)
            record.extra["containers"].append(spec["name"])
            state_mod.save(settings, record)
    except Exception as exc:
        _remove_labelled(client)
        state_mod.clear(settings)
        raise DeployError(f"Starting the containers failed: {exc}", hint="Run `pizzactl doctor`.") from None
    log(f"Waiting for {url}/readyz ...")
    try:
        _wait_ready(client, url, record.extra["containers"], timeout)
    except DeployError:
        _remove_labelled(client)
        state_mod.clear(settings)
        raise
    log(f"[green]✓[/] gateway ready at {url}")
    grpc = grpc_address(client, record.extra["containers"])
    return {
        "target": TARGET,
        "url": url,
        "model_version": images.model_version,
        **({"grpc": grpc} if grpc else {}),
        "containers": record.extra["containers"],
        "network": NETWORK,
        "images": images.as_dict(),
        **({"rollout": plan.record()} if plan.trial else {}),
    }


def _run(client, spec: dict[str, Any]):
    spec = dict(spec)
    aliases, network = spec.pop("aliases"), spec.pop("network")
    container = client.containers.create(**{k: v for k, v in spec.items() if k != "detach"}, network=network)
    client.api.disconnect_container_from_network(container.id, network)
    client.api.connect_container_to_network(container.id, network, aliases=aliases)
    container.start()
    return container


def grpc_address(client, names: list[str]) -> str | None:
    """host:port where the model server's gRPC port is published now (Docker picked the port at
    start, and picks again if the container is re-created), or None if no container publishes it."""
    for name in names:
        try:
            bindings = (client.containers.get(name).attrs.get("NetworkSettings") or {}).get("Ports") or {}
        except Exception:  # gone: status says so in `containers`
            continue
        for binding in bindings.get(f"{MODEL_GRPC_PORT}/tcp") or []:
            if binding.get("HostPort"):
                return f"{_client_host(binding.get('HostIp', ''))}:{binding['HostPort']}"
    return None


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _wait_ready(client, url: str, names: list[str], timeout: float) -> None:

    def check() -> None:
        for name in names:
            c = client.containers.get(name)
            if c.status in ("exited", "dead"):
                raise DeployError(
                    f"Container {name} stopped (exit code {c.attrs['State'].get('ExitCode')}); its last log lines:\n"
                    + _logs(c),
                    hint="Fix the error above; `pizzactl build` rebuilds the images.",
                )

    wait_until_ready(
        url,
        timeout,
        check=check,
        details=lambda: " Last log lines:\n" + "\n".join(f"--- {n}\n{_logs(client.containers.get(n))}" for n in names),
        what="the gateway",
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
    containers: dict[str, str] = {}
    grpc = None
    try:
        client = docker_client()
        for name in state.extra.get("containers", []):
            try:
                containers[name] = client.containers.get(name).status
            except Exception:
                containers[name] = "gone"
        grpc = grpc_address(client, state.extra.get("containers", []))
    except DeployError:
        containers = {name: "unknown (docker unreachable)" for name in state.extra.get("containers", [])}
    response = httpclient.get(f"{state.url}/readyz", timeout=3)
    ready = response is not None and response.status_code == 200
    serving = {state.model_version: 1} if ready and state.model_version is not None else {}
    info: dict[str, Any] = {
        "ready": ready,
        "serving": serving,
        **({"grpc": grpc} if grpc else {}),
        "containers": containers,
    }
    trial = rollout.in_flight(state)
    if trial is not None:
        info["rollout"] = {**trial, "available": _available_versions(state) if ready else []}
    return info


def _available_versions(state: DeployState) -> list[int] | None:
    """The versions the model server container reports AVAILABLE (TF Serving's status API), asked
    at its address on the private network; None where the host cannot reach container addresses
    (Docker Desktop runs them in a VM)."""
    try:
        attrs = docker_client().containers.get(MODEL_CONTAINER).attrs
        address = attrs["NetworkSettings"]["Networks"][state.extra.get("network", NETWORK)]["IPAddress"]
    except Exception:
        return None
    body = httpclient.json_or_none(f"http://{address}:{MODEL_PORT}/v1/models/{MODEL_NAME}", timeout=2.0)
    if not isinstance(body, dict):
        return None
    entries = body.get("model_version_status") or []
    return sorted((int(e["version"]) for e in entries if e.get("state") == "AVAILABLE"), reverse=True)


def rollback(settings: Settings, state: DeployState, to: int | None, timeout: float) -> dict[str, Any]:
    """Run the previous release's images again (docker has no rolling update: a short gap)."""
    from dataclasses import replace

    history = list(state.extra.get("history", []))
    matches = [i for i, e in enumerate(history) if to is None or e.get("model_version") == to]
    if not matches:
        return {"message": "There is no earlier version to roll back to."}
    target = history[matches[-1]]
    images = Images(**{k: v for k, v in target.items() if k in Images.__dataclass_fields__})
    recorded = state.extra.get("render")
    if isinstance(recorded, dict):  # what the deploy was made with, not this shell's flags
        settings = settings.replace(**recorded)
    teardown(settings, state)
    result = deploy(settings, timeout, Plan.of_dict(target.get("plan")), images=images)
    final = state_mod.load(settings)
    if final is not None:
        state_mod.save(settings, replace(final, extra={**final.extra, "history": history[: matches[-1]]}))
    return {**result, "rolled_back_from": state.model_version}


def recorded_options(settings: Settings) -> dict[str, Any]:
    """What a rollback must run the containers with again: the rendered pods' options (the API
    keys as digests: a rollback from a shell without the key must not open the gateway), and the
    published port and address."""
    return {**manifests.render_options(settings), "port": settings.port, "host": settings.host}


def teardown(settings: Settings, state: DeployState | None = None) -> dict[str, Any]:
    removed = _remove_labelled(docker_client())
    what = ", ".join(removed) if removed else "nothing (already gone)"
    return {"message": f"Removed {what}.", "removed": removed}


def reconfigure(settings: Settings, previous: DeployState, plan: Plan, timeout: float = 300.0) -> None:
    """A new plan here means new containers, which deploy recreates (seconds of 503s): nothing to take in place."""
    return None
