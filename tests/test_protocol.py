"""benchmarks/protocol.py: decisions come from inner validation only, scores from outer folds."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parents[1] / "benchmarks" / "protocol.py"


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("protocol", PROTOCOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_predictions(work: Path, fold: int, backbone: str, rows) -> None:
    """rows: (split, path, label, p) with the same p for every view."""
    out = work / "predictions" / f"fold{fold}-{backbone}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fold", "backbone", "split", "path", "label", "plain", "flip", "zoom", "zoomflip"])
        for split, path, label, p in rows:
            writer.writerow([fold, backbone, split, path, label, p, p, p, p])


def test_the_decision_is_made_on_inner_validation_even_when_outer_folds_disagree(tmp_path, protocol):
    (tmp_path / "protocol.json").write_text(json.dumps({"seed": 0, "folds": 2}))
    inner = [("inner_val", f"v{i}.jpg", i % 2, 0.9 if i % 2 else 0.1) for i in range(10)]
    for fold in (0, 1):
        outer = [("outer_test", f"f{fold}-{i}.jpg", i % 2) for i in range(10)]
        # "good_inner" is perfect on inner validation and wrong on 4 of 10 outer photos;
        # "good_outer" misses 2 inner photos and none outer: a protocol that peeked would pick it
        write_predictions(
            tmp_path,
            fold,
            "good_inner",
            inner
            + [(s, p, y, (0.9 if y else 0.1) if i >= 4 else (0.1 if y else 0.9)) for i, (s, p, y) in enumerate(outer)],
        )
        inner_bad = [(s, p, y, q if i >= 2 else 1 - q) for i, (s, p, y, q) in enumerate(inner)]
        write_predictions(tmp_path, fold, "good_outer", inner_bad + [(s, p, y, 0.8 if y else 0.2) for s, p, y in outer])
    text = protocol.report(type("Args", (), {"work": str(tmp_path)})())
    assert "fold 0: good_inner, views plain" in text and "fold 1: good_inner, views plain" in text
    decided = next(line for line in text.splitlines() if line.startswith("| **decided on inner folds, threshold 0.5**"))
    assert "| 0.6000 ± 0.0000" in decided and "8 of 20" in decided
    fixed_outer = next(line for line in text.splitlines() if line.startswith("| fixed: good_outer, views plain |"))
    assert "| 1.0000 ± 0.0000" in fixed_outer  # shown for information, never chosen on


def test_a_backbone_missing_from_a_fold_is_left_out_and_named(tmp_path, protocol):
    """A run stopped half-way (one backbone done on fold 0 only) still reports the complete ones."""
    (tmp_path / "protocol.json").write_text(json.dumps({"seed": 0, "folds": 2}))
    rows = {}
    for fold in (0, 1):
        rows[fold] = [
            (s, f"{s}-{fold}-{i}.jpg", i % 2, 0.9 if i % 2 else 0.1)
            for s in ("inner_val", "outer_test")
            for i in range(6)
        ]
        write_predictions(tmp_path, fold, "done", rows[fold])
    write_predictions(tmp_path, 0, "half", rows[0])
    text = protocol.report(type("Args", (), {"work": str(tmp_path)})())
    assert "backbones done;" in text and "Left out (not run on every fold): half." in text
    assert "fixed: half" not in text and "fixed: done, views plain" in text
