"""Shared fixtures: real shared photos, isolated settings, and test tiers.

Tiers (markers): slow, docker, browser, torch; and `data`, the shared photos most tests read.
A tier whose prerequisite is missing is skipped with the reason, unless PIZZACTL_REQUIRE_TIERS
names it (CI sets it), in which case the missing prerequisite is a failure, so a green CI run
means the tier really ran.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from support.tiers import import_tier, require_tier

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pizza_not_pizza"

# The test kit (tests/support/, docs/development.md): synthetic photos; model_server / gateway /
# photo_server session fixtures shared by the serving tests; world, photos and release helpers shared
# by the cluster tests. Plugins before the modules that import them, so pytest rewrites their asserts.
pytest_plugins = ["support.photos", "support.serving_fixtures", "support.cluster_fixtures"]


# --- the quick loop (docs/development.md) ---------------------------------------------------

QUICK_LEAVES_OUT = ("slow", "docker", "browser", "torch")


def pytest_addoption(parser):
    parser.addoption(
        "--quick",
        action="store_true",
        help="the contributor's quick loop: leave out the slow, docker, browser and torch tiers "
        "(as -m 'not slow and not docker and not browser and not torch'); CI runs everything",
    )


def pytest_configure(config):
    """A shell without job control starts `pytest &` with SIGINT ignored, and every process the
    tests start inherits that (POSIX: an ignored signal stays ignored across exec): the Ctrl-C
    tests (serve, train --on) then wait out their timeouts. Python's own handler instead: children
    get the default again at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--quick"):
        return
    keep, left_out = [], []
    for item in items:
        (left_out if any(item.get_closest_marker(tier) for tier in QUICK_LEAVES_OUT) else keep).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = keep


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real photos (../shared/data/pizza_not_pizza)."""
    if not (SHARED_DATA / "pizza").is_dir():
        require_tier("data", f"shared photos not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_photos(shared_data) -> dict[str, list[Path]]:
    """Sorted photo paths per class."""
    return {c: sorted((shared_data / c).glob("*.jpg")) for c in ("pizza", "not_pizza")}


@pytest.fixture
def copy_photos(shared_photos, tmp_path):
    """make(n): a dataset folder with the first n shared photos of each class, copied (a container's
    bind mount or a Job's upload carries files, not links to elsewhere)."""
    import shutil

    def make(n: int) -> Path:
        root = tmp_path / f"photos-{n}"
        for cls in ("pizza", "not_pizza"):
            (root / cls).mkdir(parents=True, exist_ok=True)
            for p in shared_photos[cls][:n]:
                shutil.copy(p, root / cls / p.name)
        return root

    return make


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Point every path pizzactl writes to into tmp_path, and run from there."""
    for name in ("models_dir", "runs_dir", "cache_dir", "state_dir"):
        monkeypatch.setenv("PIZZACTL_" + name.upper(), str(tmp_path / name.replace("_dir", "")))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- a small real model (export helper) ---------------------------------------------------

TINY_SIZE = 64


@pytest.fixture(scope="session")
def tiny_classifier(shared_photos):
    """A real Keras CNN (64 px, rescaling in its graph) fitted for a few epochs on 40 shared photos.

    Not a good classifier, but a real one: varied probabilities, trained weights, the same
    input contract as the trainer's (float32 0..255 [N,64,64,3] -> [N,1] P(pizza)).
    Returns a namespace: model, image_size, classes, photos (the 40 paths), check_images
    (4 of them as bytes) and the export metadata.
    """
    import hashlib
    from types import SimpleNamespace

    keras = import_tier("keras", "slow")
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize

    photos = shared_photos["not_pizza"][:20] + shared_photos["pizza"][:20]
    labels = [0.0] * 20 + [1.0] * 20
    blobs = [p.read_bytes() for p in photos]
    keras.utils.set_random_seed(7)
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    # named: Keras numbers unnamed layers per process, so the names would depend on which tests ran first
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_first")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv_last")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    pixels = tf.stack([decode_resize(b, TINY_SIZE) for b in blobs])
    history = model.fit(pixels, tf.constant(labels), epochs=5, batch_size=8, verbose=0)
    digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blobs)).hexdigest()
    metadata = {
        "backbone": "tiny_cnn",
        "weights": "none",
        "image_size": TINY_SIZE,
        "classes": ["not_pizza", "pizza"],
        "threshold": 0.5,
        "metrics": {"train_accuracy": float(history.history["accuracy"][-1])},
        "data_hash": digest,
    }
    return SimpleNamespace(
        model=model,
        image_size=TINY_SIZE,
        classes=("not_pizza", "pizza"),
        photos=photos,
        check_images=blobs[:2] + blobs[-2:],
        metadata=metadata,
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_classifier, tmp_path_factory) -> Path:
    """A models dir (MODELS) holding MODELS/pizza/1, the tiny classifier exported by export_model."""
    from pizzactl.model.export import export_model

    models = tmp_path_factory.mktemp("tiny_models")
    export_model(tiny_classifier.model, models, tiny_classifier.metadata, tiny_classifier.check_images)
    return models


@pytest.fixture(scope="session")
def tf_only_model(tiny_model, tmp_path_factory) -> Path:
    """A copy of tiny_model exported before LiteRT (or without ai-edge-litert): no artefacts beside
    the SavedModel, though pizzactl.json still says what was checked."""
    import shutil

    models = tmp_path_factory.mktemp("tf_only_models")
    shutil.copytree(tiny_model / "pizza", models / "pizza")
    shutil.rmtree(models / "pizza" / "1" / "assets.extra" / "litert")
    return models


# --- docker tier (CONTAINERS) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_ready():
    """A reachable Docker daemon with the local python:3.11-slim base image, else skip the tier."""
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        require_tier("docker", f"Docker daemon unreachable ({type(exc).__name__}); run .ci/system-setup")
    try:
        client.images.get("python:3.11-slim")
    except Exception:
        require_tier("docker", "python:3.11-slim is not a local image; run .ci/system-setup")
    return client


@pytest.fixture(scope="session")
def built_images(docker_ready, tiny_model, tmp_path_factory):
    """The gateway and builtin model server images of the tiny model, built once per session."""
    from pizzactl.config import load_settings
    from pizzactl.kube.images import build

    settings = load_settings(
        {"models_dir": tiny_model, "model_server": "builtin"}, environ={}, cwd=tmp_path_factory.mktemp("build_cwd")
    )
    return build(settings)
