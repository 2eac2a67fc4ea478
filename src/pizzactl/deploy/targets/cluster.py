"""Any Kubernetes cluster (`--context CTX --registry REG`), and the release logic kind shares.

`release` applies the rendered manifests and waits for the rollout as `kubectl rollout status`
means it. A new version that never gets ready fails the deploy with why, and — the
Deployments roll with maxUnavailable 0 — the previous version keeps serving; the state file
keeps saying so, and `rollback` abandons the stuck rollout. Teardown removes only what
pizzactl created: the namespace if pizzactl made it, else only the objects it applied.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pizzactl.config import MODEL_GRPC_PORT, Settings
from pizzactl.console import log
from pizzactl.deploy import manifests, rollout
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.rollout import Plan
from pizzactl.deploy.state import DeployState
from pizzactl.errors import DeployError, UsageError
from pizzactl.kube import capacity, k8s, training
from pizzactl.kube.images import Images, build
from pizzactl.kube.shipped import GATEWAY_NODE_PORT
from pizzactl.serving.processes import poll_ready

TARGET = "cluster"
DEPLOYMENTS = ["pizzactl-model", "pizzactl-gateway"]
HISTORY = 10  # earlier releases kept for `rollback`
METRICS_HINT = (
    "install metrics-server (`kubectl apply -f https://github.com/kubernetes-sigs/metrics-server/releases/"
    "latest/download/components.yaml`; on kind add `--kubelet-insecure-tls` to its args)"
)


def render(settings: Settings, images: Images, plan: Plan | None = None) -> list[dict[str, Any]]:
    return manifests.render(
        settings,
        images.gateway_image,
        images.model_image,
        model_version=images.model_version,
        model_server=images.model_server,
        plan=plan,
    )


def release_record(images: Images, plan: Plan | None) -> dict[str, Any]:
    """What a release records of itself (`extra["images"]`, and each `history` entry): its images,
    and the plan they were built for (a pinned image holds that plan's model config, so a
    rollback renders the gateway's settings from it, never from the flags of the day)."""
    plan = plan or Plan()
    return {**images.as_dict(), **({"plan": plan.as_dict()} if plan.pinned else {})}


def rollout_extra(plan: Plan | None) -> dict[str, Any]:
    """The deploy record's trial keys, as the local target writes them: `rollout` while a candidate
    is on trial, `pinned_version` for one pinned version; neither for the newest version."""
    plan = plan or Plan()
    if plan.trial:
        return {"rollout": plan.record()}
    return {"pinned_version": plan.stable} if plan.pinned else {}


ROLLOUT_KEYS = ("rollout", "pinned_version")  # what a release replaces: a finished trial leaves no trace


def _images_of(entry: dict[str, Any]) -> Images:
    fields = {k: v for k, v in entry.items() if k in Images.__dataclass_fields__}
    return Images(**fields)


def release(
    settings: Settings,
    images: Images,
    timeout: float,
    *,
    record: DeployState | None = None,
    as_recorded: bool = False,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Apply `images` to the cluster of `record` (default: settings.context) and wait for them.

    The state file records the release only once it serves; until then it names the version
    that serves (the previous one) and, on failure, the one that did not make it. It also
    records the options the objects were rendered with (`manifests.RENDER_OPTIONS`);
    `as_recorded` (rollback) renders with those instead of the flags, so only the images change.
    `plan` (deploy/rollout.py): the versions the model image holds and the gateway's settings;
    the model Deployment rolls to the new image while the old pods serve.
    """
    record = record or state_mod.load(settings) or _new_record(settings)
    api = k8s.connect(record.extra["context"])
    namespace = record.extra.get("namespace", settings.namespace)
    recorded = record.extra.get("render")
    options = recorded if as_recorded and isinstance(recorded, dict) else manifests.render_options(settings)
    settings = settings.replace(namespace=namespace, **options)
    if as_recorded and record.model_dir:
        settings = settings.replace(models_dir=Path(record.model_dir))
    k8s.wait_namespace_gone(api, namespace, timeout)
    if "created_namespace" not in record.extra:  # first release here: was the namespace ours?
        phase = k8s.namespace_phase(api, namespace)
        record.extra["created_namespace"] = phase is None
        if phase == k8s.FORBIDDEN:
            log(
                f"[yellow]This identity may not read Namespace objects: pizzactl uses namespace {namespace} as "
                "it is (it must exist) and skips applying the Namespace.[/]"
            )
    if settings.pull_secret and not (
        k8s.namespace_phase(api, namespace) and k8s.secret_exists(api, namespace, settings.pull_secret)
    ):
        raise DeployError(
            f"The image pull secret {settings.pull_secret!r} does not exist in namespace {namespace}.",
            hint=f"Create it first: `kubectl create namespace {namespace}; kubectl create secret docker-registry "
            f"{settings.pull_secret} -n {namespace} --docker-server=REGISTRY --docker-username=U --docker-password=P`.",
        )
    state_mod.save(settings, record)  # before applying: an interrupted deploy can be torn down
    docs = render(settings, images, plan)
    if plan is not None and plan.pinned:
        log(f"{plan.mode.capitalize() if plan.trial else 'Pinned'}: {plan.describe()}.")
    if not record.extra["created_namespace"]:  # not ours: no labels, no Pod Security level of ours on it
        docs = manifests.without_namespace(docs)
    stale = k8s.deadline_marks(api, namespace, manifests.deployments(docs))  # the last rollout's, if any
    log(f"Applying {len(docs)} objects to {record.extra['context']} (namespace {namespace}) ...")
    k8s.apply(api, docs)
    try:
        states = k8s.wait_rollout(api, namespace, manifests.deployments(docs), timeout, stale=stale)
    except DeployError as exc:
        record.extra["failed"] = {**images.as_dict(), "reason": exc.message.splitlines()[0]}
        state_mod.save(settings, record)
        serving = record.model_version
        if serving is not None and serving != images.model_version:
            exc.message += f"\nThe previous model version {serving} keeps serving (the rollout never removes it first)."
            exc.hint = f"{exc.hint} `pizzactl rollback` abandons version {images.model_version}."
        raise
    previous = record.extra.get("images")
    history = list(record.extra.get("history", []))
    if previous and previous.get("model_image") != images.model_image:
        history = [*history, previous][-HISTORY:]
    kept = {k: v for k, v in record.extra.items() if k not in ROLLOUT_KEYS}
    extra = {**kept, "images": release_record(images, plan), "history": history, "failed": None}
    record = replace(
        record,
        model_version=images.model_version,
        model_dir=str(settings.models_dir),
        extra={**extra, "render": options, **rollout_extra(plan)},
    )
    state_mod.save(settings, record)
    autoscaling = _autoscaling(api, states, namespace)
    return {
        "target": record.target,
        "url": record.url,
        "model_version": images.model_version,
        **({"rollout": record.extra["rollout"]} if record.extra.get("rollout") else {}),
        "serving": k8s.served_versions(api, namespace),
        "context": record.extra["context"],
        "namespace": namespace,
        "images": images.as_dict(),
        "deployments": {name: s.as_dict() for name, s in states.items()},
        "autoscaling": autoscaling,
    }


def _autoscaling(api, states: dict[str, k8s.RolloutState], namespace: str) -> dict[str, Any]:
    """Whether the HPAs can scale on CPU (metrics.k8s.io listed, its APIService Available, no HPA
    reporting ScalingActive=False); say what happens when they cannot."""
    metrics = k8s.metrics_api(api)
    hpa_problems = k8s.hpa_scaling_problems(api, namespace) if metrics.listed else []
    if metrics.available and hpa_problems:
        metrics = k8s.MetricsApi(True, False, "ScalingActive=False", "; ".join(hpa_problems))
    has_metrics = metrics.available
    replicas = ", ".join(f"{name.removeprefix('pizzactl-')} {s.desired}" for name, s in states.items())
    if has_metrics:
        message = f"Autoscaling on CPU is active (replicas now: {replicas})."
    elif metrics.listed:
        message = (
            f"metrics-server is installed but not working ({_metrics_why(metrics)}), so the HPAs keep their "
            f"minReplicas ({replicas}) and never "
            f"scale on CPU. On kind, metrics-server needs `--kubelet-insecure-tls` in its args "
            "(`kubectl patch deployment metrics-server -n kube-system --type=json -p "
            """'[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'`); """
            f"see why with `kubectl describe apiservice {k8s.METRICS_APISERVICE}` and "
            "`kubectl logs -n kube-system deploy/metrics-server`."
        )
        log(f"[yellow]{message}[/]")
    else:
        message = (
            f"This cluster has no metrics-server, so the HPAs keep their minReplicas ({replicas}) and never "
            f"scale on CPU. To autoscale, {METRICS_HINT}."
        )
        log(f"[yellow]{message}[/]")
    state = "Available" if has_metrics else (metrics.reason or "NotInstalled")
    return {"metrics_server": has_metrics, "metrics_api": state, "message": message}


def _metrics_why(metrics: k8s.MetricsApi) -> str:
    if metrics.reason == "ScalingActive=False":
        return f"the HPAs report ScalingActive=False: {metrics.message}"
    return f"APIService {k8s.METRICS_APISERVICE} is not Available: {metrics.reason}: {metrics.message}"


def _new_record(settings: Settings) -> DeployState:
    context = settings.context
    return DeployState(
        target=TARGET,
        url="",
        ports={"node_port": GATEWAY_NODE_PORT},
        extra={"context": context, "cluster": None, "namespace": settings.namespace},
    )


# --- the target ---------------------------------------------------------------------------------


def preflight(settings: Settings, previous: DeployState | None) -> None:
    """Nothing to check before the old deployment goes: a cluster rolls the new one out in place."""


def deploy(settings: Settings, timeout: float = 300.0, plan: Plan | None = None) -> dict[str, Any]:
    """Build for the cluster's architecture, push to --registry, release, find the gateway's address."""

    if not settings.registry:
        raise UsageError(
            "--context needs --registry: the cluster must pull the images from somewhere.",
            hint="Pass --registry REGISTRY (e.g. ghcr.io/you) and log in with `docker login` first.",
        )
    api = k8s.connect(settings.context)
    arches = k8s.node_architectures_if_allowed(api)
    if arches is None:
        log(
            "[yellow]This identity may not list the cluster's nodes, so their CPU architecture is unknown: "
            "building for the default platform (pass --platform linux/arm64 for arm64 nodes).[/]"
        )
    elif settings.platform is None and len(arches) == 1:
        settings = settings.replace(platform=f"linux/{arches.pop()}")
    capacity.check_deployment(api, manifests.render(settings, "pizzactl-gateway", "pizzactl-model"))
    images = build(settings, push=True, pinned=plan.in_image() if plan is not None else None)
    previous = state_mod.load(settings)
    record = previous if previous is not None and previous.target == TARGET else _new_record(settings)
    result = release(settings, images, timeout, record=record, plan=plan)
    result["url"] = _remote_url(api, settings, state_mod.load(settings) or record)
    return result


def _remote_url(api, settings: Settings, record: DeployState, wait: float = 15.0) -> str:
    """The gateway's address (LoadBalancer, else node IP + NodePort), recorded for `status` and
    `predict` when it answers from here; "" (with what to do) when not."""

    context = record.extra["context"]
    try:
        url = k8s.gateway_url(api, settings.namespace) or ""
        unknown = ""
    except DeployError as exc:  # e.g. nodes may not be listed: the rollout succeeded all the same
        url, unknown = "", exc.message
    if url and poll_ready(url, wait, interval=1.0) is None:
        state_mod.save(settings, replace(record, url=url))
        log(f"[green]✓[/] gateway ready at {url}")
        return url
    where = f"{url} does not answer from this machine" if url else "the cluster reports no external address for it"
    if unknown:
        where = f"its address could not be worked out ({unknown})"
    log(
        f"[yellow]The gateway is running in {context}, but {where}.[/] Reach it with "
        f"`kubectl port-forward -n {settings.namespace} svc/pizzactl-gateway {settings.port}:80` and "
        f"`pizzactl predict --endpoint http://127.0.0.1:{settings.port} PHOTO`."
    )
    return ""


def status(settings: Settings, state: DeployState) -> dict[str, Any]:
    context = state.extra.get("context")
    namespace = state.extra.get("namespace", settings.namespace)
    try:
        api = k8s.connect(context)
        deployments = k8s.deployments_status(api, namespace, DEPLOYMENTS)
        serving = k8s.served_versions(api, namespace)
    except DeployError as exc:
        return {"ready": False, "context": context, "error": exc.message}
    info: dict[str, Any] = {
        "ready": bool(serving) and all(d.get("done") or d.get("available") for d in deployments.values()),
        "serving": serving,
        "context": context,
        "namespace": namespace,
        # in the cluster only (a ClusterIP Service), e.g. for kubectl port-forward svc/pizzactl-model 8500
        "grpc": f"pizzactl-model.{namespace}.svc:{MODEL_GRPC_PORT}",
        "deployments": deployments,
    }
    trial = rollout.in_flight(state)
    if trial is not None:  # the versions the Ready model pods hold (Ready: their model server has stable AVAILABLE)
        info["rollout"] = {**trial, "available": _held_versions(api, namespace)}
    if state.extra.get("failed"):
        info["failed_rollout"] = (
            f"version {state.extra['failed'].get('model_version')}: {state.extra['failed'].get('reason')}"
        )
    return info


def _held_versions(api, namespace: str) -> list[int]:
    """The model versions of the Ready model server pods, highest first (their annotation)."""
    try:
        held = k8s.held_versions(api, namespace)
    except DeployError:
        return []
    return sorted(held, reverse=True)


def teardown(settings: Settings, state: DeployState) -> dict[str, Any]:
    """Delete the namespace if pizzactl created it, else only the objects pizzactl applied."""
    context = state.extra.get("context")
    namespace = state.extra.get("namespace", settings.namespace)
    api = k8s.connect(context)
    if state.extra.get("created_namespace") is True:  # unknown (an interrupted first deploy): not ours
        deleted = k8s.delete_namespace(api, namespace)
        what = f"Deleted namespace {namespace} in {context}" if deleted else f"Namespace {namespace} was already gone"
        return {"message": what + "."}
    docs = manifests.render(settings.replace(namespace=namespace), "g", "m")
    removed = k8s.delete_objects(api, docs)
    released = "" if _training_made(settings, context, namespace) else _release_namespace(api, namespace)
    return {
        "message": f"Deleted {len(removed)} objects in {context}; kept namespace {namespace} "
        f"(pizzactl did not create it){released}.",
        "deleted": removed,
    }


def _release_namespace(api, namespace: str) -> str:
    """Give up what pizzactl ever applied to a namespace it did not create (labels, among them
    the restricted Pod Security level, that earlier pizzactl versions applied): under server-side
    apply, applying the bare Namespace as the same field manager removes the fields it owned
    and no other manager owns. Skipped (said so) when Namespace objects may not be patched."""
    if k8s.namespace_phase(api, namespace) != "Active":
        return ""  # gone, or not ours to read: never create it by applying
    try:
        k8s.apply(api, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}], quiet=True)
    except DeployError as exc:
        return f"; could not release the labels pizzactl may have put on it ({exc.message})"
    return ""


