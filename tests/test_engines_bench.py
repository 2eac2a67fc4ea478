"""benchmarks/engines.py: every engine is judged by export's own rule, one-sided, at its precision's tolerance."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ENGINES = Path(__file__).resolve().parents[1] / "benchmarks" / "engines.py"


@pytest.fixture(scope="module")
def engines():
    spec = importlib.util.spec_from_file_location("engines", ENGINES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answers(p):
    p = np.asarray(p, np.float32)
    return np.stack([1 - p, p], axis=1), (p >= 0.5).astype(int)


TRUTH = np.array([1] * 50 + [0] * 50)
SAVED = [0.9] * 50 + [0.1] * 50  # the SavedModel gets every photo right


def test_an_int8_engine_wrong_on_five_photos_the_savedmodel_got_right_is_refused(engines):
    worse = [0.4] * 5 + SAVED[5:]
    want = {"check": answers([0.2, 0.8]), "holdout": answers(SAVED)}
    got = {"check": answers([0.2, 0.8]), "holdout": answers(worse)}
    entry = engines.verdict(engines.RULE["onnx-int8"], want, got, TRUTH)
    assert not entry["ok"] and entry["flips"] == {"worse": 5, "better": 0, "p_worse": 1 / 32}
    assert "worse on held-out photos" in entry["reason"]


def test_a_better_engine_is_accepted_and_a_float_one_is_held_to_float_tolerance(engines):
    saved = [0.4] * 3 + SAVED[3:]  # the SavedModel misses 3 pizzas
    want = {"check": answers([0.2]), "holdout": answers(saved)}
    better = {"check": answers([0.2]), "holdout": answers([0.6] * 3 + SAVED[3:])}
    assert engines.verdict(engines.RULE["openvino-int8"], want, better, TRUTH)["ok"]  # |dp| 0.2 on 3 of 101: under p95
    float_engine = engines.verdict(engines.RULE["openvino"], want, better, TRUTH)
    assert not float_engine["ok"] and "100th percentile" in float_engine["reason"]
    assert engines.RULE["openvino-bf16"] == "litert-int8" and engines.RULE["onnx"] == "litert"


def test_a_table_row_per_engine_even_for_one_that_failed_to_convert(engines):
    failed = engines.row("onnx", {"error": "ValueError: no converter"})
    assert failed.count("|") == 10 and "failed: ValueError" in failed
