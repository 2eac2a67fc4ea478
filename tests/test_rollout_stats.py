"""The rollout's bookkeeping (serving/rollout_stats.py): per-version stats, the comparison, kept disagreements."""

from __future__ import annotations

import json
import logging

import pytest

from pizzactl.serving.client import Prediction
from pizzactl.serving.rollout_stats import MAX_VERSIONS, RESERVOIR, Disagreements, RolloutStats, abs_dp, percentile


def p(label: str, *probabilities: float) -> Prediction:
    return Prediction(label, max(probabilities), tuple(probabilities))


def test_percentiles_are_nearest_rank_and_none_without_values():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50 and percentile(values, 0.9) == 90 and percentile(values, 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_abs_dp_is_the_largest_change_over_the_classes():
    assert abs_dp(p("a", 0.7, 0.2, 0.1), p("b", 0.3, 0.2, 0.5)) == pytest.approx(0.4)
    assert abs_dp(Prediction("a", 0.9), Prediction("b", 0.25)) == pytest.approx(0.65)  # no probabilities


def test_calls_per_version_and_role_with_errors_latency_and_labels():
    stats = RolloutStats()
    for i in range(10):
        stats.call("1", "stable", (i + 1) / 1000, [p("pizza", 0.1, 0.9), p("not_pizza", 0.8, 0.2)])
    stats.call("2", "candidate", 0.5, None)
    versions = stats.versions_json()
    assert versions["1"] == {
        "role": "stable",
        "requests": 10,
        "errors": 0,
        "error_rate": 0.0,
        "latency_ms": {"p50": 5.0, "p99": 10.0},
        "labels": {"pizza": 10, "not_pizza": 10},
    }
    assert versions["2"]["errors"] == 1 and versions["2"]["error_rate"] == 1.0 and versions["2"]["labels"] == {}


def test_the_comparison_counts_pairs_agreements_and_the_spread():
    stats = RolloutStats()
    assert stats.comparison() == {
        "pairs": 0,
        "agreements": 0,
        "agreement": None,
        "abs_dp": {"p50": None, "p90": None, "p99": None, "max": None},
    }
    stable = [p("pizza", 0.1, 0.9)] * 3 + [p("not_pizza", 0.9, 0.1)] * 7
    candidate = [p("not_pizza", 0.6, 0.4)] * 3 + [p("not_pizza", 0.8, 0.2)] * 7
    assert stats.compare(stable, candidate) == [0, 1, 2]
    got = stats.comparison()
    assert (got["pairs"], got["agreements"], got["agreement"]) == (10, 7, 0.7)
    assert got["abs_dp"]["p50"] == pytest.approx(0.1) and got["abs_dp"]["max"] == pytest.approx(0.5)


def test_memory_and_label_values_stay_bounded():
    stats = RolloutStats()
    for v in range(MAX_VERSIONS + 5):
        stats.call(str(v), "stable", 0.001, [])
    assert len(stats.versions) == MAX_VERSIONS + 1 and stats.versions["other"].requests == 5
    for _ in range(RESERVOIR + 10):
        stats.call("0", "stable", 0.001, [])
    assert len(stats.versions["0"].latency) == RESERVOIR


def test_disagreements_keep_the_newest_n(tmp_path):
    kept = Disagreements(tmp_path / "rollout", keep=3)
    for i in range(7):
        kept.write(b"\xff\xd8jpeg%d" % i, {"n": i})
    records = sorted((tmp_path / "rollout").glob("*.json"))
    assert [json.loads(r.read_text())["n"] for r in records] == [4, 5, 6]
    assert sorted(r.with_suffix(".jpg").read_bytes() for r in records) == [b"\xff\xd8jpeg%d" % i for i in (4, 5, 6)]
    assert len(list((tmp_path / "rollout").iterdir())) == 6
    assert (kept.on_disk, kept.total) == (3, 7)


def test_disagreements_on_an_unwritable_disk_are_logged_once_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")  # as a read-only root filesystem: mkdir fails
    kept = Disagreements(blocker / "rollout", keep=3)
    with caplog.at_level(logging.WARNING, logger="pizzactl.gateway"):
        assert [kept.write(b"jpeg", {}) for _ in range(5)] == [None] * 5
    assert (kept.total, kept.on_disk, kept.failed) == (5, 0, 5)
    assert len(caplog.records) == 1 and "PIZZACTL_ROLLOUT_DIR" in caplog.records[0].getMessage()
