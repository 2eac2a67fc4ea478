"""`--auto`'s analysis (deploy/decide.py) and the rollout Plan (deploy/rollout.py): pure, no servers.

The summaries follow the gateway's `GET /rollout` schema 1 (docs/serve.md); each test flips one
number from a healthy trial and expects the decision to flip with it."""

from __future__ import annotations

import copy

import pytest

from pizzactl.deploy.decide import ABORT, PROMOTE, WAIT, Criteria, decide, evidence_of
from pizzactl.deploy.rollout import Plan, aborted, decision_entry, settings_of_record
from pizzactl.deploy.state import DeployState
from pizzactl.errors import UsageError

CRITERIA = Criteria(
    min_pairs=100, min_requests=100, error_margin=0.01, p99_factor=1.5, p99_slack_ms=5, min_agreement=0.9
)


def healthy() -> dict:
    """A canary at 10% with enough evidence and a candidate as good as stable."""

    def version(role, requests, errors, p99):
        return {
            "role": role,
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests,
            "latency_ms": {"p50": p99 / 3, "p99": p99},
            "labels": {"pizza": requests // 2, "not_pizza": requests - requests // 2},
        }

    return {
        "schema": 1,
        "mode": "canary",
        "percent": 10.0,
        "stable": {"route": "/labels/stable", "version": 1},
        "candidate": {"route": "/labels/canary", "version": 2},
        "versions": {"1": version("stable", 1000, 1, 40.0), "2": version("candidate", 120, 0, 45.0)},
        "comparison": {
            "pairs": 120,
            "agreements": 116,
            "agreement": 116 / 120,
            "abs_dp": {"p50": 0.01, "p90": 0.05, "p99": 0.2, "max": 0.4},
            "kept": 4,
            "kept_dir": "/tmp/rollout",
        },
        "shadow_skipped": 0,
        "fallbacks": 0,
    }


def with_(path: str, value) -> dict:
    summary = copy.deepcopy(healthy())
    *parents, last = path.split(".")
    node = summary
    for key in parents:
        node = node[key]
    node[last] = value
    return summary


def test_a_healthy_candidate_with_enough_evidence_is_promoted():
    decision = decide(healthy(), CRITERIA)
    assert decision.action == PROMOTE, decision.reasons
    assert [c.ok for c in decision.checks] == [True] * 5
    assert decision.evidence["agreement"] == pytest.approx(116 / 120)
    assert decision.evidence["candidate"] == 2 and decision.evidence["stable"] == 1


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("comparison.pairs", 99, "compared inputs"),
        ("versions.2.requests", 99, "candidate requests"),
    ],
)
def test_too_little_evidence_waits(path, value, reason):
    decision = decide(with_(path, value), CRITERIA)
    assert decision.action == WAIT
    assert any(reason in r for r in decision.reasons)


@pytest.mark.parametrize(
    ("path", "value", "failing"),
    [
        ("versions.2.error_rate", 0.0111 + 0.001, "candidate error rate"),  # stable 0.001 + margin 0.01 = 0.011
        ("versions.2.latency_ms.p99", 65.1, "candidate p99"),  # 40 x 1.5 + 5 = 65
        ("comparison.agreement", 0.89, "label agreement"),
    ],
)
def test_each_criterion_alone_aborts(path, value, failing):
    decision = decide(with_(path, value), CRITERIA)
    assert decision.action == ABORT
    assert [c.name for c in decision.checks if c.ok is False] == [failing]
    assert decision.reasons[0].startswith(failing)


@pytest.mark.parametrize(
    ("path", "value"),
    [("versions.2.error_rate", 0.011), ("versions.2.latency_ms.p99", 65.0), ("comparison.agreement", 0.9)],
)
def test_a_candidate_exactly_at_a_limit_is_promoted(path, value):
    assert decide(with_(path, value), CRITERIA).action == PROMOTE


def test_a_labels_shuffled_candidate_is_aborted_even_when_it_is_fast_and_never_errs():
    decision = decide(with_("comparison.agreement", 0.5), CRITERIA)
    assert decision.action == ABORT and "label agreement 0.500" in decision.reasons[0]


