"""Deploy, inspect and tear down the model server + gateway: local processes, Docker or kind.

`deploy(settings, timeout)` (and `dry_run(settings)`) dispatch on `settings.target`; `status` and `teardown`
dispatch on the target recorded in the shared state file (`pizzactl.deploy.state`), so they
need no flags. The contract every target module follows:

    pizzactl.deploy.local         deploy(settings, timeout) -> dict
                                  status(settings, state) -> dict
                                  teardown(settings, state) -> dict
    pizzactl.deploy.docker_target deploy(settings, timeout) -> dict
                                  status(settings, state) -> dict
                                  teardown(settings, state) -> dict
    pizzactl.deploy.kind          deploy(settings, dry_run, timeout) -> dict, or the rendered
                                      manifests (str) when dry_run (and touches nothing)
                                  status(settings, state) -> dict
                                  teardown(settings, state, keep_cluster) -> dict

- Optional: `preflight(settings, previous: DeployState | None)` raises (e.g. PortInUseError)
  before the dispatcher tears the previous deployment down, so a deploy that cannot work
  leaves the running one alone.
- `deploy` returns at least {"target", "url", "model_version"}. It writes the state file
  (`state.save(settings, DeployState(...))`) as soon as there is something to clean up, before
  waiting for readiness, so an interrupted deploy can still be torn down; details that are
  not common fields go in `DeployState.extra`. On a readiness timeout it cleans up what it
  started and raises `DeployError` with the last log lines.
- Deploying again replaces what runs: the dispatcher tears the old deployment down first when
  the target changes or the target is local/docker; kind -> kind is left to `kind.deploy`
  (it re-applies the manifests in the existing cluster).
- `status(settings, state)` returns target-specific fields, at least {"ready": bool}; the
  dispatcher adds target, url, model_version, created from the state.
- `teardown(...)` stops/removes everything and returns {"message": str, ...}. It must not fail
  when things are already gone. The dispatcher removes the state file afterwards.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from pizzactl.console import out
from pizzactl.deploy import state as state_mod
from pizzactl.errors import UsageError

TARGETS = ("local", "docker", "kind")


def _target_module(target: str) -> ModuleType:
    import importlib

    modules = {
        "local": "pizzactl.deploy.local",
        "docker": "pizzactl.deploy.docker_target",
        "kind": "pizzactl.deploy.kind",
    }
    if target not in modules:
        raise UsageError(f"Unknown deploy target {target!r}.", hint="Use --target kind, docker or local.")
    return importlib.import_module(modules[target])


def dry_run(settings) -> str:
    """What `deploy` would do, touching nothing: the rendered manifests (kind), the commands (local)."""
    mod = _target_module(settings.target)
    if settings.target == "kind":
        return mod.deploy(settings, dry_run=True)
    if settings.target == "local":
        return mod.describe(settings)
    raise UsageError("--dry-run renders Kubernetes manifests.", hint="Use it with --target kind.")


def deploy(settings, timeout: float = 300.0) -> dict[str, Any]:
    """Deploy the latest exported model to `settings.target`; replaces what was deployed before."""
    target = settings.target
    mod = _target_module(target)
    from pizzactl.model_store import latest_version_dir

    latest_version_dir(settings.models_dir)  # no model: fail before stopping what runs now
    previous = state_mod.load(settings)
    preflight = getattr(mod, "preflight", None)
    if preflight is not None:  # e.g. the port is taken by something else: fail before stopping what runs now
        preflight(settings, previous)
    if previous is not None and (previous.target != target or target in ("local", "docker")):
        teardown(settings)
    if target == "kind":
        return mod.deploy(settings, dry_run=False, timeout=timeout)
    return mod.deploy(settings, timeout=timeout)


def status(settings) -> dict[str, Any]:
    """What is deployed, where, which model version and whether it answers /readyz."""
    st = state_mod.load(settings)
    if st is None:
        return {"deployed": False, "message": "Nothing deployed.", "state_file": str(state_mod.state_path(settings))}
    info = _target_module(st.target).status(settings, st)
    return {
        "deployed": True,
        "target": st.target,
        "url": st.url,
        "model_version": st.model_version,
        "created": st.created,
        **info,
    }


def print_status(st: dict[str, Any]) -> None:
    from rich.table import Table

    if not st.get("deployed"):
        out.print(st.get("message", "Nothing deployed.") + " Deploy with `pizzactl deploy`.")
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    ready = st.get("ready")
    table.add_row("target", str(st["target"]))
    table.add_row("url", str(st["url"]))
    table.add_row("model version", str(st.get("model_version")))
    table.add_row("ready", "[green]yes[/]" if ready else "[red]no[/]")
    table.add_row("created", str(st.get("created")))
    skip = {"deployed", "target", "url", "model_version", "ready", "created", "message"}
    for key, value in st.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
        table.add_row(key.replace("_", " "), str(value))
    out.print(table)


def _fmt(value: Any) -> str:
    if value is True:
        return "alive"
    if value is False:
        return "gone"
    return str(value)


def teardown(settings, keep_cluster: bool = False) -> dict[str, Any]:
    """Stop and remove what deploy started; a second call only says there is nothing to do."""
    st = state_mod.load(settings)
    if st is None:
        return {"torn_down": False, "message": "Nothing deployed; nothing to tear down."}
    mod = _target_module(st.target)
    if st.target == "kind":
        result = mod.teardown(settings, st, keep_cluster=keep_cluster)
    else:
        result = mod.teardown(settings, st)
    state_mod.clear(settings)
    result = dict(result or {})
    result.setdefault("message", f"Tore down the {st.target} deployment at {st.url}.")
    return {"torn_down": True, "target": st.target, **result}


__all__ = ["TARGETS", "deploy", "dry_run", "print_status", "status", "teardown"]
