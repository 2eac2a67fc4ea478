"""`pizzactl train --on kind|CONTEXT`: training as a Kubernetes Job, and its result brought home.

Each step is safe to interrupt (`train.json` records what exists, `teardown` removes it):
1. the cluster: kind (created as `deploy` creates it, port mapping included) or a kube context;
2. the trainer image: built, then `kind load`ed, or pushed to --registry for the nodes' platform;
3. the namespace, the volume (PVC) and, only when the Job downloads the dataset itself, a Secret
   with the Kaggle credentials from this machine's usual places;
4. the dataset (--data): uploaded once per content hash (`data/<hash>`, mounted read-only);
5. the Job, followed (its log live, each failed attempt explained) until Complete or Failed;
6. its outbox copied back and published locally (`remote.collect`): the version by atomic rename;
7. where pizzactl already deploys to that cluster, the new version rolled out as `deploy` does it.

Why copy back and roll out rather than have the model servers read the volume: the cluster's
model servers already take a new version the tested way (a new image, a rolling update gated
on readiness with maxUnavailable 0, `rollback`); ReadWriteOnce volumes (kind's and most clouds'
default class) cannot be mounted by model servers on several nodes; and the runs must come
back to `runs/` anyway, for `runs list`, `evaluate` and `export`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.console import log
from pizzactl.deploy import capacity, jobs
from pizzactl.errors import UsageError
from pizzactl.train.remote import collect, container_env, local_weights_file, outbox_dir


@dataclass(frozen=True)
class Where:
    """The cluster a run goes to: its kube context, and the kind cluster's name if it is one."""

    context: str
    cluster: str | None = None


def where(settings, on: str) -> Where:
    if on == "kind":
        from pizzactl.deploy.targets.kind import kube_context

        return Where(kube_context(settings.cluster), settings.cluster)
    return Where(on)


