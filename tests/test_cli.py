"""The CLI surface: every command has --help, help never imports TensorFlow, errors have hints and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer.main

from pizzactl import __version__
from pizzactl.cli import app
from pizzactl.errors import EXIT_FAILURE, EXIT_INTERNAL, EXIT_USAGE, EXIT_USER

from support.cli import run_pizzactl


def _command_paths(group=None, prefix=()):
    """Every command path of the typer app, e.g. ('data', 'report')."""
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield path
            yield from _command_paths(cmd, path)
        else:
            yield path


ALL_COMMANDS = sorted(_command_paths())


def run(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return run_pizzactl(*args, env=full_env, cwd=cwd)


def test_every_verb_the_readme_promises_exists():
    names = {" ".join(p) for p in ALL_COMMANDS}
    expected = {
        "train",
        "export",
        "evaluate",
        "serve",
        "build",
        "deploy",
        "status",
        "teardown",
        "predict",
        "doctor",
        "data download",
        "data report",
        "runs list",
        "runs show",
        "config show",
        "bench train",
        "bench serve",
    }
    assert expected <= names


HEAVY = ("tensorflow", "keras", "docker", "kubernetes", "matplotlib", "fastapi")


@pytest.mark.parametrize("path", [(), *ALL_COMMANDS], ids=lambda p: " ".join(p) or "root")
def test_help_works_and_imports_nothing_heavy(path):
    code = (
        "import sys\n"
        "from pizzactl.cli import main\n"
        "try:\n"
        f"    main({[*list(path), '--help']!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_unknown_flag_is_a_usage_error():
    proc = run("train", "--no-such-flag")
    assert proc.returncode == EXIT_USAGE
    assert "No such option" in proc.stderr


def test_user_error_prints_message_and_hint_without_traceback(tmp_path):
    proc = run("train", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == EXIT_USER, proc.stderr
    assert "Error:" in proc.stderr and "Hint:" in proc.stderr
    assert "--data" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run("--debug", "train", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == EXIT_USER
    assert "Traceback" in proc.stderr


def test_bad_config_is_a_user_error(tmp_path):
    proc = run("config", "show", env={"PIZZACTL_PORT": "not-a-port"}, cwd=tmp_path)
    assert proc.returncode == EXIT_USER
    assert "PIZZACTL_PORT" in proc.stderr


def test_a_bug_is_reported_as_internal_error_with_a_hint(tmp_path):
    # A bug inside a command (here: an argument type the library rejects) is not the user's fault.
    code = (
        "from pizzactl import cli\n"
        "@cli.app.command('boom')\n"
        "def boom():\n"
        "    raise RuntimeError('kaput')\n"
        "cli.main(['boom'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == EXIT_INTERNAL
    assert "Internal error" in proc.stderr and "--debug" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- output into pipes and logs -------------------------------------------------------------


def test_errors_and_paths_are_never_broken_across_lines_in_a_pipe(tmp_path):
    deep = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 8))
    deep.mkdir(parents=True)
    missing = deep / "no-such-dataset"
    proc = run("train", "--data", str(missing), cwd=tmp_path, env={"COLUMNS": ""})
    assert proc.returncode == EXIT_USER, proc.stderr
    assert len(str(missing)) > 200
    error_line = next(line for line in proc.stderr.splitlines() if line.startswith("Error:"))
    assert str(missing) in error_line
    hint_line = next(line for line in proc.stderr.splitlines() if line.startswith("Hint:"))
    assert hint_line.rstrip().endswith((".", ")", "`"))  # the whole hint on one line


def test_tables_in_a_pipe_keep_each_row_on_one_line(tmp_path):
    long_runs = tmp_path / ("r" * 150) / "runs"
    proc = run("config", "show", cwd=tmp_path, env={"PIZZACTL_RUNS_DIR": str(long_runs), "COLUMNS": ""})
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "runs_dir" in line)
    assert str(long_runs) in row and "PIZZACTL_RUNS_DIR" in row


def test_status_json_carries_the_schema_version_and_the_keys_scripts_read(tmp_path):
    proc = run("status", "--json", cwd=tmp_path, env={"PIZZACTL_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "schema": 1,
        "deployed": False,
        "message": "Nothing deployed.",
        "state_file": str(tmp_path / "state" / "deploy.json"),
    }


# --- optional extras --------------------------------------------------------------------------

WITHOUT_TENSORFLOW = (
    "import sys\n"
    "sys.modules.update(tensorflow=None, keras=None)  # as if the [train] extra were not installed\n"
    "from pizzactl.cli import main\n"
    "main(sys.argv[1:])\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "{data}"],
        ["up", "--data", "{data}", "--target", "local"],
        ["bench", "train", "--data", "{data}"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_tensorflow_verbs_without_the_train_extra_name_the_extra(args, tmp_path):
    data = tmp_path / "data"
    for cls in ("pizza", "not_pizza"):
        (data / cls).mkdir(parents=True)
    argv = [a.format(data=data) for a in args]
    env = {
        **os.environ,
        **{f"PIZZACTL_{n}_DIR": str(tmp_path / n.lower()) for n in ("MODELS", "RUNS", "CACHE", "STATE")},
    }
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, *argv], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == EXIT_USER, proc.stderr
    assert "Internal error" not in proc.stderr
    assert "pizzactl[train]" in proc.stderr and 'pip install -e ".[train]"' in proc.stderr


BASE_INSTALL = (
    "import sys\n"
    "from pizzactl.errors import EXTRA_OF_MODULE\n"
    "sys.modules.update(dict.fromkeys(EXTRA_OF_MODULE))  # as if `pip install pizzactl` had no extra\n"
    "from pizzactl.cli import main\n"
    "main(sys.argv[1:])\n"
)


def _base_install(args: list[str], tmp_path):
    env = {
        **os.environ,
        **{f"PIZZACTL_{n}_DIR": str(tmp_path / n.lower()) for n in ("MODELS", "RUNS", "CACHE", "STATE")},
        "KAGGLE_USERNAME": "someone",  # credentials are not what is missing
        "KAGGLE_KEY": "0" * 32,
    }
    return subprocess.run(
        [sys.executable, "-c", BASE_INSTALL, *args], capture_output=True, text=True, cwd=tmp_path, env=env
    )


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["deploy", "--target", "docker"], "deploy"),
        (["deploy", "--target", "kind"], "deploy"),
        (["build", "--models", "{models}"], "deploy"),
        (["deploy", "--target", "local"], "serve"),
        (["serve"], "serve"),
        (["data", "download"], "data"),
        (["data", "report", "{data}"], "data"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else a,
)
def test_a_verb_whose_extra_is_missing_names_the_extra(args, extra, tmp_path):
    """The base install is the CLI and predict (pyproject.toml); every other role is an extra."""
    data, models = tmp_path / "photos", tmp_path / "models"
    for cls in ("pizza", "not_pizza"):
        (data / cls).mkdir(parents=True)
    (models / "pizza" / "1").mkdir(parents=True)
    (models / "pizza" / "1" / "saved_model.pb").write_bytes(b"graph")
    proc = _base_install([a.format(data=data, models=models) for a in args], tmp_path)
    assert proc.returncode == EXIT_USER, proc.stderr
    assert "Internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"pizzactl[{extra}]" in proc.stderr and f'pip install -e ".[{extra}]"' in proc.stderr


def test_the_base_install_is_a_working_cli(tmp_path):
    assert _base_install(["--help"], tmp_path).returncode == 0
    assert _base_install(["config", "show", "--json"], tmp_path).returncode == 0
    proc = _base_install(["predict", "missing.jpg", "--endpoint", "http://127.0.0.1:9", "--json"], tmp_path)
    assert proc.returncode == EXIT_FAILURE and "no such file" in proc.stdout, proc.stderr
    doctor = _base_install(["doctor", "--json"], tmp_path)
    assert "Internal error" not in doctor.stderr and "pizzactl[deploy]" in doctor.stdout, doctor.stderr


@pytest.mark.slow  # the subprocess imports TensorFlow
def test_train_without_tensorboard_names_the_extra_before_reading_the_data(tmp_path):
    """TensorBoard came to the [train] extra later: an older install of the extra lacks it."""
    script = WITHOUT_TENSORFLOW.replace("tensorflow=None, keras=None", "tensorboard=None")
    env = {**os.environ, **{f"PIZZACTL_{n}_DIR": str(tmp_path / n.lower()) for n in ("MODELS", "RUNS", "CACHE")}}
    proc = subprocess.run(
        [sys.executable, "-c", script, "train", "--data", str(tmp_path / "no-such-dir")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == EXIT_USER, proc.stderr
    assert "tensorboard is not installed" in proc.stderr and "pizzactl[train]" in proc.stderr
