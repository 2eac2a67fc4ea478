"""Deploy, inspect, roll back and tear down the model server + gateway, on any target.

`deploy(settings, timeout)` (and `dry_run(settings)`, which touches nothing) dispatch on the target (`--target`; `--context` makes it
`cluster`); `status`, `rollback` and `teardown` dispatch on the target recorded in the shared
state file (`pizzactl.deploy.state`), so they need no flags. Each target module
(`pizzactl.deploy.targets.*`) is a `targets.Target` (preflight, deploy, status, teardown,
rollback), found through `targets.target(name)`; `deploy` and `status` return typed results
(`deploy.results`: `Deployment`, `Status`).

A target writes the state file as soon as there is something to clean up, before waiting for
readiness, so an interrupted deploy can still be torn down. Deploying again replaces what runs:
a target first gets the chance to take a new plan alone in place (`reconfigure`: local does,
without a restart); else the dispatcher tears the old deployment down first when the target
changes or the target is local/docker; kind and cluster roll the new images out in place (the
old ones serve meanwhile).
`status` and `teardown` also cover what remote training left (`train --on`, `kube.training`).
"""

from __future__ import annotations

from typing import Any

from pizzactl.console import log
from pizzactl.deploy import decide, rollout, targets
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.results import Deployment, Status
from pizzactl.deploy.rollout import Plan
from pizzactl.errors import NotDeployedError, UsageError, require_extra
from pizzactl.kube import training as kube_training
from pizzactl.kube.docker_daemon import planned_platform
from pizzactl.kube.images import plan_images
from pizzactl.model.store import latest_version_dir

TARGETS = ("local", "docker", "kind")


def target_of(settings) -> str:
    """The target a deploy goes to: `cluster` whenever --context names an existing cluster."""
    return "cluster" if settings.target == "kind" and settings.context else settings.target


def deploy(settings, timeout: float = 300.0, plan: Plan | None = None) -> Deployment:
    """Deploy the latest exported model to the target; replaces what was deployed before.

    `plan` (deploy/rollout.py) says which versions serve and how: by default from the settings
    (`--canary P`, `--shadow`: the newest version on trial beside stable; else the newest for all)."""
    target = target_of(settings)
    mod = targets.target(target)

    require_extra("serve" if target == "local" else "deploy")  # before anything is stopped
    newest = latest_version_dir(settings.models_dir)  # no model: fail before stopping what runs now
    previous = state_mod.load(settings)
    plan = plan or rollout.plan_for(settings, previous)
    rollout.warn_if_aborted(previous, plan.candidate if plan.trial else plan.stable or int(newest.name))
    if previous is not None and previous.target == "kind" and target != "kind":
        from pizzactl.deploy.targets import kind

        kind.refuse_while_training(settings, previous, target)  # the switch would delete its cluster
    mod.preflight(settings, previous)  # e.g. the port is taken by something else: fail before stopping what runs now
    _say_what_replaces_a_trial(previous, plan)
    _say_the_model_protocol(settings, target)
    result = mod.reconfigure(settings, previous, plan, timeout) if previous and previous.target == target else None
    if result is None:  # not a change of plan alone, or the target cannot take one in place
        if previous is not None and (previous.target != target or target in ("local", "docker")):
            teardown_deployment(settings)
        result = mod.deploy(settings, timeout=timeout, plan=plan)
    if previous is not None and previous.target == target == "docker":
        _carry_history(settings, previous)
    rollout.keep_history(settings, rollout.history(previous))
    return Deployment.of(result)


def _say_what_replaces_a_trial(previous: state_mod.DeployState | None, plan: Plan) -> None:
    """A deploy while a canary or shadow runs ends that trial: say so, and what comes instead."""
    trial = rollout.in_flight(previous)
    if trial is None:
        return
    was = rollout.Plan.of_record(previous)
    if was == plan:
        log(f"The {was.mode} stays as it is: {was.describe()}.")
    else:
        log(f"A {was.mode} is in flight ({was.describe()}); this deploy ends it: {plan.describe()}.")


def _say_the_model_protocol(settings, target: str) -> None:
    """model_protocol grpc is honoured by the local target and `serve`; the gateway image has no
    grpcio (REST and gRPC measured alike: docs/serve.md), so say it rather than ignore it."""
    if settings.model_protocol == "grpc" and target != "local":
        log(
            f"model_protocol grpc applies to --target local and `pizzactl serve`; on {target} the gateway "
            "calls the model server over REST (its image has no grpcio). Port 8500 still serves gRPC clients."
        )