def train(
    settings,
    on: str,
    *,
    attach: bool = False,
    timeout: float = 600.0,
    deploy: bool | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run (or with `attach`, rejoin) a training Job on the cluster; the local train result."""
    from pizzactl.deploy import job_watch

    place = where(settings, on)
    if attach:
        api, plan, data_root = _rejoin(settings, place)
    else:
        api, plan, data_root = _start(settings, place, timeout)
    try:
        watched = job_watch.follow(api, plan.namespace, plan.name, start_timeout=timeout)
    except job_watch.JobCannotStart:
        _stop(api, plan, "it cannot start")
        raise
    except KeyboardInterrupt:
        _stop(api, plan, "interrupted")
        raise
    result = _bring_home(settings, api, plan, data_root, timeout, {"on": on, "context": place.context})
    jobs.save_state(settings, {**(jobs.load_state(settings) or {}), "collected": True})  # nothing left to lose
    result["job"] = {"name": plan.name, **watched}
    log(f"[green]✓[/] version {result['version']} in {result['model_dir']} (Job {plan.name})")
    if _should_deploy(settings, place, deploy):
        result["deployed"] = _roll_out(settings, place)
    return result


def dry_run(settings, on: str) -> list[dict[str, Any]]:
    """Every object `train --on` would apply (a Secret's values redacted), touching nothing."""
    from pizzactl.deploy.docker_daemon import planned_platform
    from pizzactl.deploy.images import plan_trainer

    platform = planned_platform(settings, None if on == "kind" else on)
    image = plan_trainer(settings, gpu=settings.gpus > 0, platform=platform).image
    plan, _, _ = _plan(settings, image)
    return [_namespace(settings), *jobs.redacted(jobs.render(plan)[:-1]), jobs.files_pod(plan), jobs.render_job(plan)]


# --- starting a run ---------------------------------------------------------------------------------


def _plan(settings, image: str):
    """(JobPlan, the dataset's local files or None, its local root or None)."""
    if local_weights_file(settings) is not None:
        raise UsageError(
            "--weights PATH names a file on this machine, which a cluster cannot read.",
            hint="On a cluster use --weights imagenet or none (or train --on docker, which mounts the file).",
        )
    name = "pizzactl-train-" + _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    if settings.data_dir is not None:
        from pizzactl.data.dataset import load_dataset

        dataset = load_dataset(Path(settings.data_dir).expanduser().resolve())
        env = container_env(settings, data_dir=jobs.DATA_MOUNT, models_dir="", runs_dir="")
        files = [(r.path, r.path.relative_to(dataset.root).as_posix()) for r in dataset.records]
        return _with_outputs(settings, name, image, env, data_hash=dataset.data_hash), files, dataset.root
    env = container_env(settings, data_dir=None, models_dir="", runs_dir="")
    return _with_outputs(settings, name, image, env, kaggle=kaggle_credentials()), None, None


def _with_outputs(settings, name: str, image: str, env: dict[str, str], **kw: Any) -> jobs.JobPlan:
    env["PIZZACTL_MODELS_DIR"] = f"{jobs.output_dir(name)}/models"
    env["PIZZACTL_RUNS_DIR"] = f"{jobs.output_dir(name)}/runs"
    return jobs.plan_from_settings(settings, name=name, image=image, env=env, **kw)


def _start(settings, place: Where, timeout: float):
    from pizzactl.deploy import k8s, k8s_files

    api = _connect(settings, place)
    image = _trainer_image(settings, place, api)
    plan, files, data_root = _plan(settings, image)
    namespace = plan.namespace
    k8s.wait_namespace_gone(api, namespace, timeout)
    previous = jobs.load_state(settings) or {}
    same = previous.get("context") == place.context and previous.get("namespace") == namespace
    created = bool(previous.get("created_namespace")) if same else k8s.namespace_phase(api, namespace) is None
    state = {"context": place.context, "cluster": place.cluster, "namespace": namespace, "created_namespace": created}
    jobs.save_state(settings, {**state, "job": previous.get("job") if same else None})
    namespace_doc = [_namespace(settings)] if created else []  # a namespace not ours is left as it is
    k8s.apply(api, [*namespace_doc, *jobs.render(plan)[:-1]])
    if files is not None:
        target = jobs.data_dir(plan.data_hash or "")
        with k8s_files.files_pod(api, jobs.files_pod(plan), timeout) as pod:
            if k8s_files.exists(api, namespace, pod, "files", target):
                log(f"The dataset ({len(files)} images) is already on the training volume.")
            else:
                k8s_files.upload(api, namespace, pod, "files", files, target)
    k8s.apply(api, [jobs.render_job(plan)])
    jobs.save_state(settings, {**state, "job": plan.name, "image": image, "data_root": str(data_root or "")})
    log(f"Started Job {plan.name} in {place.context} (namespace {namespace}); following its log ...")
    return api, plan, data_root


def _rejoin(settings, place: Where):
    """`--attach`: follow the recorded Job again (after Ctrl-C of a lost connection) and collect it."""
    from pizzactl.deploy import k8s

    st = jobs.load_state(settings)
    if not st or not st.get("job") or st.get("context") != place.context:
        raise UsageError(
            f"No training Job recorded for {place.context}.", hint="Start one with `pizzactl train --on ...`."
        )
    api = k8s.connect(place.context)
    plan = jobs.JobPlan(name=st["job"], namespace=st["namespace"], image=st.get("image", ""), env={})
    data_root = Path(st["data_root"]) if st.get("data_root") else None
    log(f"Following Job {plan.name} in {place.context} ...")
    return api, plan, data_root


def _connect(settings, place: Where):
    from pizzactl.deploy import k8s

    if place.cluster:
        from pizzactl.deploy.targets import kind

        kind.ensure_training_cluster(settings)  # any port it maps: training uses none
    return k8s.connect(place.context)


def _trainer_image(settings, place: Where, api) -> str:
    from pizzactl.deploy import k8s
    from pizzactl.deploy.images import build_trainer

    gpu = settings.gpus > 0
    if place.cluster:
        from pizzactl.deploy.targets import kind

        capacity.check_training(api, settings)  # before building a multi-GB image for a pod that cannot run
        trainer = build_trainer(settings.replace(registry=None), gpu=gpu)
        kind.load_images(place.cluster, [trainer.image], settings, trainer.platform)
        return trainer.image
    if not settings.registry:
        raise UsageError(
            f"--on {place.context} needs --registry: the cluster's nodes pull the trainer image from there.",
            hint="Pass --registry REGISTRY (e.g. ghcr.io/you), after `docker login`.",
        )
    capacity.check_training(api, settings)
    arches = k8s.node_architectures_if_allowed(api) or set()  # None: nodes may not be listed
    if settings.platform is None and len(arches) == 1:
        settings = settings.replace(platform=f"linux/{arches.pop()}")
    return build_trainer(settings, gpu=gpu, push=True).image


def _namespace(settings) -> dict[str, Any]:
    from pizzactl.deploy import manifests

    doc = next(d for d in manifests.load_documents() if d["kind"] == "Namespace")
    doc["metadata"]["name"] = settings.namespace
    return doc


def kaggle_credentials(environ: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, str] | None:
    """The Secret's data for a Job that downloads the dataset: the credentials `pizzactl data download`
    would use here (Kaggle's lookup order), as the variables the kaggle client reads; None if
    there are none (the Job then downloads anonymously, as kagglehub allows for public datasets)."""
    from pizzactl.data.download import find_credentials

    environ = os.environ if environ is None else environ
    where_ = find_credentials(environ, home)
    if where_ is None:
        return None
    if where_ == "KAGGLE_API_TOKEN":
        return {"KAGGLE_API_TOKEN": environ["KAGGLE_API_TOKEN"]}
    if where_ == "KAGGLE_USERNAME/KAGGLE_KEY":
        return {"KAGGLE_USERNAME": environ["KAGGLE_USERNAME"], "KAGGLE_KEY": environ["KAGGLE_KEY"]}
    path = Path(where_)
    if path.name.startswith("access_token"):
        return {"KAGGLE_API_TOKEN": path.read_text().strip()}
    if path.name == "kaggle.json":
        config = json.loads(path.read_text())
        return {"KAGGLE_USERNAME": str(config["username"]), "KAGGLE_KEY": str(config["key"])}
    log(f"[yellow]{path} is a login tied to this machine; the Job downloads the dataset anonymously.[/]")
    return None


# --- ending a run ----------------------------------------------------------------------------------


def _stop(api, plan: jobs.JobPlan, why: str) -> None:
    from kubernetes import client

    from pizzactl.deploy import k8s

    log(f"Stopping Job {plan.name} ({why}) ...")
    delete = client.BatchV1Api(api).delete_namespaced_job
    k8s.call_api(f"Deleting job {plan.name}", delete, plan.name, plan.namespace, propagation_policy="Background")


def _bring_home(
    settings, api, plan: jobs.JobPlan, data_root: Path | None, timeout: float, where_: dict
) -> dict[str, Any]:
    """Copy the Job's outbox here and publish it; only then delete it from the volume (so a
    failed copy can be collected again with --attach)."""
    from pizzactl.deploy import k8s_files

    source = jobs.output_dir(plan.name)
    outbox = outbox_dir(settings, plan.name)
    try:
        with k8s_files.files_pod(api, jobs.files_pod(plan), timeout) as pod:
            k8s_files.download(api, plan.namespace, pod, "files", source, outbox)
            result = collect(
                settings,
                outbox,
                container={"models": f"{source}/models", "runs": f"{source}/runs", "data": jobs.DATA_MOUNT},
                data_dir=data_root,
                trained_on={**where_, "namespace": plan.namespace, "job": plan.name, "image": plan.image},
            )
            k8s_files.remove(api, plan.namespace, pod, "files", source)
    finally:
        shutil.rmtree(outbox, ignore_errors=True)
    return result


def _should_deploy(settings, place: Where, deploy: bool | None) -> bool:
    if deploy is not None:
        return deploy
    from pizzactl.deploy import state as state_mod

    deployed = state_mod.load(settings)
    return (
        deployed is not None
        and deployed.target in ("kind", "cluster")
        and deployed.extra.get("context") == place.context
    )


def _roll_out(settings, place: Where) -> Mapping[str, Any]:
    """The new version onto the cluster as `pizzactl deploy` rolls it out (old pods serve until it
    is ready), with the model server and port of the deployment that is there."""
    from pizzactl.deploy import deploy
    from pizzactl.deploy import state as state_mod

    deployed = state_mod.load(settings)
    if deployed is not None and deployed.extra.get("context") == place.context:
        server = (deployed.extra.get("images") or {}).get("model_server") or settings.model_server
        settings = settings.replace(model_server=server, port=deployed.ports.get("gateway", settings.port))
        # the options the deployment was rendered with (pull secret, gateway options), not this
        # command's flags: under server-side apply a field left out is deleted
        settings = settings.replace(**(deployed.extra.get("render") or {}))
    log("Rolling the new version out where pizzactl deploys ...")
    if place.cluster:
        return deploy(settings.replace(target="kind", context=None, cluster=place.cluster))
    return deploy(settings.replace(target="kind", context=place.context))
