"""`pizzactl up`: the whole main job on whatever this machine has, in one command.

Train if there is no exported model yet (the Kaggle download, or `--data DIR`), deploy it (to
kind when kind and a Docker daemon are there, else as local processes without containers),
ask the deployment about one sample photo, and say where it answers and how to stop it. Each
step is the library call its own verb makes (`train`, `deploy`, `predict`), so `up` adds no
behaviour of its own beyond choosing the target.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.config import Settings
from pizzactl.console import log
from pizzactl.errors import ModelNotFoundError, PizzaError
from pizzactl.kube.docker_daemon import docker_client
from pizzactl.model.card import ModelCard
from pizzactl.model.store import find_run_dir, latest_version_dir, model_base
from pizzactl.predict import IMAGE_SUFFIXES, Prediction, predict
from pizzactl.results import Result
from pizzactl.tfimport import require_training
from pizzactl.train import train

NEXT = {"predict": "pizzactl predict PHOTO_OR_URL", "status": "pizzactl status", "teardown": "pizzactl teardown"}


@dataclass(frozen=True)
class TargetChoice:
    target: str
    reason: str


@dataclass(frozen=True, eq=False)
class UpResult(Result):
    """What `up` did: trained or not, where it deployed, the sample's answer, where to go next."""

    target: str
    target_reason: str
    trained: bool
    model_dir: str
    model_version: int | None
    url: str
    sample: Prediction | None

    @property
    def web_page(self) -> str:
        return self.url.rstrip("/") + "/"

    @property
    def predict_endpoint(self) -> str:
        return self.url.rstrip("/") + "/predict"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_reason": self.target_reason,
            "trained": self.trained,
            "model_dir": self.model_dir,
            "model_version": self.model_version,
            "url": self.url,
            "web_page": self.web_page,
            "predict_endpoint": self.predict_endpoint,
            "sample": self.sample.as_dict() if self.sample is not None else None,
            "next": dict(NEXT),
        }


def docker_reachable() -> str | None:
    """None when a Docker daemon answers at the active endpoint (DOCKER_HOST or docker context), else why not."""

    try:
        docker_client(5)
    except PizzaError as exc:
        return exc.message[:160]
    return None


def choose_target(settings: Settings) -> TargetChoice:
    """The target the user set (flag, env, pizzactl.toml), else kind if kind and Docker are here, else local."""
    if settings.explicit("target"):
        return TargetChoice(settings.target, f"--target {settings.target} (from {settings.source('target')})")
    if shutil.which("kind") is None:
        return TargetChoice("local", "kind is not installed, so the model runs as local processes (no containers)")
    problem = docker_reachable()
    if problem is not None:
        return TargetChoice("local", f"Docker is not reachable ({problem}), so the model runs as local processes")
    return TargetChoice("kind", "kind and Docker are here, so the model goes to a kind cluster")


def _existing_model(settings: Settings) -> Path | None:

    try:
        return latest_version_dir(settings.models_dir)
    except ModelNotFoundError:
        return None


def _images_in(folder: Path) -> list[Path]:

    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sample_photo(settings: Settings, model_dir: Path) -> Path | None:
    """A photo of the positive class from the data the model was trained on, if it is still here."""

    card = ModelCard.load(model_dir)
    folders = []
    if settings.data_dir is not None:
        folders.append(Path(settings.data_dir).expanduser())
    try:
        config = json.loads((find_run_dir(settings, card.run_id or "") / "config.json").read_text())
        if config.get("data_dir"):
            folders.append(Path(config["data_dir"]))
    except Exception:
        pass
    positive = card.positive_class or (card.classes or ("",))[-1]
    for folder in folders:
        for sub in (folder / positive, folder):
            if sub.is_dir():
                photos = _images_in(sub)
                if photos:
                    return photos[0]
    return None


def up(settings: Settings, *, sample: Path | None = None, timeout: float = 300.0) -> UpResult:
    """Train if needed, deploy where this machine allows, predict one photo; what a user needs next."""
    from pizzactl.deploy import deploy

    model_dir = _existing_model(settings)
    trained = False
    if model_dir is None:
        require_training()  # quietly, as for `pizzactl train`; without the [train] extra, say so

        where = settings.data_dir or f"the Kaggle dataset {settings.dataset}"
        log(f"No model in {model_base(settings.models_dir)} yet: training {settings.backbone} on {where}.")
        model_dir = train(settings).model_dir or latest_version_dir(settings.models_dir)
        trained = True
    else:
        log(f"Using the exported model {model_dir} (`pizzactl train` makes a new version).")

    choice = choose_target(settings)
    log(f"Deploying to {choice.target}: {choice.reason}.")
    deployed = deploy(settings.replace(target=choice.target), timeout=timeout)

    photo = sample if sample is not None else sample_photo(settings, model_dir)
    prediction = None
    if photo is not None:
        prediction = predict(settings.replace(endpoint=deployed.url), [str(photo)], progress=False)[0]
    return UpResult(
        target=choice.target,
        target_reason=choice.reason,
        trained=trained,
        model_dir=str(model_dir),
        model_version=deployed.model_version,
        url=deployed.url,
        sample=prediction,
    )
