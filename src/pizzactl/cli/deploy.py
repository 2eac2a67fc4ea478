"""`pizzactl serve`, `build`, `deploy`, `status`, `rollback`, `teardown`, `predict`, `doctor`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pizzactl.cli.base import (
    JsonOpt,
    ModelsOpt,
    app,
    settings,
)
from pizzactl.console import out, print_json
from pizzactl.errors import EXIT_FAILURE

# --- serve, deploy, predict, status, teardown -----------------------------------------

ApiKeyOpt = typer.Option(
    None,
    "--api-key",
    help="Require this API key at the gateway (only its SHA-256 is passed on); env PIZZACTL_API_KEY keeps it "
    "out of the process list.",
)


@app.command()
def serve(
    models: Path | None = ModelsOpt,
    port: int | None = typer.Option(None, "--port", help="Gateway port (default 9696)."),
    model_port: int | None = typer.Option(None, "--model-port", help="Model server port (default 8501)."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    allow_private_urls: bool | None = typer.Option(
        None, "--allow-private-urls/--no-allow-private-urls", help="Let the gateway fetch loopback/private URLs."
    ),
    api_key: str | None = ApiKeyOpt,
) -> None:
    """Run the model server and the gateway in the foreground (Ctrl-C stops both)."""
    from pizzactl.serving import serve as serve_

    serve_(
        settings(
            models_dir=models,
            port=port,
            model_port=model_port,
            host=host,
            allow_private_urls=allow_private_urls,
            api_key=api_key,
        )
    )


@app.command()
def build(
    models: Path | None = ModelsOpt,
    model_server: str | None = typer.Option(
        None, "--model-server", help="tfserving | builtin (default: tfserving on amd64, builtin on arm64)"
    ),
    base_image: str | None = typer.Option(None, "--base-image", help="Base image of the Python images."),
    push: str | None = typer.Option(None, "--push", help="Push the images to this registry."),
    platform: str | None = typer.Option(
        None, "--platform", help="Build for linux/amd64 or linux/arm64 (default: the Docker daemon's)."
    ),
    trainer: bool = typer.Option(False, "--trainer", help="Build the trainer image (`train --on`) instead."),
    gpu: bool = typer.Option(False, "--gpu", help="With --trainer: the CUDA variant (tensorflow[and-cuda])."),
    json_out: bool = JsonOpt,
) -> None:
    """Build the gateway and model server images, or the trainer (tags from content, never :latest)."""
    from pizzactl.kube.images import build as build_
    from pizzactl.kube.images import build_trainer, print_images

    s = settings(models_dir=models, model_server=model_server, base_image=base_image, registry=push, platform=platform)
    images = build_trainer(s, gpu=gpu, push=push is not None) if trainer else build_(s, push=push is not None)
    if json_out:
        print_json(images.as_dict())
    else:
        print_images(images)


@app.command()
def deploy(
    target: str | None = typer.Option(None, "--target", help="kind (default) | docker | local"),
    models: Path | None = ModelsOpt,
    port: int | None = typer.Option(None, "--port", help="Host port of the gateway (default 9696)."),
    model_server: str | None = typer.Option(
        None, "--model-server", help="tfserving | builtin (default: tfserving on amd64, builtin on arm64)"
    ),
    cluster: str | None = typer.Option(None, "--cluster", help="kind cluster name (default pizzactl)."),
    context: str | None = typer.Option(None, "--context", help="Deploy to this existing kube context instead of kind."),
    registry: str | None = typer.Option(None, "--registry", help="Registry to push images to (with --context)."),
    pull_secret: str | None = typer.Option(
        None, "--pull-secret", help="Image pull secret in the namespace, for a private --registry."
    ),
    platform: str | None = typer.Option(
        None, "--platform", help="Build for linux/amd64 or linux/arm64 (default: the cluster's nodes')."
    ),
    allow_private_urls: bool | None = typer.Option(
        None, "--allow-private-urls/--no-allow-private-urls", help="Let the gateway fetch loopback/private URLs."
    ),
    api_key: str | None = ApiKeyOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the rendered manifests and touch nothing."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
    json_out: bool = JsonOpt,
) -> None:
    """Deploy the latest model: to kind (default), docker or local processes."""
    from pizzactl.deploy import deploy as deploy_

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
    )
    if dry_run:
        from pizzactl.deploy import dry_run as dry_run_

        sys.stdout.write(dry_run_(s))
        return
    result = deploy_(s, timeout=timeout)
    if json_out:
        print_json(result)
    else:
        out.print(f"Deployed to {result['target']}: {result['url']}")


@app.command()
def status(json_out: bool = JsonOpt) -> None:
    """What is deployed, where, which model version, ready or not."""
    from pizzactl.deploy import print_status
    from pizzactl.deploy import status as status_

    st = status_(settings())
    if json_out:
        print_json(st)
    else:
        print_status(st)


@app.command()
def rollback(
    to: int | None = typer.Option(None, "--to", help="Roll back to this model version (default: the previous one)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the rollout."),
    json_out: bool = JsonOpt,
) -> None:
    """Put the previous model version back on the deployment (kind, cluster, docker)."""
    from pizzactl.deploy import rollback as rollback_

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
    from pizzactl.deploy import teardown as teardown_

    result = teardown_(settings(), keep_cluster=keep_cluster)
    if json_out:
        print_json(result)
    else:
        out.print(result.get("message", "Nothing deployed."))


@app.command()
def predict(
    sources: list[str] = typer.Argument(..., help="Image files, directories or http(s) URLs."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Gateway URL (default: what deploy recorded)."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="API key to send, for a gateway that requires one (env PIZZACTL_API_KEY is safer)."
    ),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the results to this CSV."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight."),
    explain: Path | None = typer.Option(
        None, "--explain", help="Write a Grad-CAM overlay PNG per image here (needs [train])."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Ask the deployed model: is this a pizza?"""
    from pizzactl.predict import predict as predict_
    from pizzactl.predict import print_predictions

    results = predict_(
        settings(endpoint=endpoint, api_key=api_key),
        sources,
        concurrency=concurrency,
        csv_path=csv,
        explain_dir=explain,
        progress=not json_out,
    )
    if json_out:
        print_json(results)
    else:
        print_predictions(results)
    if any("error" in r for r in results):
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def doctor(json_out: bool = JsonOpt) -> None:
    """Check the machine: Python, TensorFlow, Docker, architecture, kind, kubectl, Kaggle, ports, disk."""
    from pizzactl.doctor import doctor as doctor_
    from pizzactl.doctor import print_checks

    checks = doctor_(settings())
    if json_out:
        print_json([c.as_dict() for c in checks])
    else:
        print_checks(checks)
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(EXIT_FAILURE)
