"""Which model versions serve and how requests reach them: one plan every target renders.

A plain `deploy` serves the newest version on disk to everyone (the model server's default
policy, `latest`). `--canary P` and `--shadow` put the newest version on trial beside the stable
one: the version deployed before, if it is still on disk and older, else the one below it.
`promote` makes the candidate the only version; `abort` drops it and stable keeps everyone.

A target turns the plan into two things, the same on every target:
* the model server's TF Serving model config (`model_config`): the versions to load and the
  labels `stable` and `canary` (read by the builtin server and `tensorflow/serving` alike);
* the gateway's settings (`gateway_env`): the canary share, shadow on or off, and which labels
  mean stable and candidate (serving/canary.py).
The plan is recorded in the deploy state (`extra["rollout"]`), so status, teardown, promote,
abort and the next deploy know a trial is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pizzactl import httpclient
from pizzactl.config import MODEL_NAME, Settings, trial_mode
from pizzactl.console import log
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.state import DeployState
from pizzactl.errors import ModelNotFoundError, UsageError
from pizzactl.kube.images import Pinned
from pizzactl.kube.shipped import MODEL_BASE_IN_IMAGE
from pizzactl.model.store import list_versions, model_base
from pizzactl.serving.modelserver.versions import model_config_text

STABLE = "stable"  # the model config's label for the version everyone gets
CANDIDATE = "canary"  # ... and for the one on trial (TF Serving's docs use the same two names)
MODES = ("off", "canary", "shadow")
HISTORY = 20  # decisions the deploy record keeps (`extra["rollouts"]`), the newest last


@dataclass(frozen=True)
class Plan:
    """stable None: the newest on disk, whatever the model server finds (no model config).

    mode canary: `percent` of requests go to the candidate; shadow: every request also goes to
    it in the background and users get stable's answers; off: no candidate."""

    stable: int | None = None
    candidate: int | None = None
    mode: str = "off"
    percent: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"Unknown rollout mode {self.mode!r}.", hint="Use canary, shadow or off.")
        if (self.mode != "off") != (self.candidate is not None) or (self.candidate is not None and self.stable is None):
            raise UsageError("A canary or shadow rollout needs a stable version and a candidate.", hint="")

    @property
    def trial(self) -> bool:
        """A candidate is on trial beside stable."""
        return self.candidate is not None

    @property
    def pinned(self) -> bool:
        """The model server needs a model config: specific versions, not just the newest."""
        return self.stable is not None

    def versions(self) -> tuple[int, ...]:
        return tuple(v for v in (self.stable, self.candidate) if v is not None)

    def labels(self) -> dict[str, int]:
        labels = {STABLE: self.stable} if self.stable is not None else {}
        return {**labels, CANDIDATE: self.candidate} if self.candidate is not None else labels

    def model_config(self, base_path: str | Path, name: str = MODEL_NAME) -> str | None:
        """The TF Serving model config for the model server (None: serve the newest, no config).

        `base_path` is where the model's versions are as the model server sees them (a local
        folder, or `/models/pizza` in a container)."""
        if not self.pinned:
            return None
        return model_config_text(name, str(base_path), self.versions(), self.labels())

    def gateway_env(self) -> dict[str, str]:
        """The gateway's rollout settings, always all of them: an inherited PIZZACTL_CANARY_PERCENT
        or PIZZACTL_SHADOW cannot turn a trial on."""
        return {
            "PIZZACTL_CANARY_PERCENT": f"{self.percent if self.mode == 'canary' else 0:g}",
            "PIZZACTL_SHADOW": "1" if self.mode == "shadow" else "0",
            "PIZZACTL_CANARY_VERSION": CANDIDATE,
            "PIZZACTL_STABLE_VERSION": STABLE,
        }

    def gateway_plan(self, plan_id: str) -> dict[str, Any]:
        """The same settings as `gateway_env`, as the gateway's rollout plan file (serving/rollout.PlanFile)
        that a running gateway re-reads; `plan_id` is how its /rollout says it took this one."""
        return {
            "plan": plan_id,
            "canary_percent": self.percent if self.mode == "canary" else 0.0,
            "shadow": self.mode == "shadow",
            "canary_version": CANDIDATE,
            "stable_version": STABLE,
        }

    def in_image(self) -> Pinned | None:
        """What a model image holds for this plan (docker, kind, cluster): its versions and the
        model config, base path as the container sees it; None: the newest version, no config."""
        config = self.model_config(MODEL_BASE_IN_IMAGE)
        return Pinned(self.versions(), config) if config is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The plan, for a release's record (`of_dict` reads it back)."""
        return {"stable": self.stable, "candidate": self.candidate, "mode": self.mode, "percent": self.percent}

    @classmethod
    def of_dict(cls, data: dict[str, Any] | None) -> Plan:
        if not data:
            return cls()
        return cls(data.get("stable"), data.get("candidate"), data.get("mode", "off"), float(data.get("percent") or 0))

    def describe(self) -> str:
        """One line for people: what the trial does."""
        if self.mode == "canary":
            return f"version {self.candidate} gets {self.percent:g}% of requests, version {self.stable} the rest"
        if self.mode == "shadow":
            return (
                f"version {self.candidate} sees every request in the shadow of version {self.stable}; "
                f"users get version {self.stable}'s answers"
            )
        if self.stable is not None:
            return f"version {self.stable} serves every request"
        return "the newest version serves every request"

    def record(self) -> dict[str, Any] | None:
        """What the deploy state keeps (`extra["rollout"]`): None when no candidate is on trial."""
        if not self.trial:
            return None
        return {"mode": self.mode, "percent": self.percent, "stable": self.stable, "candidate": self.candidate}

    @classmethod
    def of_record(cls, state: DeployState | None) -> Plan:
        """The plan a recorded deployment runs (a trial, a pinned version, or the newest)."""
        if state is None:
            return cls()
        trial = state.extra.get("rollout")
        if trial:
            return cls(trial["stable"], trial["candidate"], trial["mode"], float(trial.get("percent") or 0))
        pinned = state.extra.get("pinned_version")
        return cls(int(pinned)) if pinned is not None else cls()


