"""The CLI surface: every command has --help, help never imports TensorFlow, errors have hints and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main

from pizzactl import __version__
from pizzactl.cli import app
from pizzactl.errors import EXIT_INTERNAL, EXIT_USAGE, EXIT_USER


def _command_paths(group=None, prefix=()):
    """Every command path of the typer app, e.g. ('data', 'report')."""
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        path = prefix + (name,)
        if hasattr(cmd, "commands"):
            yield path
            yield from _command_paths(cmd, path)
        else:
            yield path


ALL_COMMANDS = sorted(_command_paths())


def run(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pizzactl", *args], capture_output=True, text=True, env=full_env, cwd=cwd)


def test_every_verb_the_readme_promises_exists():
    names = {" ".join(p) for p in ALL_COMMANDS}
    expected = {
        "train", "export", "evaluate", "serve", "build", "deploy", "status", "teardown", "predict", "doctor",
        "data download", "data report", "runs list", "runs show", "config show", "bench train", "bench serve",
    }
    assert expected <= names


HEAVY = ("tensorflow", "keras", "docker", "kubernetes", "matplotlib", "fastapi")


@pytest.mark.parametrize("path", [()] + ALL_COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_help_works_and_imports_nothing_heavy(path):
    code = (
        "import sys\n"
        "from pizzactl.cli import main\n"
        "try:\n"
        f"    main({list(path) + ['--help']!r})\n"
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
