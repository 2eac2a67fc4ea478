"""Any number of classes, end to end (issue 12): train, evaluate, deploy local, predict.

Two generated data sets (small coloured JPEGs, one colour per class): three classes, trained
with small_cnn from scratch and mobilenet_v3_small fine-tuned on images (a leaderboard), and
five classes whose names are not identifiers ("hot dog", "crème brûlée", "sushi 🍣"), trained
with efficientnet_lite0's recipe (cached features, averaged heads, fine-tuning on cached maps).
Both with random weights at a small size: what is checked is the contract, not accuracy.
The fast tests below them check the parts that need no model: bad data refused before
training, and the gateway's and the CLI's view of the probabilities.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pizzactl.errors import DataError

from support.cli import invoke, make_env, overrides, run_pizzactl
from support.photos import make_classes


def run_cli(*args: str) -> dict | list:
    """`pizzactl ... --json` in this process (TensorFlow is already loaded); its parsed stdout."""
    proc = invoke(*args, "--json")
    assert proc.returncode == 0, proc.stdout
    return json.loads(proc.stdout)


def check_answer(answer: dict, classes: list[str]) -> None:
    """The contract for more than two classes: probabilities of every class, label the most probable."""
    probabilities = answer["probabilities"]
    assert list(probabilities) == classes  # every class, in the model's order
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert answer["label"] == max(probabilities, key=probabilities.__getitem__)
    assert answer["probability"] == pytest.approx(probabilities[answer["label"]], abs=1e-6)


SETS = {
    "three": {"classes": ["other", "pizza", "salad"], "backbone": "small_cnn,mobilenet_v3_small", "fine_tune": "1"},
    "five": {
        "classes": ["crème brûlée", "hot dog", "pizza", "salad", "sushi 🍣"],
        "backbone": "efficientnet_lite0",
        "fine_tune": "1",
        "flags": ["--no-augment"],  # plain and mirrored views cached: the same path, fewer views
    },
}


@pytest.fixture(scope="module", params=sorted(SETS))
def trained(request, tmp_path_factory):
    """`pizzactl train --json` on a generated set of N classes, then `deploy --target local`; torn down after."""
    spec = SETS[request.param]
    root = tmp_path_factory.mktemp(f"classes-{request.param}")
    data = make_classes(root / "data", spec["classes"])
    env = make_env(root, root / "models")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("PIZZACTL_MODELS_DIR", "PIZZACTL_RUNS_DIR", "PIZZACTL_CACHE_DIR", "PIZZACTL_STATE_DIR"):
            mp.setenv(key, env[key])
        mp.chdir(root)
        result = run_cli(
            "train",
            "--data",
            str(data),
            "--backbone",
            spec["backbone"],
            "--weights",
            "none",
            "--image-size",
            "64",
            "--epochs",
            "2",
            "--fine-tune-epochs",
            spec["fine_tune"],
            *spec.get("flags", []),
        )
        evaluation = run_cli(
            "evaluate", result["model_dir"], "--data", str(data), "--confusion-matrix", str(root / "cm.png")
        )
        subset = root / "subset"  # a test set with two of the classes
        subset.mkdir()
        for name in spec["classes"][-2:]:
            (subset / name).symlink_to(data / name, target_is_directory=True)
        partial = run_cli("evaluate", result["model_dir"], "--data", str(subset))
    deployed = run_pizzactl("deploy", "--target", "local", "--json", "--timeout", "240", env=env, cwd=root)
    try:
        yield {
            **spec,
            "root": root,
            "data": data,
            "env": env,
            "result": result,
            "evaluate": evaluation,
            "partial": partial,
            "deploy": deployed,
        }
    finally:
        run_pizzactl("teardown", env=env, cwd=root, timeout=60)


@pytest.mark.slow
def test_training_exports_a_softmax_model_with_every_class(trained):
    classes, result = trained["classes"], trained["result"]
    assert result["classes"] == classes
    assert len(result["leaderboard"]) == len(trained["backbone"].split(","))
    meta = json.loads((Path(result["model_dir"]) / "assets.extra" / "pizzactl.json").read_text())
    assert meta["classes"] == classes and meta["threshold"] is None and meta["positive_class"] is None
    assert meta["signatures"]["serving_default"]["outputs"]["probabilities"]["shape"] == [None, len(classes)]
    assert meta["runtimes"]["litert"]["ok"] is True  # so evaluate and the model server below run LiteRT
    for run in result["leaderboard"]:
        run_dir = Path(run["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert len(metrics["confusion_matrix"]) == len(classes)
        assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_val"] == len(classes) * 2
        assert list(metrics["per_class"]) == classes and metrics["threshold"] is None
        assert metrics["val_f1"] == pytest.approx(sum(c["f1"] for c in metrics["per_class"].values()) / len(classes))


@pytest.mark.slow
def test_every_run_writes_tensorboard_scalars_per_phase_and_the_confusion_matrix(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in trained["result"]["leaderboard"]:
        logdir = Path(run["run_dir"]) / "tensorboard"
        history = list(csv.DictReader((Path(run["run_dir"]) / "history.csv").open()))
        phases = {row["phase"] for row in history}
        tags = {}
        for split in ("train", "validation"):
            acc = EventAccumulator(str(logdir / split), size_guidance={"tensors": 0})
            acc.Reload()
            tags[split] = {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in acc.Tags()["tensors"]}
            for phase in phases:
                epochs = [int(row["epoch"]) for row in history if row["phase"] == phase]
                assert [e.step for e in acc.Tensors(f"{phase}/loss")] == epochs
                assert tags[split][f"{phase}/accuracy"] == "scalars"
        assert tags["validation"]["confusion_matrix"] == "images"
        assert tags["validation"]["final/val_accuracy"] == "scalars"
        assert tags["train"]["config"] == "text"


@pytest.mark.slow
def test_evaluate_reports_per_class_figures_and_an_n_by_n_confusion_matrix(trained):
    classes, m = trained["classes"], trained["evaluate"]
    assert m["classes"] == classes and m["n"] == 8 * len(classes)
    assert m["runtime"] in ("litert", "litert-int8")  # auto: what the model server runs
    assert [sum(row) for row in m["confusion_matrix"]] == [8] * len(classes)  # rows: the true class
    assert list(m["per_class"]) == classes
    assert m["macro_f1"] == pytest.approx(sum(c["f1"] for c in m["per_class"].values()) / len(classes))
    assert m["accuracy"] == pytest.approx(sum(m["confusion_matrix"][k][k] for k in range(len(classes))) / m["n"])
    assert m["roc_auc"] is None or 0.0 <= m["roc_auc"] <= 1.0
    assert (trained["root"] / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    partial = trained["partial"]  # two of the classes: rows and columns still follow the model's classes
    assert partial["n"] == 16 and [sum(row) for row in partial["confusion_matrix"]] == [0] * (len(classes) - 2) + [8, 8]
    assert partial["per_class"][classes[0]]["support"] == 0 and partial["per_class"][classes[0]]["roc_auc"] is None


@pytest.mark.slow
def test_deployed_model_answers_every_class_through_the_gateway_and_the_model_server(trained):
    import base64

    import httpx

    assert trained["deploy"].returncode == 0, trained["deploy"].stderr
    url = json.loads(trained["deploy"].stdout)["url"]
    photo = next((trained["data"] / trained["classes"][-1]).iterdir()).read_bytes()
    answer = httpx.post(f"{url}/predict", json={"image_b64": base64.b64encode(photo).decode()}, timeout=30).json()
    check_answer(answer, trained["classes"])
    model_url = f"http://127.0.0.1:{trained['env']['PIZZACTL_MODEL_PORT']}/v1/models/pizza:predict"
    metadata = httpx.get(model_url.replace(":predict", "/metadata")).json()["metadata"]
    assert metadata["runtime"] in ("litert", "litert-int8")
    (row,) = httpx.post(model_url, json={"instances": [{"b64": base64.b64encode(photo).decode()}]}).json()[
        "predictions"
    ]
    assert row["label"] == answer["label"] and len(row["probabilities"]) == len(trained["classes"])


@pytest.mark.slow
def test_predict_json_and_csv_give_every_class_probability(trained, tmp_path):
    out_csv = tmp_path / "predictions.csv"
    photos = [str(sorted((trained["data"] / name).iterdir())[0]) for name in trained["classes"]]
    proc = run_pizzactl("predict", *photos, "--json", "--csv", str(out_csv), env=trained["env"], cwd=trained["root"])
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["source"] for r in results] == photos
    for r in results:
        check_answer(r, trained["classes"])
    with open(out_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [f"P({c})" for c in trained["classes"]] == [k for k in rows[0] if k.startswith("P(")]
    for row, r in zip(rows, results, strict=True):
        assert row["label"] == r["label"]
        assert float(row[f"P({r['label']})"]) == pytest.approx(r["probability"])
    table = run_pizzactl("predict", photos[0], env=trained["env"], cwd=trained["root"])
    assert table.returncode == 0 and results[0]["label"] in table.stdout


# --- fast: bad data is refused before any training ---------------------------------------------


def train_settings(data: Path, tmp_path: Path):
    from pizzactl.config import load_settings

    dirs = {f"{name}_dir": str(tmp_path / name) for name in ("models", "runs", "cache")}
    return load_settings({"data_dir": str(data), "backbone": "small_cnn", "weights": "none", **dirs}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("layout", "message", "hint"),
    [
        ({"pizza": 3}, "1 class folder(s) (pizza)", "one sub-folder per class"),
        ({"pizza": 3, "salad": 0, "other": 3}, "No usable images for class(es) salad", "salad"),
        ({"pizza": 3, "salad": 1, "other": 3}, "'salad' has 1 usable image(s): too few to split", "Add photos"),
        ({"pizza": 3, "bad\tname": 3}, "control characters", "Rename the folder"),
    ],
)
def test_bad_data_fails_before_training_with_a_hint(tmp_path, layout, message, hint):
    from pizzactl.train import train

    data = tmp_path / "data"
    for name, n in layout.items():
        (data / name).mkdir(parents=True)
        if n:
            make_classes(tmp_path / "tmp", [name], per_class=n)
            for f in (tmp_path / "tmp" / name).iterdir():
                f.rename(data / name / f.name)
    with pytest.raises(DataError) as info:
        train(train_settings(data, tmp_path), show_progress=False)
    assert message in info.value.message and hint in info.value.hint
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.slow  # `pizzactl train` imports TensorFlow (it checks for it before it reads any data)
def test_the_cli_prints_the_hint_and_exits_with_the_user_error_code(tmp_path):
    from pizzactl.errors import EXIT_USER

    data = make_classes(tmp_path / "data", ["pizza"], per_class=2)
    proc = invoke("train", "--data", str(data), env=overrides(make_env(tmp_path, tmp_path / "models")), cwd=tmp_path)
    assert proc.returncode == EXIT_USER
    assert "a classifier needs at least two" in proc.stderr and "one sub-folder per class" in proc.stderr


def test_class_names_with_spaces_and_unicode_are_labels_as_they_are(tmp_path):
    from pizzactl.data.dataset import load_dataset, stratified_split

    names = ["crème brûlée", "hot dog", "sushi 🍣"]
    dataset = load_dataset(make_classes(tmp_path / "data", names, per_class=3))
    assert dataset.classes == tuple(sorted(names))
    train, val = stratified_split(dataset, 0.2, seed=1)
    assert sorted(r.class_name for r in val) == sorted(names)  # one of each: stratified
    assert len(train) == 6


def test_data_split_and_report_handle_n_classes(tmp_path):
    from pizzactl.data.report import report
    from pizzactl.data.split import split

    names = ["a", "b", "c", "d"]
    data = make_classes(tmp_path / "data", names, per_class=10)
    result = split(data, tmp_path / "split", test_fraction=0.2, seed=0)
    assert result.counts == {"train": dict.fromkeys(names, 8), "test": dict.fromkeys(names, 2)}
    rep = report(root=tmp_path / "split" / "test")
    assert {c: v["images"] for c, v in rep["classes"].items()} == dict.fromkeys(names, 2)
    assert rep["too_small_to_split"] == []
    (tmp_path / "split" / "test" / "e").mkdir()
    assert report(root=tmp_path / "split" / "test")["too_small_to_split"] == ["e"]


@pytest.mark.slow
def test_frozen_heads_on_cached_features_train_three_classes(tmp_path):
    """The one strategy the sets above do not run alone: frozen_head (no fine-tuning)."""
    import numpy as np
    import tensorflow as tf

    from pizzactl.config import load_settings
    from pizzactl.train import train

    data = make_classes(tmp_path / "data", ["a", "b", "c"], per_class=6)
    dirs = {f"{name}_dir": str(tmp_path / name) for name in ("models", "runs", "cache")}
    flags = {"backbone": "mobilenet_v3_small", "weights": "none", "image_size": 64, "epochs": 2}
    result = train(load_settings({"data_dir": str(data), **flags, **dirs}, cwd=tmp_path), show_progress=False)
    assert result.best.config["strategy"] == "frozen_head" and result.features["computed"] > 0
    photos = [sorted((data / c).iterdir())[0].read_bytes() for c in ("a", "b", "c")]
    out = tf.saved_model.load(str(result.model_dir)).signatures["serving_default"](image_bytes=tf.constant(photos))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_softmax_head_trains_on_one_hot_targets_and_validates_as_keras_predicts():
    """The head's numpy validation (softmax of x @ W + b) is what the Keras head answers."""
    import keras
    import numpy as np

    from pizzactl.train.heads import fit_head, targets
    from pizzactl.train.metrics import log_loss

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    x = (rng.normal(size=(240, 6)) + 1.5 * np.eye(3, 6)[labels]).astype("float32")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs["val_loss"])

    keras.utils.set_random_seed(0)
    y = targets(labels, 3)
    head, _ = fit_head(
        x[:180],
        y[:180],
        x[180:],
        y[180:],
        epochs=6,
        batch_size=32,
        lr=0.05,
        dropout=0.0,
        patience=6,
        callbacks=[Record()],
    )
    assert head.output_shape == (None, 3) and y.shape == (240, 3)
    p = head.predict(x[180:], verbose=0)
    assert log_loss(labels[180:], p) == pytest.approx(min(seen), rel=1e-4)  # the restored best epoch
    assert np.mean(p.argmax(axis=1) == labels[180:]) > 0.6