def _training_made(settings: Settings, context: str | None, namespace: str) -> bool:
    """Whether `train --on` created this namespace (its teardown deletes it, labels and all)."""
    st = training.load_state(settings) or {}
    return bool(st.get("created_namespace")) and st.get("context") == context and st.get("namespace") == namespace


def rollback_target(state: DeployState, to: int | None) -> tuple[dict[str, Any], list, Any] | None:
    """The release a rollback goes back to, the history kept before it, and the version it leaves:
    the one serving when the last rollout failed, else the latest earlier release (of version `to`)."""
    history = list(state.extra.get("history", []))
    if state.extra.get("failed") and to in (None, state.model_version) and state.extra.get("images"):
        return state.extra["images"], history, state.extra["failed"].get("model_version")
    matches = [i for i, e in enumerate(history) if to is None or e.get("model_version") == to]
    if not matches:
        return None
    return history[matches[-1]], history[: matches[-1]], state.model_version


def rollback(settings: Settings, state: DeployState, to: int | None, timeout: float) -> dict[str, Any]:
    """Put the previous model version back (`rollback_target` says which)."""
    chosen = rollback_target(state, to)
    if chosen is None:
        what = f"version {to}" if to is not None else "an earlier version"
        return {"message": f"There is no earlier version to roll back to ({what} was never released here)."}
    target, keep, from_version = chosen
    if target is state.extra.get("images"):
        state = replace(state, extra={**state.extra, "images": None})  # re-apply what serves
    record = replace(state, extra={**state.extra, "history": keep})
    log(f"Rolling back from model version {from_version} to {target.get('model_version')} ...")
    plan = Plan.of_dict(target.get("plan"))  # the model config in that image goes with its gateway settings
    result = release(settings, _images_of(target), timeout, record=record, as_recorded=True, plan=plan)
    final = state_mod.load(settings)
    if final is not None:  # what we rolled back from is not a version to roll back to
        state_mod.save(settings, replace(final, extra={**final.extra, "history": keep}))
    return {**result, "rolled_back_from": from_version}


def reconfigure(settings: Settings, previous: DeployState, plan: Plan, timeout: float = 300.0) -> None:
    """A new plan here means new pods, which deploy rolls out: nothing to take in place."""
    return None
