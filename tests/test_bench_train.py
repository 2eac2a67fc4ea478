"""`pizzactl bench train`: plain model.fit over images vs the cached-feature path, one report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pizzactl.bench.train import _pick
from pizzactl.cli import main


def records(n_per_class: int):
    return [SimpleNamespace(label=label, path=f"{label}/{i}.jpg") for label in (0, 1) for i in range(n_per_class)]


def test_limit_keeps_both_classes_interleaved():
    picked = _pick(records(10), 5)
    assert len(picked) == 5
    assert [r.label for r in picked] == [0, 1, 0, 1, 0]
    assert len({r.path for r in picked}) == 5


def test_no_limit_or_a_large_one_keeps_everything():
    assert len(_pick(records(3), None)) == 6
    assert len(_pick(records(3), 100)) == 6


@pytest.mark.slow
def test_bench_train_json_reports_both_timings_and_their_ratios(isolated, shared_data, capsys):
    with pytest.raises(SystemExit) as code:
        main(
            [
                "bench",
                "train",
                "--data",
                str(shared_data),
                "--backbone",
                "mobilenet_v3_small",
                "--weights",
                "none",
                "--epochs",
                "2",
                "--limit",
                "20",
                "--json",
            ]
        )
    assert code.value.code in (None, 0)
    res = json.loads(capsys.readouterr().out)
    for key in (
        "plain_seconds",
        "cached_seconds",
        "forward_pass_seconds",
        "speedup",
        "backbone",
        "n_images",
        "epochs",
        "weights",
    ):
        assert key in res, key
    assert res["backbone"] == "mobilenet_v3_small" and res["weights"] == "none"
    assert res["n_images"] == 20 and res["epochs"] == 2
    assert 0 < res["forward_pass_seconds"] <= res["cached_seconds"]
    assert res["speedup"] == pytest.approx(res["plain_seconds"] / res["cached_seconds"], rel=0.02)
    assert set(res["goals"]) == {"speedup >= 10", "cached <= 1.3 x forward"}