def test_nothing_measured_waits_and_says_what_is_missing():
    for summary in (None, {}, with_("comparison", None)):
        decision = decide(summary, CRITERIA)
        assert decision.action == WAIT
        assert decision.checks[0].observed == "not measured"


def test_unmeasured_latency_waits_rather_than_promotes():
    decision = decide(with_("versions.1.latency_ms", {"p50": None, "p99": None}), CRITERIA)
    assert decision.action == WAIT and "candidate p99 not measured yet" in decision.reasons


def test_a_failing_candidate_is_not_aborted_before_the_minimum_evidence():
    summary = with_("comparison.agreement", 0.2)
    summary["comparison"]["pairs"] = 10
    assert decide(summary, CRITERIA).action == WAIT


def test_roles_come_from_the_summary_even_when_the_candidate_is_the_older_version():
    summary = healthy()
    summary["versions"] = {"5": summary["versions"]["2"], "3": summary["versions"]["1"]}
    summary["stable"]["version"], summary["candidate"]["version"] = 5, 3
    summary["versions"]["5"]["role"], summary["versions"]["3"]["role"] = "stable", "candidate"
    assert evidence_of(summary)["candidate_requests"] == 1000
    assert evidence_of(summary)["stable_requests"] == 120


# --- the Plan every target renders -----------------------------------------------------------------


def test_plan_needs_stable_and_candidate_for_a_trial_and_knows_its_mode():
    with pytest.raises(UsageError):
        Plan(None, 2, "canary", 10)
    with pytest.raises(UsageError):
        Plan(1, None, "shadow")
    with pytest.raises(UsageError):
        Plan(1, 2, "blue-green")
    assert Plan().pinned is False and Plan(3).pinned and not Plan(3).trial
    trial = Plan(1, 2, "canary", 10)
    assert trial.versions() == (1, 2) and trial.labels() == {"stable": 1, "canary": 2}
    assert trial.gateway_env()["PIZZACTL_CANARY_PERCENT"] == "10"
    assert Plan(1, 2, "shadow").gateway_env() == {
        "PIZZACTL_CANARY_PERCENT": "0",
        "PIZZACTL_SHADOW": "1",
        "PIZZACTL_CANARY_VERSION": "canary",
        "PIZZACTL_STABLE_VERSION": "stable",
    }
    assert Plan().model_config("/models/pizza") is None
    assert "versions: 3" in (Plan(3).model_config("/models/pizza") or "")


def test_plan_round_trips_through_the_deploy_record():
    for plan in (Plan(1, 2, "canary", 10.0), Plan(4, 7, "shadow")):
        st = DeployState(target="local", url="http://x", extra={"rollout": plan.record()})
        assert Plan.of_record(st) == plan
    assert Plan.of_record(DeployState(target="local", url="http://x", extra={"pinned_version": 3})) == Plan(3)
    assert Plan.of_record(DeployState(target="local", url="http://x")) == Plan()
    assert Plan.of_record(None) == Plan()


def test_an_aborted_version_is_remembered_until_a_later_decision_about_it():
    trial = Plan(1, 2, "canary", 10.0)
    entry = decision_entry("abort", trial, "auto", {"reasons": ["label agreement 0.5"]}, CRITERIA.as_dict())
    st = DeployState(target="local", url="http://x", extra={"rollouts": [entry]})
    assert aborted(st, 2) == entry and aborted(st, 1) is None
    st.extra["rollouts"].append(decision_entry("promote", trial, "person"))
    assert aborted(st, 2) is None


def test_a_redeploy_uses_the_recorded_deployment_not_todays_flags(isolated, tmp_path):
    from pizzactl.config import load_settings

    today = load_settings({"port": 1234, "target": "docker", "canary_percent": 10.0})
    st = DeployState(
        target="local",
        url="http://127.0.0.1:9000",
        model_dir=str(tmp_path / "models"),
        ports={"gateway": 9000, "modelserver": 9001},
        extra={"host": "127.0.0.1", "allow_private_urls": True, "api_key_hashes": "ab" * 32},
    )
    again = settings_of_record(today, st)
    assert (again.target, again.port, again.model_port, again.models_dir) == ("local", 9000, 9001, tmp_path / "models")
    assert again.canary_percent == 0 and again.allow_private_urls and again.api_key_hashes == "ab" * 32
