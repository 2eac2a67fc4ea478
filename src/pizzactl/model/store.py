"""Finding exported models and training runs on disk (no TensorFlow needed).

Exports use TF Serving's layout, `MODELS/pizza/<int version>/` (a SavedModel), with pizzactl's
metadata in `<version>/assets.extra/pizzactl.json`. TF Serving ignores directories whose name
is not an integer, which is why in-progress exports live in `MODELS/pizza/.tmp-*` and appear
under their version number only by an atomic rename.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pizzactl.config import MODEL_NAME
from pizzactl.errors import ExportError, ModelNotFoundError, PizzaError
from pizzactl.files import fsync_dir

TMP_PREFIX = ".tmp-"  # in-progress versions: MODELS/pizza/.tmp-<pid>-<id>, ignored by TF Serving
METADATA_DIR = "assets.extra"
METADATA_FILE = "pizzactl.json"
NO_MODEL_HINT = "run `pizzactl train` or pass --models DIR"


class RunNotFoundError(PizzaError):
    """No training run matches the id, prefix or directory given."""

    code = "run_not_found"
    http_status = 404


def model_base(models_dir: Path | str, name: str = MODEL_NAME) -> Path:
    """`MODELS/<name>`: the folder that holds the integer versions."""
    return Path(models_dir).expanduser() / name


def list_versions(models_dir: Path | str, name: str = MODEL_NAME) -> list[tuple[int, Path]]:
    """Published versions, oldest first: directories named by an integer that hold a saved_model.pb.

    What every reader agrees on (the model server, deploy, evaluate, explain): an export's
    temporary directory, anything not named by an integer, and an integer directory still being
    copied in by hand (no saved_model.pb yet) are not versions. TF Serving would try to load the
    last one and fail; the model server waits until it is complete.
    """
    return sorted((number, path) for number, path in _integer_dirs(models_dir, name) if is_version_dir(path))


def next_version(models_dir: Path | str, name: str = MODEL_NAME) -> int:
    """The number an export publishes as: above every integer directory, complete or not."""
    return max((number for number, _ in _integer_dirs(models_dir, name)), default=0) + 1


def _integer_dirs(models_dir: Path | str, name: str) -> list[tuple[int, Path]]:
    try:
        children = list(model_base(models_dir, name).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(int(child.name), child) for child in children if child.name.isdigit() and child.is_dir()]


def latest_version_dir(models_dir: Path | str, name: str = MODEL_NAME) -> Path:
    """The highest published version directory, e.g. `models/pizza/3`."""
    versions = list_versions(models_dir, name)
    if not versions:
        raise ModelNotFoundError(
            f"No exported model in {model_base(models_dir, name)}.",
            hint=NO_MODEL_HINT[0].upper() + NO_MODEL_HINT[1:] + ".",
        )
    return versions[-1][1]


def publish_version(staged: Path, models_dir: Path | str, name: str = MODEL_NAME) -> Path:
    """Rename a complete, flushed version directory staged in `MODELS/<name>/` to the next free
    integer version: readers see all of it or nothing. Retries if a concurrent export took the number.

    The same idea as `files.atomic_dir`, except that the name is only chosen at the rename (the next
    free number) and nothing is ever replaced: `os.rename` onto a non-empty directory fails."""
    base = model_base(models_dir, name)
    for _ in range(1000):
        target = base / str(next_version(models_dir, name))
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and target.exists():
                continue
            raise
        fsync_dir(base)
        return target
    raise ExportError(
        f"Could not find a free version number in {base}.", hint="Remove old versions and try again."
    )  # pragma: no cover


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under root, so the rename publishes complete data."""
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def is_version_dir(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def resolve_model_dir(path: Path | str | None, models_dir: Path | str, name: str = MODEL_NAME) -> Path:
    """A version directory from what a user may type: a version dir, `MODELS/pizza`, `MODELS`, or nothing."""
    if path is None:
        return latest_version_dir(models_dir, name)
    path = Path(path).expanduser()
    if is_version_dir(path):
        return path
    if path.is_dir():
        if list_versions(path.parent, path.name):  # MODELS/pizza
            return latest_version_dir(path.parent, path.name)
        if list_versions(path, name):  # MODELS
            return latest_version_dir(path, name)
    raise ModelNotFoundError(
        f"{path} is not an exported model (no saved_model.pb, no {name}/<version> inside).",
        hint=f"Pass a version directory such as {model_base(models_dir, name)}/1, or {NO_MODEL_HINT}.",
    )


def find_run_dir(settings, run: str | Path) -> Path:
    """A run directory from a path, a run id, or a unique prefix of one under `settings.runs_dir`."""
    candidate = Path(run).expanduser()
    if candidate.is_dir() and (candidate / "config.json").is_file():
        return candidate
    runs_dir = Path(settings.runs_dir).expanduser()
    text = str(run)
    matches = []
    if runs_dir.is_dir() and "/" not in text:
        matches = sorted(p for p in runs_dir.iterdir() if p.is_dir() and p.name.startswith(text))
        exact = [p for p in matches if p.name == text]
        if exact:
            return exact[0]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches[:5])
        raise RunNotFoundError(
            f"Run prefix {text!r} is ambiguous: {names}{', ...' if len(matches) > 5 else ''}.",
            hint="Type more of the run id (`pizzactl runs list` shows them).",
        )
    raise RunNotFoundError(
        f"No run {text!r} in {runs_dir}.",
        hint="See `pizzactl runs list`, pass the run directory itself, or set PIZZACTL_RUNS_DIR.",
    )
