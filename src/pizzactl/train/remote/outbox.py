"""What a remote run gets and what comes back: its settings as PIZZACTL_* variables, its outbox.

Wherever it runs, it is the trainer image's own `pizzactl train` with the settings the user
gave (as PIZZACTL_* variables), writing into an *outbox*: `models/pizza/1`, `runs/<id>/` and
`result.json` (its `--json` answer). `collect` then puts the outbox where a local `train` would
have written: the version by copy into `MODELS/pizza/.tmp-*` and an atomic rename to the next
local version number (a model server never sees part of it), each run under `RUNS/<id>`, and
every path inside (metrics.json's model_dir, the result) pointing at the local copies.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pizzactl.errors import TrainingError
from pizzactl.files import atomic_dir, write_json
from pizzactl.model.card import card_path
from pizzactl.model.store import (
    MODEL_NAME,
    TMP_PREFIX,
    fsync_tree,
    list_versions,
    model_base,
    next_version,
    publish_version,
)

# Settings that shape a run: passed on only when the user gave them, so the trainer image
# applies the backbone recipes exactly as a local `train` does (a recipe yields to a given value).
TRAINING_SETTINGS = (
    "backbone",
    "weights",
    "epochs",
    "fine_tune_epochs",
    "augmented_views",
    "image_size",
    "batch_size",
    "augment",
    "seed",
    "val_split",
    "dataset",
)


def container_env(settings, *, data_dir: str | None, models_dir: str, runs_dir: str) -> dict[str, str]:
    """PIZZACTL_* variables for the trainer: the user's training settings and where to read and write."""
    env = {
        f"PIZZACTL_{name.upper()}": _text(getattr(settings, name))
        for name in TRAINING_SETTINGS
        if settings.explicit(name) and getattr(settings, name) is not None
    }
    if data_dir is not None:
        env["PIZZACTL_DATA_DIR"] = data_dir
    else:
        env["PIZZACTL_DATASET"] = settings.dataset  # the trainer downloads it
    env["PIZZACTL_MODELS_DIR"] = models_dir
    env["PIZZACTL_RUNS_DIR"] = runs_dir
    return env


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def local_weights_file(settings) -> Path | None:
    """--weights PATH: the file, which a container must see at the same path."""
    weights = str(settings.weights or "").strip()
    if weights.lower() in ("", "none", "null", "imagenet"):
        return None
    return Path(weights).expanduser().resolve()


def outbox_dir(settings, name: str) -> Path:
    """A fresh local folder for one remote run's outputs (under the state dir, which Docker
    Desktop and Colima share with their VM, unlike some temp dirs)."""
    path = Path(settings.state_dir).expanduser().resolve() / "train" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --- bringing the results home -----------------------------------------------------------------


def collect(
    settings, outbox: Path, *, container: dict[str, str], trained_on: dict[str, Any], data_dir: Path | None = None
) -> dict[str, Any]:
    """Publish the outbox's version and runs locally; the train result with local paths.

    `container` maps the trainer's paths to the outbox: {"models": "/out/models", "runs":
    "/out/runs", "data": "/data"}. A missing or unfinished export publishes nothing.
    """
    result = _read_result(outbox)
    staged = _staged_version(outbox)
    version_dir = _publish_copy(staged, settings.models_dir)
    moves = [(f"{container['models']}/{MODEL_NAME}/{staged.name}", str(version_dir))]
    if data_dir is not None and container.get("data"):
        moves.append((container["data"], str(data_dir)))
    runs_dir = Path(settings.runs_dir).expanduser()
    runs_dir.mkdir(parents=True, exist_ok=True)
    for run in sorted(p for p in (outbox / "runs").iterdir() if p.is_dir()):
        target = _free_name(runs_dir, run.name)
        moves.append((f"{container['runs']}/{run.name}", str(target)))
        _place_run(run, target, moves, trained_on)
    return {**_localised(result, moves), "version": int(version_dir.name), "trained_on": trained_on}


def _read_result(outbox: Path) -> dict[str, Any]:
    try:
        return json.loads((outbox / "result.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"The trainer finished but left no readable result.json ({type(exc).__name__}).",
            hint="Look at its log above; the run directories, if any, were not copied.",
        ) from None


def _staged_version(outbox: Path) -> Path:
    versions = list_versions(outbox / "models")
    if not versions and next_version(outbox / "models") > 1:  # a version directory without its saved_model.pb
        raise TrainingError(
            "The exported version is incomplete (no saved_model.pb); nothing was published.",
            hint="Train again; if it repeats, report it with the trainer's log.",
        )
    if not versions:
        raise TrainingError(
            "The trainer exported no model version.", hint="Look at its log above for the error that stopped it."
        )
    staged = versions[-1][1]
    if not card_path(staged).is_file():
        raise TrainingError(
            f"The exported version {staged.name} has no pizzactl metadata; nothing was published.",
            hint="Train again; if it repeats, report it with the trainer's log.",
        )
    return staged


def _publish_copy(staged: Path, models_dir: Path | str) -> Path:
    """Copy next to the local versions, flush, then one rename: all of the version or none of it."""
    base = model_base(models_dir)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        shutil.copytree(staged, tmp)
        fsync_tree(tmp)
        return publish_version(tmp, models_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _free_name(runs_dir: Path, name: str) -> Path:
    for n in range(1, 1000):
        candidate = runs_dir / (name if n == 1 else f"{name}-{n}")
        if not candidate.exists():
            return candidate
    raise TrainingError(f"Too many runs named {name} in {runs_dir}.")  # pragma: no cover


def _place_run(run: Path, target: Path, moves: list[tuple[str, str]], trained_on: dict[str, Any]) -> None:
    """Copy a run next to the local ones, fix its paths, then rename it into place."""
    with atomic_dir(target, replace=False) as staging:  # a new name (`_free_name`): never replace a run
        shutil.copytree(run, staging, dirs_exist_ok=True)
        for name in ("config.json", "metrics.json"):
            path = staging / name
            if not path.is_file():
                continue
            data = _localised(json.loads(path.read_text()), moves)
            if name == "config.json":
                data["run_id"] = target.name
                data["trained_on"] = trained_on
            write_json(path, data)


def _localised(value: Any, moves: list[tuple[str, str]]) -> Any:
    """`value` with every string that is, or starts with, a container path rewritten to the local one."""
    if isinstance(value, dict):
        return {k: _localised(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [_localised(v, moves) for v in value]
    if isinstance(value, str):
        for old, new in moves:
            if value == old or value.startswith(old + "/"):
                return new + value[len(old) :]
    return value