# --- fast: the gateway's and the CLI's view of the probabilities --------------------------------


def test_gateway_names_the_probabilities_by_class():
    from pizzactl.serving.client import Prediction
    from pizzactl.serving.pipeline import class_probabilities

    three = Prediction("b", 0.7, (0.1, 0.7, 0.2))
    assert class_probabilities(three, ["a", "b", "c"]) == {"a": 0.1, "b": 0.7, "c": 0.2}
    assert class_probabilities(three, []) == {"0": 0.1, "1": 0.7, "2": 0.2}  # TF Serving, no PIZZACTL_CLASSES
    old_binary = Prediction("pizza", 0.75)  # a version exported before `probabilities`
    assert class_probabilities(old_binary, ["not_pizza", "pizza"]) == {"not_pizza": 0.25, "pizza": 0.75}
    assert class_probabilities(old_binary, []) == {}


def test_predict_table_shows_p_of_the_label_and_the_top_classes():
    from pizzactl.predict import label_probability, top_classes

    binary = {"label": "not_pizza", "probability": 0.2, "probabilities": {"not_pizza": 0.8, "pizza": 0.2}}
    assert label_probability(binary) == 0.8  # `probability` is P(pizza) for the binary model
    many = {"a": 0.1, "b": 0.5, "c": 0.2, "d": 0.15, "e": 0.05}
    assert top_classes(many) == "b 0.50 · c 0.20 · d 0.15 · 2 more"
