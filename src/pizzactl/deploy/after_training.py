"""After `train --on kind|CONTEXT`: roll the new version out where pizzactl already deploys.

Remote training returns the new version and rolls nothing out; the `train` command then asks
here. By default the version goes out only where pizzactl deploys to the cluster it was trained
on (`--deploy` forces it, `--no-deploy` skips it), as `pizzactl deploy` rolls it out: old pods
serve until it is ready, with the model server, port and render options of the deployment that
is there. What the run trained on comes from its result (`trained_on`), so deploy never imports
the training code.
"""

from __future__ import annotations

from typing import Any

from pizzactl.console import log
from pizzactl.deploy import deploy as deploy_
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.results import Deployment


def roll_out(settings, result: dict[str, Any], deploy: bool | None = None) -> dict[str, Any]:
    """`result` (a train result) with "deployed" when the new version was rolled out; as it was when
    it trained here or in Docker, or when nothing is deployed to its cluster (unless `deploy`)."""
    trained_on = result.get("trained_on") or {}
    context = trained_on.get("context")
    if not context or not _should_deploy(settings, context, deploy):
        return result
    cluster = settings.cluster if trained_on.get("on") == "kind" else None
    return {**result, "deployed": _roll_out(settings, context, cluster)}


def _should_deploy(settings, context: str, deploy: bool | None) -> bool:
    if deploy is not None:
        return deploy
    deployed = state_mod.load(settings)
    return deployed is not None and deployed.target in ("kind", "cluster") and deployed.extra.get("context") == context


def _roll_out(settings, context: str, cluster: str | None) -> Deployment:
    """The new version onto the cluster as `pizzactl deploy` rolls it out (old pods serve until it
    is ready), with the model server and port of the deployment that is there."""
    deployed = state_mod.load(settings)
    if deployed is not None and deployed.extra.get("context") == context:
        server = (deployed.extra.get("images") or {}).get("model_server") or settings.model_server
        settings = settings.replace(model_server=server, port=deployed.ports.get("gateway", settings.port))
        # the options the deployment was rendered with (pull secret, gateway options), not this
        # command's flags: under server-side apply a field left out is deleted
        settings = settings.replace(**(deployed.extra.get("render") or {}))
    log("Rolling the new version out where pizzactl deploys ...")
    if cluster:
        return deploy_(settings.replace(target="kind", context=None, cluster=cluster))
    return deploy_(settings.replace(target="kind", context=context))
