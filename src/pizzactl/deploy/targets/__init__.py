"""Where a deployment runs: one module per target, each a `Target` (checked by mypy).

local    the model server and gateway as background processes (no containers)
docker   the rendered pods as containers on a private network (a rehearsal of the cluster)
kind     a kind cluster pizzactl creates or reuses, images loaded with `kind load`
cluster  any existing cluster (--context), images pushed to --registry

`target(name)` imports only the module asked for: `status` of a local deployment does not pay
for the cluster code, and the Docker and Kubernetes clients stay inside the functions that use
them, so `pizzactl --help` never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pizzactl.config import Settings
from pizzactl.deploy.rollout import Plan
from pizzactl.deploy.state import DeployState
from pizzactl.errors import UsageError


class Target(Protocol):
    """What `pizzactl.deploy` asks of a target module (its module-level functions).

    A target writes the state file as soon as there is something to clean up, before waiting
    for readiness, so an interrupted deploy can still be torn down.
    """

    def preflight(self, settings: Settings, previous: DeployState | None, /) -> None:
        """Raise before anything is stopped (e.g. the port is taken by something else)."""

    def deploy(self, settings: Settings, /, timeout: float = 300.0, plan: Plan | None = None) -> dict[str, Any]:
        """At least {"target", "url", "model_version"}; the rest goes to `Deployment.details`.

        `plan`: which versions serve and how (deploy/rollout.py); None: the newest for everyone."""
        ...

    def reconfigure(
        self, settings: Settings, previous: DeployState, plan: Plan, timeout: float, /
    ) -> dict[str, Any] | None:
        """Take `plan` into the running deployment `previous` of this target without a restart, as
        `deploy` would answer; None when that cannot be done (then deploy replaces it)."""
        ...

    def status(self, settings: Settings, state: DeployState, /) -> dict[str, Any]:
        """At least {"ready": bool}; "serving": {version: pods} where the target counts them."""
        ...

    def teardown(self, settings: Settings, state: DeployState, /) -> dict[str, Any]:
        """{"message": str, ...}; never fails on "already gone" (kind also takes keep_cluster)."""
        ...

    def rollback(self, settings: Settings, state: DeployState, to: int | None, timeout: float, /) -> dict[str, Any]:
        """The previous version (or `to`) back; {"message"} alone when there is none to go back to."""
        ...


def _local() -> Target:
    from pizzactl.deploy.targets import local

    return local


def _docker() -> Target:
    from pizzactl.deploy.targets import docker

    return docker


def _kind() -> Target:
    from pizzactl.deploy.targets import kind

    return kind


def _cluster() -> Target:
    from pizzactl.deploy.targets import cluster

    return cluster


# `--target` names these three; `cluster` is what kind becomes with --context.
REGISTRY: dict[str, Callable[[], Target]] = {"local": _local, "docker": _docker, "kind": _kind, "cluster": _cluster}


def target(name: str) -> Target:
    """The target module called `name` (imported now)."""
    load = REGISTRY.get(name)
    if load is None:
        raise UsageError(f"Unknown deploy target {name!r}.", hint="Use --target kind, docker or local.")
    return load()
