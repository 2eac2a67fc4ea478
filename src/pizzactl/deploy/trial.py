"""`pizzactl promote`, `abort` and `deploy --auto`: end a canary or shadow trial (issue 23).

Both verbs read the trial from the deploy record and redeploy the recorded deployment (its
target, port, models directory: `rollout.settings_of_record`, never today's flags) through
`pizzactl.deploy.deploy` with a pinned plan: promote serves only the candidate, abort only
stable. The decision, who made it and the evidence go into the record (`extra["rollouts"]`),
so the next deploy of an aborted version says so. `auto` polls the gateway's `/rollout` until
`decide.decide` is no longer "wait", then promotes or aborts; on timeout it leaves the trial
running and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pizzactl import deploy as deploy_mod
from pizzactl.deploy import decide, rollout
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.decide import Criteria, Decision
from pizzactl.deploy.rollout import Plan
from pizzactl.errors import NotDeployedError, WaitTimeoutError


@dataclass(frozen=True)
class Outcome:
    """What promote/abort/--auto did: the action, the trial it ended and the version now serving."""

    action: str  # promote | abort | wait (--auto timed out: the trial still runs)
    decided_by: str  # person | auto
    trial: Plan
    serving: int | None
    url: str | None
    decision: Decision | None = None
    criteria: Criteria | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "action": self.action,
            "decided_by": self.decided_by,
            "stable": self.trial.stable,
            "candidate": self.trial.candidate,
            "mode": self.trial.mode,
            "model_version": self.serving,
            "url": self.url,
            "criteria": self.criteria.as_dict() if self.criteria else None,
            "decision": self.decision.as_dict() if self.decision else None,
        }


def _trial(settings) -> tuple[state_mod.DeployState, Plan]:
    st = state_mod.load(settings)
    if st is None:
        raise NotDeployedError(
            "Nothing is deployed, so there is no trial to end.",
            hint="Start one with `pizzactl deploy --canary 10` (or --shadow).",
        )
    plan = Plan.of_record(st)
    if not plan.trial:
        serving = f"version {st.model_version}" if st.model_version is not None else "the newest version"
        raise NotDeployedError(
            f"No canary or shadow is in flight on the {st.target} deployment: {serving} serves everyone.",
            hint="Start one with `pizzactl deploy --canary 10` (or --shadow); `pizzactl rollback` goes back a version.",
        )
    return st, plan


def promote(settings, timeout: float = 300.0, decision: Decision | None = None, criteria: Criteria | None = None):
    """The candidate serves every request (pinned); stable is unloaded."""
    return _end(settings, decide.PROMOTE, timeout, decision, criteria)


def abort(settings, timeout: float = 300.0, decision: Decision | None = None, criteria: Criteria | None = None):
    """The candidate is unloaded; stable serves every request (pinned)."""
    return _end(settings, decide.ABORT, timeout, decision, criteria)


def _end(settings, action: str, timeout: float, decision: Decision | None, criteria: Criteria | None) -> Outcome:
    st, trial = _trial(settings)
    by = "auto" if decision is not None else "person"
    if decision is None:  # a person decides: record what the gateway had measured by then, if it says
        summary = rollout.read_summary(st.url, settings.api_key)
        decision = decide.decide(summary, Criteria.of(settings)) if summary else None
        evidence: dict[str, Any] = {"reasons": [f"{action} by a person"]}
        if decision is not None:
            evidence.update(decision.evidence, checks=[c.as_dict() for c in decision.checks])
    else:
        evidence = {
            **decision.evidence,
            "reasons": list(decision.reasons),
            "checks": [c.as_dict() for c in decision.checks],
        }
    keep = trial.candidate if action == decide.PROMOTE else trial.stable
    earlier = rollout.history(st)
    result = deploy_mod.deploy(rollout.settings_of_record(settings, st), timeout=timeout, plan=Plan(keep))
    entry = rollout.decision_entry(
        action, trial, by, evidence, (criteria or Criteria.of(settings)).as_dict() if by == "auto" else None
    )
    rollout.keep_history(settings, earlier, entry)
    return Outcome(action, by, trial, result.model_version, result.url, decision, criteria)


def auto(
    settings,
    url: str,
    timeout: float,
    deploy_timeout: float = 300.0,
    on_poll: Callable[[Decision], None] | None = None,
) -> Outcome:
    """Watch the trial just deployed until the evidence decides, then promote or abort.

    On timeout the trial keeps running and WaitTimeoutError says what was missing."""
    criteria = Criteria.of(settings)
    deadline = time.monotonic() + timeout
    decision = decide.decide(None, criteria)
    seen_summary = False
    while True:
        summary = rollout.read_summary(url, settings.api_key)
        seen_summary = seen_summary or summary is not None
        decision = decide.decide(summary, criteria)
        if on_poll is not None:
            on_poll(decision)
        if decision.action != decide.WAIT or time.monotonic() >= deadline:
            break
        time.sleep(min(settings.rollout_poll_seconds, max(0.0, deadline - time.monotonic())))
    if decision.action == decide.WAIT:
        why = "; ".join(decision.reasons) if seen_summary else f"the gateway at {url} reports no /rollout summary"
        raise WaitTimeoutError(
            f"--auto decided nothing in {timeout:g}s ({why}). The trial is still running.",
            hint="Send it more traffic and run `pizzactl status` to watch; end it with `pizzactl promote` or "
            "`pizzactl abort`, or give it longer with --auto-timeout.",
        )
    end = promote if decision.action == decide.PROMOTE else abort
    return end(settings, timeout=deploy_timeout, decision=decision, criteria=criteria)