def dry_run(settings) -> str:
    """What `deploy` would do, touching nothing: the rendered manifests (kind, cluster), the commands (local)."""
    target = target_of(settings)
    if target == "local":
        from pizzactl.deploy.targets import local

        return local.describe(settings)
    if target == "docker":
        raise UsageError("--dry-run renders Kubernetes manifests.", hint="Use it with --target kind.")
    _say_the_model_protocol(settings, target)
    from pizzactl.deploy import manifests
    from pizzactl.deploy.targets import cluster

    plan = rollout.plan_for(settings, state_mod.load(settings))
    images = plan_images(
        settings,
        platform=planned_platform(settings, settings.context if target == "cluster" else None),
        pinned=plan.in_image(),
    )
    return manifests.model_config_comment(plan) + manifests.to_yaml(cluster.render(settings, images, plan))


def _carry_history(settings, previous: state_mod.DeployState) -> None:
    """Targets that restart from scratch (docker) keep the releases `rollback` can go back to."""
    from dataclasses import replace

    current = state_mod.load(settings)
    before = previous.extra.get("images")
    if current is None or not before:
        return
    history = list(previous.extra.get("history", []))
    if before.get("model_image") != (current.extra.get("images") or {}).get("model_image"):
        history.append(before)
    state_mod.save(settings, replace(current, extra={**current.extra, "history": history[-10:]}))


def status(settings) -> Status:
    """What is deployed, where, which model version serves and whether it answers; and the last
    training Job (phase, epoch, last log line) when one was started on a cluster."""
    st = state_mod.load(settings)
    training = kube_training.training_status(settings)
    if st is None:
        return Status.nothing("Nothing deployed.", str(state_mod.state_path(settings)), training or None)
    info = targets.target(st.target).status(settings, st)
    decisions = rollout.history(st)
    if decisions:  # the last promote/abort, so a person sees why this version serves
        last = decisions[-1]
        reasons = "; ".join((last.get("evidence") or {}).get("reasons") or [])
        info = {
            **info,
            "last_decision": f"{last['action']} v{last['candidate']} ({last['decided_by']}, {last['at']}): {reasons}",
        }
    if rollout.in_flight(st) is not None:  # the live comparison, where the gateway reports one
        summary = rollout.read_summary(st.url, settings.api_key)
        verdict = decide.decide(summary, decide.Criteria.of(settings)) if summary else None
        info = {**info, "live": summary, "auto": verdict.as_dict() if verdict else None}
    return Status.of(st, info, training or None)


def rollback(settings, to: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Put the previous model version back where it is deployed (or version `to`)."""
    st = state_mod.load(settings)
    if st is None:
        raise NotDeployedError(
            "Nothing is deployed, so there is nothing to roll back.", hint="Deploy with `pizzactl deploy`."
        )
    result = targets.target(st.target).rollback(settings, st, to, timeout)
    rollout.keep_history(settings, rollout.history(st))
    return {"target": st.target, **result}


def teardown(settings, keep_cluster: bool = False) -> dict[str, Any]:
    """Stop and remove what deploy started and what training left (on a cluster: its Jobs,
    Secret and volume; on Docker: the trainer's cache volume); a second call only says there is
    nothing to do."""
    result = teardown_deployment(settings, keep_cluster)
    left = state_mod.load(settings)  # a deployment still there keeps the namespace and cluster training made
    deployment = left.extra if left is not None else None
    cleaned = (kube_training.teardown(settings, keep_cluster, deployment), kube_training.docker_teardown(settings))
    parts = [p for p in cleaned if p]
    if not parts:
        return result
    messages = ([result["message"]] if result["torn_down"] else []) + [p["message"] for p in parts]
    return {**result, "torn_down": True, "training": parts, "message": " ".join(messages)}


def teardown_deployment(settings, keep_cluster: bool = False) -> dict[str, Any]:
    """Stop and remove what deploy started (only that)."""
    st = state_mod.load(settings)
    if st is None:
        return {"torn_down": False, "message": "Nothing deployed; nothing to tear down."}
    if st.target == "kind":  # the one target with a choice: keep the cluster, delete the namespace
        from pizzactl.deploy.targets import kind

        result = kind.teardown(settings, st, keep_cluster=keep_cluster)
    else:
        result = targets.target(st.target).teardown(settings, st)
    state_mod.clear(settings)
    result = dict(result or {})
    result.setdefault("message", f"Tore down the {st.target} deployment at {st.url}.")
    return {"torn_down": True, "target": st.target, **result}


__all__ = ["TARGETS", "deploy", "dry_run", "rollback", "status", "teardown", "teardown_deployment"]
