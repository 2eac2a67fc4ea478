"""The one way tests run `pizzactl`: in this process, or in a real one when that is the point.

Both return a `subprocess.CompletedProcess` (returncode, stdout, stderr as text), so a test can
move from one to the other without changing what it asserts.

- `invoke` runs `pizzactl.cli.main` (the real entry point with its error boundary) in this
  process, under click's CliRunner isolation: quick, and TensorFlow is loaded once per session.
  `env` holds overrides only (None removes a variable); the process environment comes back after.
- `run_pizzactl` runs `python -m pizzactl` in its own process. Use it when the process itself is
  what the test is about: what `--help` imports, start-up noise on file descriptor 2, exit on
  signals, background children a deploy leaves, a clean environment (`env` is then the whole
  environment, as for subprocess.run), or a timeout.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner

from pizzactl.cli import main

from support.processes import free_port

PIZZACTL = (sys.executable, "-m", "pizzactl")


def run_pizzactl(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = 300,
    input: str | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m pizzactl ARGS` in a process of its own (env: the whole environment, None inherits)."""
    return subprocess.run(
        [*PIZZACTL, *args],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        timeout=timeout,
        input=input,
        check=check,
    )


def invoke(
    *args: str, env: Mapping[str, str | None] | None = None, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`pizzactl ARGS` through `pizzactl.cli.main` in this process (env: overrides, None unsets)."""
    # main() may set TF_CPP_MIN_LOG_LEVEL for the process; listing it here makes the isolation restore it
    overrides = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL"), **(env or {})}
    runner = CliRunner()
    code: int = 0
    with runner.isolation(env=overrides) as (out, err, _), contextlib.chdir(cwd or os.getcwd()):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["pizzactl", *args], code, stdout, stderr)


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the caller's PIZZACTL_* settings, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(overrides)
    return env


def overrides(env: Mapping[str, str]) -> dict[str, str | None]:
    """A whole environment's PIZZACTL_* settings as `invoke` overrides (the caller's others unset):
    the in-process CLI then sees the settings a `run_pizzactl(env=env)` process would."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PIZZACTL_")}
    return {**unset, **{k: v for k, v in env.items() if k.startswith("PIZZACTL_")}}


def make_env(root: Path, models: Path, **extra: str) -> dict[str, str]:
    """A whole environment for a deploying `pizzactl` process: its own state, runs, cache and free ports."""
    env = clean_env(
        PIZZACTL_STATE_DIR=str(root / "state"),
        PIZZACTL_MODELS_DIR=str(models),
        PIZZACTL_RUNS_DIR=str(root / "runs"),
        PIZZACTL_CACHE_DIR=str(root / "cache"),
        PIZZACTL_PORT=str(free_port()),
        PIZZACTL_MODEL_PORT=str(free_port()),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
    )
    env.update(extra)
    return env
