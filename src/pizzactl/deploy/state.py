"""The one deploy state file every target shares: what runs where, so status/teardown/predict find it.

`settings.state_dir / "deploy.json"` holds the last deployment: its target, URL, process ids,
ports, log files and the model version that serves. It is written atomically (temp file +
rename), so a reader never sees half a file, and removed by teardown. Target-specific details go
in `extra`: containers, the kind cluster, context and namespace, whether pizzactl created the
namespace, the serving images, earlier releases (`history`, for rollback) and a rollout that
failed (`failed`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pizzactl.errors import DeployError
from pizzactl.files import write_json

STATE_FILE = "deploy.json"


@dataclass
class DeployState:
    target: str  # local | docker | kind | cluster
    url: str  # the gateway, as a client reaches it
    model_version: int | None = None
    model_dir: str | None = None  # the models directory that was deployed (TF Serving layout)
    pids: dict[str, int] = field(default_factory=dict)  # local: {"modelserver": pid, "gateway": pid}
    ports: dict[str, int] = field(default_factory=dict)  # {"gateway": 9696, "modelserver": 8501}
    logs: dict[str, str] = field(default_factory=dict)  # {"gateway": "/path/gateway.log", ...}
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific: containers, cluster, namespace, ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployState:
        known = {f.name for f in fields(cls)}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})  # keep what a newer pizzactl wrote
        kwargs = {k: v for k, v in data.items() if k in known and k != "extra"}
        return cls(**kwargs, extra=extra)


def state_path(settings) -> Path:
    return Path(settings.state_dir).expanduser() / STATE_FILE


def load(settings) -> DeployState | None:
    """The recorded deployment, or None when nothing is deployed."""
    path = state_path(settings)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "target" not in data:
            raise ValueError("not a deploy state object")
        return DeployState.from_dict(data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise DeployError(
            f"The deploy state file {path} is damaged ({exc}).",
            hint=f"Stop what is still running by hand, then delete {path}.",
        ) from None


def save(settings, state: DeployState) -> Path:
    """Write the state atomically: a crash leaves the old file or the new one, never half of one."""
    path = state_path(settings)
    write_json(path, state.as_dict())
    return path


def clear(settings) -> bool:
    """Remove the state file; True if there was one."""
    try:
        state_path(settings).unlink()
        return True
    except FileNotFoundError:
        return False
