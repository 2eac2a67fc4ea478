"""The folders shipped with pizzactl (k8s/, docker/) and the names in them other code relies on.

Kept below deploy and remote training, which both render from k8s/ (the serving manifests, the
training Job's templates in k8s/training/), and below the image builder, which reads docker/.
"""

from __future__ import annotations

from pathlib import Path

import pizzactl


def shipped_dir(name: str) -> Path:
    """A directory shipped with pizzactl: inside the installed package (a wheel), else at the
    top of the source tree (a clone, editable install), where users run `kubectl apply -k k8s/`."""
    package = Path(pizzactl.__file__).resolve().parent
    for candidate in (package / name, package.parents[1] / name):
        if candidate.is_dir():
            return candidate
    return package / name


K8S_DIR = shipped_dir("k8s")
GATEWAY_NODE_PORT = 30096  # the gateway Service's nodePort in k8s/gateway.yaml; kind maps a host port to it
MODEL_VERSION_LABEL = "pizzactl.dev/model-version"  # on the model server's pods: which version serves
MODEL_VERSIONS_ANNOTATION = "pizzactl.dev/model-versions"  # on a pinned release's model pods: every version held
# Where the model image keeps its versions and, for a pinned or canary release, the TF Serving
# model config that names them (inside the base path: both model servers skip non-numeric entries).
MODEL_BASE_IN_IMAGE = "/models/pizza"
MODEL_CONFIG_IN_IMAGE = f"{MODEL_BASE_IN_IMAGE}/models.config"
