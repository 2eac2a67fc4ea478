"""Evaluate: the exported model on real photo bytes (the metrics themselves: test_metrics.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pizzactl.config import Settings
from pizzactl.errors import DataError
from pizzactl.train.metrics import binary_metrics

from support.cli import invoke, run_pizzactl

# --- the CLI without a model ---------------------------------------------------------------


def test_evaluate_without_a_model_exits_3_with_a_hint(isolated, shared_data):
    proc = invoke("evaluate", "--data", str(shared_data), env={"PIZZACTL_MODELS_DIR": str(isolated / "no-models")})
    assert proc.returncode == 3, proc.stderr
    assert "No exported model" in proc.stderr and "pizzactl train" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the exported model on real photos ---------------------------------------------------


@pytest.fixture
def subset(tmp_path, shared_photos) -> Path:
    """20 real photos the tiny model was not fitted on, linked (not copied) into class folders."""
    root = tmp_path / "subset"
    for cls in ("pizza", "not_pizza"):
        (root / cls).mkdir(parents=True)
        for path in shared_photos[cls][100:110]:
            (root / cls / path.name).symlink_to(path)
    return root


def _expected_probabilities(tiny_classifier, paths):
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize

    pixels = tf.stack([decode_resize(tf.constant(p.read_bytes()), 64) for p in paths])
    return np.asarray(tiny_classifier.model(pixels, training=False)).reshape(-1)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["auto", "tensorflow"])
def test_evaluate_runs_the_exported_model_on_raw_bytes(subset, tiny_model, tiny_classifier, tmp_path, runtime):
    """auto runs what the builtin model server runs: the float LiteRT artefact export kept for the tiny model."""
    from pizzactl.evaluate import evaluate

    errors_csv = tmp_path / "out" / "errors.csv"
    settings = Settings(data_dir=subset, models_dir=tiny_model, model_runtime=runtime)
    m = evaluate(settings, errors_csv=errors_csv, progress=False)
    assert m["runtime"] == {"auto": "litert", "tensorflow": "tensorflow"}[runtime]

    paths = sorted((subset / "not_pizza").iterdir()) + sorted((subset / "pizza").iterdir())
    want = binary_metrics([0] * 10 + [1] * 10, _expected_probabilities(tiny_classifier, paths), 0.5)
    assert m["n"] == 20 and m["confusion_matrix"] == want["confusion_matrix"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert m[key] == pytest.approx(want[key], abs=1e-6), key
    assert m["model_dir"] == str(tiny_model / "pizza" / "1") and m["version"] == 1
    assert m["classes"] == ["not_pizza", "pizza"] and m["threshold"] == 0.5
    assert m["failed"] == []

    with errors_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    (_tn, fp), (fn, _tp) = m["confusion_matrix"]
    assert len(rows) == m["misclassified"] == fp + fn
    for row in rows:
        assert row["true"] != row["predicted"]
        assert (float(row["probability"]) >= 0.5) == (row["predicted"] == "pizza")
        assert Path(row["path"]).parent.name == row["true"]


@pytest.mark.slow
def test_a_runtime_the_model_lacks_is_refused_not_replaced(subset, tf_only_model):
    """The model server falls back to TensorFlow; a measurement must not: it would score another runtime."""
    from pizzactl.errors import UsageError
    from pizzactl.evaluate import evaluate

    settings = Settings(data_dir=subset, models_dir=tf_only_model, model_runtime="litert")
    with pytest.raises(UsageError, match="cannot run on litert") as info:
        evaluate(settings, progress=False)
    assert "pizzactl export" in info.value.hint
    assert evaluate(Settings(data_dir=subset, models_dir=tf_only_model), progress=False)["runtime"] == "tensorflow"


@pytest.mark.slow
def test_an_artefact_that_failed_exports_check_is_scored_when_asked_for_by_name(subset, tiny_model, caplog):
    """int8 of the tiny model failed the check (no held-out images): auto never runs it, --runtime does,
    saying why it failed; so a user can judge it on their own held-out photos."""
    from pizzactl.evaluate import evaluate

    caplog.set_level("WARNING", logger="pizzactl.modelserver")
    m = evaluate(Settings(data_dir=subset, models_dir=tiny_model, model_runtime="litert-int8"), progress=False)
    assert m["runtime"] == "litert-int8" and m["n"] == 20
    assert "did not pass export's check (no held-out images" in caplog.text


@pytest.mark.slow
def test_an_image_the_model_cannot_decode_is_skipped_and_reported(subset, tiny_model):
    from PIL import Image

    from pizzactl.evaluate import evaluate

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="TIFF")  # Pillow reads TIFF, TF does not
    (subset / "pizza" / "really-a-tiff.jpg").write_bytes(buf.getvalue())
    m = evaluate(Settings(data_dir=subset, models_dir=tiny_model), progress=False)
    assert m["n"] == 20
    assert [Path(f["path"]).name for f in m["failed"]] == ["really-a-tiff.jpg"]


@pytest.mark.slow
def test_evaluate_refuses_data_whose_classes_are_not_the_models(tmp_path, tiny_model, shared_photos):
    from pizzactl.evaluate import evaluate

    for cls in ("cats", "dogs"):
        (tmp_path / "other" / cls).mkdir(parents=True)
        (tmp_path / "other" / cls / "a.jpg").symlink_to(shared_photos["pizza"][0])
    with pytest.raises(DataError, match="not among the model's classes") as info:
        evaluate(Settings(data_dir=tmp_path / "other", models_dir=tiny_model), progress=False)
    assert "['cats', 'dogs']" in info.value.message and "not_pizza, pizza" in info.value.hint


@pytest.mark.slow
def test_evaluate_cli_prints_json_for_scripts(subset, tiny_model):
    import json

    result = invoke("evaluate", str(tiny_model / "pizza" / "1"), "--data", str(subset), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["n"] == 20 and sum(map(sum, doc["confusion_matrix"])) == 20
    assert 0.0 <= doc["roc_auc"] <= 1.0


# Start-up lines as TensorFlow writes them to file descriptor 2 during its import (absl's format,
# before absl is initialised). Which ones a real import writes depends on the machine: the oneDNN
# line only where TensorFlow turns oneDNN on (CPUs with AVX-512), the CUDA lines only with CUDA
# libraries around. So the test writes its own, from a hook that runs as `import tensorflow` starts.
START_UP_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795551479.930577   20609 port.cc:153] pizzactl-test: oneDNN custom operations are on.\n"
)
TENSORFLOW_IMPORT_HOOK = f"""
import os, sys


