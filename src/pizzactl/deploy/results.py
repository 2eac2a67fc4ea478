"""What `deploy` and `status` return: typed, frozen, and the JSON `--json` prints.

The fields every target has are attributes; what only some targets report (images, containers,
processes, the cluster's context and namespace, rollout states, autoscaling, supervision) is in
`details`, flattened into the JSON as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pizzactl.deploy.state import DeployState
from pizzactl.results import Result


@dataclass(frozen=True, eq=False)
class Deployment(Result):
    """A finished deploy: where the gateway answers and which model version it serves."""

    target: str
    url: str
    model_version: int | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, answer: Mapping[str, Any]) -> Deployment:
        """From a target's answer (`Target.deploy`): at least target, url and model_version."""
        rest = {k: v for k, v in answer.items() if k not in ("target", "url", "model_version")}
        return cls(target=answer["target"], url=answer["url"], model_version=answer.get("model_version"), details=rest)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "url": self.url, "model_version": self.model_version, **self.details}


@dataclass(frozen=True, eq=False)
class Status(Result):
    """What is deployed and whether it answers (`deployed` False: nothing, and `message` says so);
    `training` is the last training Job on a cluster, deployed or not."""

    deployed: bool
    target: str | None = None
    url: str | None = None
    model_version: int | None = None
    created: str | None = None
    ready: bool | None = None
    serving: Mapping[Any, int] | None = None  # {model version: pods}, where the target counts them
    message: str | None = None
    state_file: str | None = None
    training: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def nothing(cls, message: str, state_file: str, training: Mapping[str, Any] | None = None) -> Status:
        return cls(deployed=False, message=message, state_file=state_file, training=training)

    @classmethod
    def of(cls, state: DeployState, info: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> Status:
        """From the recorded deployment and its target's answer (`Target.status`), which may
        correct the model version (local: the model server hot-reloads newer exports)."""
        rest = {k: v for k, v in info.items() if k not in ("model_version", "ready", "serving")}
        return cls(
            deployed=True,
            target=state.target,
            url=state.url,
            model_version=info.get("model_version", state.model_version),
            created=state.created,
            ready=info.get("ready"),
            serving=info.get("serving"),
            training=training,
            details=rest,
        )

    def as_dict(self) -> dict[str, Any]:
        if not self.deployed:
            d: dict[str, Any] = {"deployed": False, "message": self.message, "state_file": self.state_file}
        else:
            d = {
                "deployed": True,
                "target": self.target,
                "url": self.url,
                "model_version": self.model_version,
                "created": self.created,
                "ready": self.ready,
            }
            if self.serving is not None:
                d["serving"] = self.serving
            d.update(self.details)
        if self.training:
            d["training"] = self.training
        return d
