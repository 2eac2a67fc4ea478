"""Typed results (deploy, status, predict, evaluate, up): attributes for notebooks, the old JSON
keys plus a schema version for scripts; and the deploy targets behind one typed registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pizzactl.config import load_settings
from pizzactl.console import print_json
from pizzactl.deploy import rollback, status
from pizzactl.deploy import state as state_mod
from pizzactl.deploy.results import Deployment, Status
from pizzactl.deploy.state import DeployState
from pizzactl.deploy.targets import REGISTRY, Target, target
from pizzactl.errors import ModelNotFoundError, UsageError
from pizzactl.evaluate import Evaluation
from pizzactl.predict import Prediction
from pizzactl.results import SCHEMA
from pizzactl.train.metrics import classification_metrics
from pizzactl.train.results import RunResult, TrainResult


def test_status_with_nothing_deployed_has_attributes_the_old_keys_and_the_schema(isolated):
    st = status(load_settings())
    assert isinstance(st, Status) and st.deployed is False and st.message == "Nothing deployed."
    assert st.to_json() == {
        "schema": SCHEMA,
        "deployed": False,
        "message": "Nothing deployed.",
        "state_file": str(isolated / "state" / "deploy.json"),
    }
    assert st["deployed"] is False and "ready" not in st  # code written against the dict keeps working


def test_status_takes_the_targets_model_version_and_keeps_its_other_fields():
    """local's model server hot-reloads a newer export: the target's answer wins over the record."""
    record = DeployState(target="local", url="http://127.0.0.1:9696", model_version=1, created="2026-12-07T12:00:00")
    st = Status.of(record, {"ready": True, "model_version": 2, "pids": {"gateway": 7}, "serving": {2: 1}})
    assert (st.model_version, st.ready, st.serving, st.details) == (2, True, {2: 1}, {"pids": {"gateway": 7}})
    assert st.as_dict() == {
        "deployed": True,
        "target": "local",
        "url": "http://127.0.0.1:9696",
        "model_version": 2,
        "created": "2026-12-07T12:00:00",
        "ready": True,
        "serving": {2: 1},
        "pids": {"gateway": 7},
    }


def test_a_deployment_flattens_what_the_target_adds():
    answer = {"target": "docker", "url": "http://127.0.0.1:9696", "model_version": 3, "network": "pizzactl"}
    d = Deployment.of(answer)
    assert (d.target, d.url, d.model_version, d.details) == ("docker", answer["url"], 3, {"network": "pizzactl"})
    assert d.to_json() == {"schema": SCHEMA, **answer} and dict(d) == answer


def test_a_prediction_reads_as_attributes_and_as_its_old_dict():
    answer = {
        "source": "a.jpg",
        "label": "pizza",
        "probability": 0.9,
        "model_version": 2,
        "probabilities": {"not_pizza": 0.1, "pizza": 0.9},
        "explanation": "cams/a.png",
    }
    p = Prediction.of(answer)
    assert p.ok and p.label == "pizza" and p.extra == {"explanation": "cams/a.png"}
    assert p.as_dict() == answer == p and p.to_json()["schema"] == SCHEMA
    failed = Prediction.of({"source": "b.jpg", "error": "cannot read the file"})
    assert (
        not failed.ok
        and failed.label is None
        and failed.as_dict() == {"source": "b.jpg", "error": "cannot read the file"}
    )
    assert "error" in failed and "error" not in p


@pytest.mark.parametrize(
    ("y_prob", "classes"),
    [([0.2, 0.7, 0.9, 0.4], ["not_pizza", "pizza"]), ([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]] * 2, ["a", "b", "c"])],
)
def test_an_evaluation_holds_every_figure_the_metrics_give(y_prob, classes):
    """`evaluate` builds its result from `classification_metrics`: a figure added there without a
    field here would be a TypeError at the end of a long evaluation."""
    figures = classification_metrics([0, 1, 1, 0], y_prob, 0.5, classes)
    e = Evaluation(
        **figures,
        model_dir="models/pizza/1",
        version=1,
        backbone="tiny",
        runtime="tensorflow",
        data_dir="data",
        data_hash="abc",
        training_data=False,
        classes=classes,
        positive_class=classes[1] if len(classes) == 2 else None,
        threshold=0.5 if len(classes) == 2 else None,
        misclassified=0,
    )
    assert e.accuracy == figures["accuracy"] and e.per_class == figures["per_class"]
    assert figures.items() <= e.as_dict().items() and e.to_json()["schema"] == SCHEMA


def test_a_train_result_has_attributes_and_the_json_train_prints():
    run = RunResult(
        "20261207-1200-small_cnn", Path("runs/x"), "small_cnn", {"val_accuracy": 0.9}, {"weights": "none"}, 3.0
    )
    result = TrainResult((run,), Path("models/pizza/3"), 4.0, ("not_pizza", "pizza"))
    assert result.best.backbone == "small_cnn" and result.model_dir == Path("models/pizza/3")
    doc = result.to_json()
    assert doc["schema"] == SCHEMA and doc["version"] == 3 and doc["leaderboard"][0]["val_accuracy"] == 0.9


def test_print_json_writes_a_result_anywhere_in_it_as_its_json(capsys):
    print_json({"deployed": Deployment(target="local", url="http://x", model_version=1)})
    assert json.loads(capsys.readouterr().out) == {
        "deployed": {"schema": SCHEMA, "target": "local", "url": "http://x", "model_version": 1}
    }


def test_every_deploy_target_has_every_member_of_the_target_protocol():
    """mypy checks the signatures (the registry's loaders return each module as a `Target`);
    this checks the registry covers the targets and each module has the members at run time."""
    members = [name for name in vars(Target) if not name.startswith("_")]
    assert set(members) == {"preflight", "deploy", "reconfigure", "status", "teardown", "rollback"}
    assert set(REGISTRY) == {"local", "docker", "kind", "cluster"}
    for name in REGISTRY:
        module = target(name)
        assert module.__name__ == f"pizzactl.deploy.targets.{name}"
        assert all(callable(getattr(module, member, None)) for member in members), name


def test_an_unknown_target_is_a_usage_error_with_a_hint():
    with pytest.raises(UsageError) as info:
        target("ecs")
    assert "ecs" in info.value.message and "--target kind, docker or local" in (info.value.hint or "")


def test_the_local_target_rolls_back_only_to_a_version_on_disk(isolated):
    """Local rollback pins a version (deploy/targets/local.py); before it stops anything it
    checks there is one to go to. (The redeploy itself: tests/test_promote_abort.py.)"""
    settings = load_settings()
    for version in (1, 2):
        (isolated / "m" / "pizza" / str(version)).mkdir(parents=True)
        (isolated / "m" / "pizza" / str(version) / "saved_model.pb").write_bytes(b"")
    state_mod.save(
        settings,
        DeployState(target="local", url="http://127.0.0.1:9696", model_dir=str(isolated / "m"), model_version=1),
    )
    assert "none to roll back to" in rollback(settings)["message"]
    with pytest.raises(ModelNotFoundError) as info:
        rollback(settings, to=7)
    assert "no version 7" in info.value.message and "--to" in (info.value.hint or "")
    assert state_mod.load(settings) is not None  # nothing was stopped or forgotten
