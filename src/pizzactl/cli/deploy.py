"""`pizzactl deploy`, `status`, `rollback`, `teardown`: one verb family in one module.

The four share one library module (`pizzactl.deploy`), one recorded state (what deploy
started, where) and the same targets; status, rollback and teardown only act on what deploy
recorded, so reading one means reading the others.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from pizzactl.cli.base import JsonOpt, app, option, settings
from pizzactl.cli.rollout import print_decision, print_outcome
from pizzactl.console import out, print_json
from pizzactl.deploy import deploy as deploy_
from pizzactl.deploy import dry_run as dry_run_
from pizzactl.deploy import rollback as rollback_
from pizzactl.deploy import status as status_
from pizzactl.deploy import teardown as teardown_
from pizzactl.deploy import trial
from pizzactl.deploy.decide import Decision
from pizzactl.deploy.results import Status
from pizzactl.errors import UsageError, WaitTimeoutError


@app.command()
def deploy(
    target: str | None = option("target"),
    models: Path | None = option("models_dir"),
    port: int | None = option("port"),
    model_server: str | None = option("model_server"),
    cluster: str | None = option("cluster"),
    context: str | None = option("context"),
    registry: str | None = option("registry"),
    pull_secret: str | None = option("pull_secret"),
    platform: str | None = option("platform"),
    allow_private_urls: bool | None = option("allow_private_urls"),
    api_key: str | None = option("api_key"),
    canary: float | None = option("canary_percent"),
    shadow: bool | None = option("shadow"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the rendered manifests and touch nothing."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
    auto: bool = typer.Option(
        False, "--auto", help="With --canary or --shadow: watch the live comparison, then promote or abort."
    ),
    auto_timeout: float = typer.Option(
        1800.0, "--auto-timeout", help="Seconds --auto waits for enough evidence (then the trial keeps running)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Deploy the latest model: to kind (default), docker or local processes."""
    s = settings(
        target=target,
        models_dir=models,
        port=port,
        model_server=model_server,
        cluster=cluster,
        context=context,
        registry=registry,
        pull_secret=pull_secret,
        platform=platform,
        allow_private_urls=allow_private_urls,
        api_key=api_key,
        canary_percent=canary,
        shadow=shadow,
    )
    if dry_run:
        sys.stdout.write(dry_run_(s))
        return
    if auto and not (s.canary_percent or s.shadow):
        raise UsageError("--auto decides a trial; this deploy starts none.", hint="Add --canary 10 or --shadow.")
    result = deploy_(s, timeout=timeout)
    if not auto:
        if json_out:
            print_json(result.to_json())
        else:
            out.print(f"Deployed to {result.target}: {result.url}")
        return
    if not json_out:
        out.print(f"Deployed to {result.target}: {result.url}; watching the trial (--auto) ...")
    last: list[Decision] = []
    try:
        outcome = trial.auto(s, result.url, auto_timeout, deploy_timeout=timeout, on_poll=last.append)
    except WaitTimeoutError:
        if last and json_out:
            print_json({"schema": 1, "action": "wait", "decision": last[-1].as_dict()})
        elif last:
            print_decision(last[-1].as_dict())
        raise
    print_outcome(outcome, json_out)


@app.command()
def status(json_out: bool = JsonOpt) -> None:
    """What is deployed, where, which model version, ready or not."""
    st = status_(settings())
    if json_out:
        print_json(st.to_json())
    else:
        print_status(st)


@app.command()
def rollback(
    to: int | None = typer.Option(None, "--to", help="Roll back to this model version (default: the previous one)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the rollout."),
    json_out: bool = JsonOpt,
) -> None:
    """Put the previous model version back on the deployment (kind, cluster, docker)."""
    result = rollback_(settings(), to=to, timeout=timeout)
    if json_out:
        print_json(result)
    elif "rolled_back_from" in result:
        out.print(
            f"Rolled back {result['target']} from model version {result['rolled_back_from']} "
            f"to {result['model_version']}."
        )
    else:
        out.print(result.get("message", ""))


@app.command()
def teardown(
    keep_cluster: bool = typer.Option(
        False, "--keep-cluster", help="kind: keep the cluster, delete only the namespace."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Stop and remove what deploy started. A second teardown does nothing."""
    result = teardown_(settings(), keep_cluster=keep_cluster)
    if json_out:
        print_json(result)
    else:
        out.print(result.get("message", "Nothing deployed."))


# --- printers (rich, stdout) ---------------------------------------------------------


def print_status(st: Status) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    training = st.training
    if not st.deployed:
        out.print((st.message or "Nothing deployed.") + " Deploy with `pizzactl deploy`.")
        if training:
            _training_rows(table, training)
            out.print(table)
        return
    table.add_row("target", str(st.target))
    table.add_row("url", str(st.url))
    table.add_row("model version", str(st.model_version))
    if st.serving is not None:
        table.add_row(
            "serving", ", ".join(f"v{v} ({n} pod{'s' if n != 1 else ''})" for v, n in st.serving.items()) or "none"
        )
    table.add_row("ready", "[green]yes[/]" if st.ready else "[red]no[/]")
    table.add_row("created", str(st.created))
    skip = {"message", "live", "auto"}  # the live comparison: its own table below
    skip.add("supervision")  # local: the supervisor's whole record, for --json; restarts and crash_loop are rows
    for key, value in st.details.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
        table.add_row(key.replace("_", " "), str(value))
    if training:
        _training_rows(table, training)
    out.print(table)
    if "live" in st.details:
        _live(st.details)


def _live(details: Mapping[str, Any]) -> None:
    """A trial in flight: what the gateway measured (or that it reports nothing) and what --auto would do."""
    if not details.get("live") or not details.get("auto"):
        out.print("live comparison: the gateway reports none (GET /rollout did not answer with one).")
        return
    live = details["live"]
    mode, percent = live.get("mode"), live.get("percent")
    out.print(f"live comparison ({mode}{f' {percent:g}%' if mode == 'canary' and percent else ''}):")
    print_decision(details["auto"], title="--auto would")


def _training_rows(table, training: Mapping[str, Any]) -> None:
    phase = training.get("phase", "unknown")
    epoch = f", epoch {training['epoch']}" if training.get("epoch") else ""
    attempts = training.get("attempts") or 0
    tries = f", attempt {attempts}" if attempts > 1 else ""
    table.add_row("training", escape(f"Job {training['job']} in {training.get('context')}: {phase}{epoch}{tries}"))
    if training.get("last_line") or training.get("error"):
        table.add_row("last log line", escape(str(training.get("last_line") or training.get("error"))))


def _fmt(value: Any) -> str:
    if value is True:
        return "alive"
    if value is False:
        return "gone"
    return str(value)
