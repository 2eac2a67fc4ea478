"""`pizzactl runs list/show` over run directories on disk (no TensorFlow involved)."""

from __future__ import annotations

import json

import pytest

from pizzactl.cli import main
from pizzactl.config import load_settings
from pizzactl.errors import PizzaError
from pizzactl.train.runs import list_runs, show_run


def make_run(runs_dir, run_id, created, accuracy=None, backbone="small_cnn"):
    run = runs_dir / run_id
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "created": created,
                "backbone": backbone,
                "weights": "none",
                "image_size": 64,
                "classes": ["not_pizza", "pizza"],
            }
        )
    )
    if accuracy is not None:
        metrics = {
            "val_accuracy": accuracy,
            "val_f1": accuracy,
            "train_seconds": 3.5,
            "confusion_matrix": [[5, 1], [2, 4]],
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "model.keras").write_bytes(b"not really a model")
    return run


@pytest.fixture
def runs(isolated):
    runs_dir = isolated / "runs"
    make_run(runs_dir, "20261124-100000-small_cnn", "2026-11-24T10:00:00+00:00", 0.81)
    make_run(runs_dir, "20261124-120000-efficientnet_lite0", "2026-11-24T12:00:00+00:00", 0.97, "efficientnet_lite0")
    make_run(runs_dir, "20261124-110000-small_cnn", "2026-11-24T11:00:00+00:00")  # interrupted: no metrics
    (runs_dir / "stray-folder").mkdir()  # not a run: no config.json
    return runs_dir


def test_list_runs_is_newest_first_and_marks_unfinished_runs(runs):
    listed = list_runs(load_settings())
    assert [r["run_id"] for r in listed] == [
        "20261124-120000-efficientnet_lite0",
        "20261124-110000-small_cnn",
        "20261124-100000-small_cnn",
    ]
    assert [r["status"] for r in listed] == ["finished", "incomplete", "finished"]
    assert listed[0]["val_accuracy"] == 0.97 and listed[0]["backbone"] == "efficientnet_lite0"


def test_list_runs_without_a_runs_dir_is_empty(isolated):
    assert list_runs(load_settings()) == []


def test_show_run_accepts_a_unique_prefix_and_a_directory(runs):
    run = show_run(load_settings(), "20261124-12")
    assert run["run_id"] == "20261124-120000-efficientnet_lite0"
    assert run["metrics"]["val_accuracy"] == 0.97
    assert run["config"]["backbone"] == "efficientnet_lite0"
    assert {"config.json", "metrics.json", "model.keras"} <= set(run["files"])
    by_dir = show_run(load_settings(), str(runs / "20261124-100000-small_cnn"))
    assert by_dir["run_id"] == "20261124-100000-small_cnn"


def test_show_run_with_an_ambiguous_prefix_lists_the_candidates(runs):
    with pytest.raises(PizzaError) as info:
        show_run(load_settings(), "20261124-1")
    assert "ambiguous" in info.value.message
    assert info.value.hint


def test_show_unknown_run_says_how_to_find_runs(runs):
    with pytest.raises(PizzaError) as info:
        show_run(load_settings(), "nope")
    assert "runs list" in info.value.hint


def test_runs_cli_json_and_table(runs, capsys):
    with pytest.raises(SystemExit) as code:
        main(["runs", "list", "--json"])
    assert code.value.code in (None, 0)
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["run_id"].endswith("efficientnet_lite0")

    with pytest.raises(SystemExit):
        main(["runs", "show", "20261124-10", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"]["confusion_matrix"] == [[5, 1], [2, 4]]

    with pytest.raises(SystemExit):
        main(["runs", "list"])
    table = capsys.readouterr().out
    assert "20261124-100000-small_cnn" in table and "incomplete" in table


def test_runs_show_unknown_exits_with_a_hint(runs, capsys):
    with pytest.raises(SystemExit) as code:
        main(["runs", "show", "does-not-exist"])
    assert code.value.code == 3
    assert "Hint" in capsys.readouterr().err