class WriteStartUpNoise:
    \"\"\"A meta-path finder that finds nothing: it writes TensorFlow-like start-up lines to fd 2 once.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            sys.meta_path.remove(self)
            os.write(2, {START_UP_NOISE!r}.encode())
        return None


sys.meta_path.insert(0, WriteStartUpNoise())
"""


@pytest.mark.slow
def test_tensorflow_start_up_info_lines_stay_off_stderr_unless_debug(subset, tiny_model, tmp_path):
    """TF 2.19+ logs 'oneDNN custom operations are on' etc. before absl is initialised;
    TF_CPP_MIN_LOG_LEVEL cannot silence it, pizzactl filters it. --debug shows everything."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(TENSORFLOW_IMPORT_HOOK)
    args = [
        "evaluate",
        str(tiny_model / "pizza" / "1"),
        "--data",
        str(subset),
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIZZACTL_", "TF_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    quiet = run_pizzactl(*args, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "absl::InitializeLog" not in quiet.stderr and "oneDNN" not in quiet.stderr, quiet.stderr
    assert json.loads(quiet.stdout)["n"] == 20  # the hook did not stop the real import
    loud = run_pizzactl("--debug", *args, env=env)
    assert loud.returncode == 0, loud.stderr
    assert START_UP_NOISE in loud.stderr  # the filter had something to filter


def test_only_verbs_that_load_tensorflow_import_it_up_front():
    from pizzactl.tfimport import NOISE, needs_tensorflow

    assert needs_tensorflow(["train", "--data", "x"]) and needs_tensorflow(["bench", "train"])
    assert needs_tensorflow(["predict", "a.jpg", "--explain", "out"])
    assert needs_tensorflow(["bench", "serve", "--json"]) and not needs_tensorflow(["predict", "a.jpg"])
    assert not needs_tensorflow(["deploy", "--target", "local"]) and not needs_tensorflow(["data", "split", "d"])
    assert (
        not needs_tensorflow(["train", "--help"]) and not needs_tensorflow([]) and not needs_tensorflow(["--version"])
    )
    assert NOISE.match("I0000 00:00:1795551479.930577   20609 cudart_stub.cc:31] Could not find cuda drivers")
    assert NOISE.match("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not NOISE.match("E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory")
    assert not NOISE.match("Error: something a user must read")


@pytest.mark.slow
def test_quiet_import_leaves_stderr_clean_on_a_cpu_only_machine_but_keeps_real_errors():
    """The model server's log level (2) shows TF's ERROR lines; the CUDA probe's "failed call to
    cuInit" is one on every machine without a GPU. It is dropped only when no GPU turned up."""
    from pizzactl.tfimport import NO_GPU

    code = (
        "import sys; from pizzactl.tfimport import import_quietly; import_quietly()\n"
        "import tensorflow as tf; tf.constant(1.0) + 1\n"
        "sys.stderr.write('after import\\n')"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "after import\n"
    line = "E0000 00:00:1795572476.280190    6088 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
    assert NO_GPU.match(line)
    assert not NO_GPU.match("E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory")


def test_tensorflow_log_level_is_set_in_one_place_and_a_users_value_wins():
    """tfimport.quiet_tf_logs: level 2 for pizzactl's processes and children, 3 for the CLI (not
    under --debug), never over a TF_CPP_MIN_LOG_LEVEL the user set."""
    from pizzactl.serving.processes import child_env
    from pizzactl.tfimport import quiet_tf_logs

    env: dict[str, str] = {}
    quiet_tf_logs(env)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    mine = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    quiet_tf_logs(mine, level="3")
    assert mine == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    code = (
        "import os, sys; sys.modules['tensorflow'] = object()\n"  # stands in for an imported TensorFlow
        "from pizzactl.tfimport import import_quietly; import_quietly()\n"
        "from pizzactl.serving.processes import child_env\n"
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], child_env()['TF_CPP_MIN_LOG_LEVEL'])"
    )
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "2"], done.stderr
    assert child_env({"X": "1"})["X"] == "1"