def in_flight(state: DeployState | None) -> dict[str, Any] | None:
    """The trial a recorded deployment runs, if any."""
    return (state.extra.get("rollout") or None) if state is not None else None


def plan_for(settings, previous: DeployState | None = None) -> Plan:
    """The plan `deploy` runs from its settings: `--canary P` or `--shadow` (a trial of the newest
    version beside stable), else the newest version for everyone."""
    percent = float(settings.canary_percent or 0)
    shadow = bool(getattr(settings, "shadow", False))
    if trial_mode(percent, shadow) == "off":
        return Plan()
    if not 0 < percent <= 100 and not shadow:
        raise UsageError(f"--canary {percent:g}: give a percentage.", hint="Use 1 to 100.")
    stable, candidate = trial_versions(settings.models_dir, previous)
    return Plan(stable, candidate, "shadow" if shadow else "canary", 0.0 if shadow else percent)


def trial_versions(models_dir, previous: DeployState | None = None) -> tuple[int, int]:
    """(stable, candidate): the newest version on trial beside the one deployed before (if it is
    still on disk and older), else beside the version below it."""
    versions = [v for v, _ in list_versions(models_dir, MODEL_NAME)]
    if len(versions) < 2:
        raise ModelNotFoundError(
            f"A canary or shadow rollout needs two versions in {model_base(models_dir)}; it has {len(versions)}.",
            hint="Export (or train) the new version first, then deploy it with --canary or --shadow.",
        )
    candidate = versions[-1]
    before = Plan.of_record(previous).stable if previous is not None else None
    if before is None and previous is not None:
        before = previous.model_version
    stable = before if before in versions and before != candidate else versions[-2]
    return stable, candidate


# --- what a redeploy of the recorded deployment needs, and what the record remembers -------------


def settings_of_record(settings: Settings, st: DeployState) -> Settings:
    """Today's settings with the recorded deployment's where (target, models dir, ports, host,
    cluster, namespace, context, accepted key digests): promote, abort and rollback redeploy
    what runs, whatever flags or directory they are run with."""
    extra = st.extra
    changes: dict[str, Any] = {
        "target": "kind" if st.target == "cluster" else st.target,
        "canary_percent": 0.0,
        "shadow": False,
        "context": extra.get("context") if st.target == "cluster" else None,
    }
    if st.model_dir:
        changes["models_dir"] = Path(st.model_dir)
    for setting, value in (("port", st.ports.get("gateway")), ("model_port", st.ports.get("modelserver"))):
        if value:
            changes[setting] = int(value)
    for key in ("host", "allow_private_urls", "cluster", "namespace"):
        if extra.get(key) is not None:
            changes[key] = extra[key]
    if extra.get("api_key_hashes"):  # the keys the deployment accepted keep working, with or without today's
        changes["api_key_hashes"] = ",".join(filter(None, (settings.api_key_hashes, extra["api_key_hashes"])))
    return replace(settings, **changes)


def history(st: DeployState | None) -> list[dict[str, Any]]:
    """The recorded promote/abort decisions, oldest first."""
    return list((st.extra.get("rollouts") or []) if st is not None else [])


def decision_entry(
    action: str,
    plan: Plan,
    decided_by: str,
    evidence: dict[str, Any] | None = None,
    criteria: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of `extra["rollouts"]`: the action, the trial it ended, when, who, and on what evidence."""
    return {
        "action": action,
        "stable": plan.stable,
        "candidate": plan.candidate,
        "mode": plan.mode,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "evidence": evidence,
        "criteria": criteria,
        "decided_by": decided_by,
    }


def keep_history(settings: Settings, earlier: list[dict[str, Any]], entry: dict[str, Any] | None = None) -> None:
    """Put the decisions (and a new one) into the deployment recorded now: a redeploy writes a
    fresh record, and the next deploy must still know what was aborted."""
    entries = [*earlier, *([entry] if entry else [])][-HISTORY:]
    current = state_mod.load(settings)
    if current is None or not entries:
        return
    state_mod.save(settings, replace(current, extra={**current.extra, "rollouts": entries}))


def aborted(st: DeployState | None, version: int | None) -> dict[str, Any] | None:
    """The last decision about `version`, if it was to abort it."""
    about = [e for e in history(st) if version is not None and e.get("candidate") == version]
    return about[-1] if about and about[-1].get("action") == "abort" else None


def warn_if_aborted(previous: DeployState | None, version: int | None) -> None:
    """A deploy of a version that was aborted goes ahead (the user asked) but says so."""
    entry = aborted(previous, version)
    if entry is None:
        return
    reasons = "; ".join((entry.get("evidence") or {}).get("reasons") or []) or "no reason recorded"
    log(
        f"Version {version} was aborted at {entry.get('at')} ({entry.get('decided_by')}: {reasons}); "
        "deploying it anyway, as asked."
    )


def read_summary(url: str, api_key: str | None, timeout: float = 5.0) -> dict[str, Any] | None:
    """The gateway's live comparison (`GET /rollout`, schema 1), or None when it does not answer
    with one (an older gateway, a wrong key, not up yet)."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpclient.session(headers=headers, pool=1) as client:
            response = client.get(url.rstrip("/") + "/rollout", timeout=timeout)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("schema") == 1 else None
