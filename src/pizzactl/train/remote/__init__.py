"""Train somewhere else: in a container (`--on docker`) or as a Kubernetes Job (`--on kind|CONTEXT`).

`train_on(settings, on)` is what `pizzactl train --on ON` runs; a notebook calls it the same way:

    from pizzactl.train.remote import train_on
    result = train_on(load_settings({"data_dir": "data/pizza_not_pizza"}), "docker")

It returns the local train result of the new version (`outbox.collect` publishes it here) and
rolls nothing out: its caller decides that (`pizzactl.deploy.after_training.roll_out`, which the
`train` command runs). `on_docker` runs the trainer as a container, `on_cluster` as a Job
(`jobs`: its objects, `job_watch`: following it); the cluster and container plumbing they use
is `pizzactl.kube`.
"""

from __future__ import annotations

from typing import Any

import yaml

from pizzactl.errors import UsageError
from pizzactl.train import train
from pizzactl.train.remote import on_cluster, on_docker


def train_on(settings, on: str = "local", **options: Any) -> dict[str, Any]:
    """Train where `on` says: local (this process), docker, kind, or a kube context name.

    options: docker and cluster: `show_progress`; cluster: `attach`, `timeout` (seconds a
    training pod may wait to start).
    """
    if options.get("attach") and on in ("", "local", "docker"):
        raise UsageError("--attach follows a training Job.", hint="Use it with --on kind or --on CONTEXT.")
    if on in ("", "local"):
        return train(settings, show_progress=options.get("show_progress", True)).as_dict()
    if on == "docker":
        return on_docker.train(settings, show_progress=options.get("show_progress", True))
    return on_cluster.train(settings, on, **options)


def dry_run(settings, on: str) -> str:
    """What `train --on kind|CONTEXT` would apply, as YAML (a Secret's values redacted); touches nothing."""
    if on in ("", "local", "docker"):
        raise UsageError(
            "--dry-run prints the Kubernetes objects of a training Job.", hint="Use it with --on kind or --on CONTEXT."
        )
    return yaml.safe_dump_all(on_cluster.dry_run(settings, on), sort_keys=False, explicit_start=True)
