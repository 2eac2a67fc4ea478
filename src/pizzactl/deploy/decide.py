"""`--auto`: promote, abort or wait, from what the gateway measured on live traffic (issue 23).

A pure function of two things: the gateway's `GET /rollout` summary (requests, errors and
latency per version; on the inputs both versions answered, the label agreement and |Δp|) and
the criteria (settings `rollout_*`, config.py). Nothing here talks to a server, so every
criterion is tested by flipping one number (tests/test_decide.py).

The rule: wait until both minimums are in (compared pairs, candidate requests); then abort if
any criterion fails, else promote. Why these criteria and thresholds: docs/deploy.md
"Rolling out a new model".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

PROMOTE, ABORT, WAIT = "promote", "abort", "wait"


@dataclass(frozen=True)
class Criteria:
    """What a candidate must show before it serves everyone (defaults: config.py's `rollout_*`)."""

    min_pairs: int = 100
    min_requests: int = 100
    error_margin: float = 0.01
    p99_factor: float = 1.5
    p99_slack_ms: float = 5.0
    min_agreement: float = 0.9

    @classmethod
    def of(cls, settings) -> Criteria:
        return cls(
            min_pairs=settings.rollout_min_pairs,
            min_requests=settings.rollout_min_requests,
            error_margin=settings.rollout_error_margin,
            p99_factor=settings.rollout_p99_factor,
            p99_slack_ms=settings.rollout_p99_slack_ms,
            min_agreement=settings.rollout_min_agreement,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One row of the evidence table: what was measured, what is required, and whether it holds
    (None: not measured yet)."""

    name: str
    observed: str
    required: str
    ok: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: str  # promote | abort | wait
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    evidence: Mapping[str, Any]  # the numbers the checks read, for the deploy record

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reasons": list(self.reasons),
            "checks": [c.as_dict() for c in self.checks],
            "evidence": dict(self.evidence),
        }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: float | None, spec: str = "g") -> str:
    return "not measured" if value is None else format(value, spec)


def evidence_of(summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers the criteria read, from a `/rollout` summary (None where nothing was measured)."""
    summary = summary or {}
    versions = summary.get("versions") or {}
    roles = {str((summary.get(role) or {}).get("version")): role for role in ("stable", "candidate")}
    per_role: dict[str, Mapping[str, Any]] = {}
    for version, stats in versions.items():
        role = roles.get(str(version)) or (stats or {}).get("role")
        if role in ("stable", "candidate"):
            per_role[role] = stats or {}
    comparison = summary.get("comparison") or {}

    def of(role: str, *keys: str) -> float | None:
        value: Any = per_role.get(role) or {}
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return _num(value)

    return {
        "mode": summary.get("mode"),
        "stable": (summary.get("stable") or {}).get("version"),
        "candidate": (summary.get("candidate") or {}).get("version"),
        "pairs": _num(comparison.get("pairs")),
        "agreement": _num(comparison.get("agreement")),
        "abs_dp_p90": _num((comparison.get("abs_dp") or {}).get("p90")),
        "candidate_requests": of("candidate", "requests"),
        "stable_requests": of("stable", "requests"),
        "candidate_error_rate": of("candidate", "error_rate"),
        "stable_error_rate": of("stable", "error_rate"),
        "candidate_p99_ms": of("candidate", "latency_ms", "p99"),
        "stable_p99_ms": of("stable", "latency_ms", "p99"),
        "kept": comparison.get("kept"),
        "kept_dir": comparison.get("kept_dir"),
    }


def decide(summary: Mapping[str, Any] | None, criteria: Criteria) -> Decision:
    """promote, abort or wait, with one check per criterion and the reasons for the action."""
    ev = evidence_of(summary)
    pairs, requests = ev["pairs"] or 0.0, ev["candidate_requests"] or 0.0
    checks = [
        Check("compared inputs", _fmt(ev["pairs"]), f">= {criteria.min_pairs}", pairs >= criteria.min_pairs),
        Check(
            "candidate requests",
            _fmt(ev["candidate_requests"]),
            f">= {criteria.min_requests}",
            requests >= criteria.min_requests,
        ),
    ]
    enough = all(c.ok for c in checks)

    cand_err, stable_err = ev["candidate_error_rate"], ev["stable_error_rate"]
    if cand_err is None:
        checks.append(Check("candidate error rate", "not measured", f"<= stable's + {criteria.error_margin:g}", None))
    else:
        limit = (stable_err or 0.0) + criteria.error_margin
        checks.append(
            Check(
                "candidate error rate",
                f"{cand_err:.4f} (stable {_fmt(stable_err, '.4f')})",
                f"<= {limit:.4f}",
                cand_err <= limit,
            )
        )

    cand_p99, stable_p99 = ev["candidate_p99_ms"], ev["stable_p99_ms"]
    if cand_p99 is None or stable_p99 is None:
        seen = f"{_fmt(cand_p99, '.1f')} ms (stable {_fmt(stable_p99, '.1f')} ms)"
        checks.append(
            Check("candidate p99", seen, f"<= stable's x{criteria.p99_factor:g} + {criteria.p99_slack_ms:g} ms", None)
        )
    else:
        limit_ms = stable_p99 * criteria.p99_factor + criteria.p99_slack_ms
        checks.append(
            Check(
                "candidate p99",
                f"{cand_p99:.1f} ms (stable {stable_p99:.1f} ms)",
                f"<= {limit_ms:.1f} ms",
                cand_p99 <= limit_ms,
            )
        )

    agreement = ev["agreement"]
    checks.append(
        Check(
            "label agreement",
            _fmt(agreement, ".3f"),
            f">= {criteria.min_agreement:g}",
            None if agreement is None else agreement >= criteria.min_agreement,
        )
    )

    if not enough:
        missing = [f"{c.name}: {c.observed} of {c.required[3:]}" for c in checks[:2] if not c.ok]
        return Decision(WAIT, tuple(f"not enough evidence yet ({m})" for m in missing), tuple(checks), ev)
    failed = [c for c in checks[2:] if c.ok is False]
    if failed:
        return Decision(ABORT, tuple(f"{c.name} {c.observed}, needs {c.required}" for c in failed), tuple(checks), ev)
    unmeasured = [c for c in checks[2:] if c.ok is None]
    if unmeasured:
        return Decision(WAIT, tuple(f"{c.name} not measured yet" for c in unmeasured), tuple(checks), ev)
    return Decision(PROMOTE, ("every criterion holds",), tuple(checks), ev)
