"""The `pizzactl` command line: one thin function per verb over the library.

Each verb parses its flags, resolves `Settings`, calls the library function of the same
name and formats the answer (rich for people, `--json` for scripts). Errors are handled
once, in `main()`. Heavy imports (tensorflow, docker, kubernetes) live inside the library
functions, so `pizzactl --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from pizzactl import __version__
from pizzactl.config import ModelRuntime, Settings, load_settings
from pizzactl.console import err, out, print_json
from pizzactl.errors import EXIT_FAILURE, EXIT_INTERNAL, EXIT_INTERRUPTED, PizzaError, as_missing_extra

app = typer.Typer(
    help="pizzactl: train an image classifier and take it to a Kind cluster, in one tool.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Download and inspect the dataset.", no_args_is_help=True)
runs_app = typer.Typer(help="List and inspect training runs.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print side-by-side ratios.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

_DEBUG = {"on": False}

JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout instead of tables.")
DataOpt = typer.Option(None, "--data", help="Dataset folder with one sub-folder per class.")
ModelsOpt = typer.Option(None, "--models", help="Models directory (TF Serving layout MODELS/pizza/<version>).")


def settings(**flags) -> Settings:
    """Settings from every layer; flags the user did not give are None and ignored."""
    return load_settings(flags)


def _version(value: bool) -> None:
    if value:
        out.print(f"pizzactl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _DEBUG["on"] = debug


# --- config -----------------------------------------------------------------------------


@config_app.command("show")
def config_show(json_out: bool = JsonOpt) -> None:
    """Print every setting, its value and where it came from."""
    from rich.table import Table

    s = settings()
    values = s.as_dict()
    if json_out:
        print_json({name: {"value": value, "source": s.sources[name]} for name, value in values.items()})
        return
    table = Table("setting", "value", "source")
    for name, value in values.items():
        table.add_row(name, "" if value is None else str(value), s.sources[name])
    out.print(table)


# --- data ------------------------------------------------------------------------------


@data_app.command("download")
def data_download(
    dataset: str | None = typer.Option(None, "--dataset", help="Kaggle dataset slug."),
    dest: Path | None = typer.Option(None, "--dest", help="Where to put it (default: the cache)."),
    force: bool = typer.Option(False, "--force", help="Download again even if already verified."),
    json_out: bool = JsonOpt,
) -> None:
    """Download the dataset from Kaggle (credentials, else anonymous), verify and hash it."""
    from pizzactl.data.download import download

    result = download(settings(dataset=dataset), dest=dest, force=force)
    if json_out:
        print_json(result.as_dict())
    else:
        if not result.downloaded:
            err.print("Already downloaded and verified (content hash matches); use --force to download again.")
        out.print(f"{result.path}  ({result.n_images} images, sha256 {result.data_hash[:12]})", highlight=False)


@data_app.command("report")
def data_report(
    data_dir: Path | None = typer.Argument(None, help="Dataset folder (default: --data / the downloaded one)."),
    near_bits: int = typer.Option(
        4, "--near-bits", min=0, max=64, help="Near duplicate: dHashes at most this many bits apart (of 64)."
    ),
    label_check: bool = typer.Option(
        False,
        "--label-check",
        help="Also list photos cross-validated heads always put in another class (needs [train]).",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Counts per class, sizes, colour modes, corrupt files, duplicates, EXIF/GPS (and label suspects)."""
    from pizzactl.data.report import print_report, report

    s = settings(data_dir=data_dir)
    rep = report(s, threshold=near_bits, label_check=label_check)
    if json_out:
        print_json(rep)
    else:
        print_report(rep)


@data_app.command("split")
def data_split(
    data_dir: Path = typer.Argument(..., help="Dataset folder (one sub-folder per class)."),
    dest: Path = typer.Option(..., "--dest", help="New folder: DEST/train and DEST/test."),
    test: float = typer.Option(0.15, "--test", min=0.01, max=0.9, help="Fraction of each class set aside."),
    seed: int = typer.Option(0, "--seed", help="Same seed and files, same split."),
    copy: bool = typer.Option(False, "--copy", help="Copy the files instead of symlinking them."),
    json_out: bool = JsonOpt,
) -> None:
    """Set a test set aside: train on DEST/train, `evaluate --data DEST/test`."""
    from pizzactl.data.split import split

    result = split(data_dir, dest, test_fraction=test, seed=seed, copy=copy)
    if json_out:
        print_json(result.as_dict())
    else:
        for part in ("train", "test"):
            counts = result.counts[part]
            out.print(
                f"{getattr(result, part + '_dir')}  {sum(counts.values())} images ({', '.join(f'{n} {c}' for c, n in counts.items())})",
                highlight=False,
            )


# --- up: the whole job ------------------------------------------------------------------


@app.command()
def up(
    data: Path | None = DataOpt,
    target: str | None = typer.Option(
        None, "--target", help="kind | docker | local (default: kind if kind and Docker are here, else local)."
    ),
    models: Path | None = ModelsOpt,
    port: int | None = typer.Option(None, "--port", help="Host port of the gateway (default 9696)."),
    sample: Path | None = typer.Option(
        None, "--sample", help="Photo to predict once deployed (default: one from the training data)."
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
    json_out: bool = JsonOpt,
) -> None:
    """Train if there is no model yet, deploy it where this machine allows, predict a sample photo."""
    from pizzactl.up import print_up
    from pizzactl.up import up as up_

    result = up_(settings(data_dir=data, target=target, models_dir=models, port=port), sample=sample, timeout=timeout)
    if json_out:
        print_json(result)
    else:
        print_up(result)


# --- train, runs, export, evaluate ----------------------------------------------------


# Long only in its signature: typer needs every option there; the body is one settings call
# and one library call (`remote.train_on`, which runs `pizzactl.train.train` for --on local).
@app.command()
def train(
    data: Path | None = DataOpt,
    backbone: str | None = typer.Option(None, "--backbone", help="Backbone name, or several: a,b,c."),
    weights: str | None = typer.Option(None, "--weights", help="imagenet | none | PATH to a weights file."),
    epochs: int | None = typer.Option(None, "--epochs", help="Head epochs (on cached features)."),
    fine_tune_epochs: int | None = typer.Option(
        None,
        "--fine-tune-epochs",
        help="Epochs with the top of the backbone unfrozen (default: the backbone's recipe, 6 for efficientnet_lite*, else 0; 0 turns it off).",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="The model's input size (default: the recipe's; training may use a smaller one, see docs/train.md, FixRes).",
    ),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    augment: bool | None = typer.Option(None, "--augment/--no-augment", help="Random flips/crops/colour."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for the split and the training."),
    output: Path | None = typer.Option(None, "--output", help="Models directory to export into."),
    on: str = typer.Option("local", "--on", help="Where: local, docker, kind, or a kube context (a Job)."),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="GPUs for the trainer (the CUDA image)."),
    cpu: str | None = typer.Option(None, "--cpu", help="CPU request of the training pod (default 2)."),
    memory: str | None = typer.Option(None, "--memory", help="Memory request and limit (default 4Gi)."),
    node_selector: list[str] | None = typer.Option(None, "--node-selector", help="KEY=VALUE (repeatable)."),
    toleration: list[str] | None = typer.Option(None, "--toleration", help="KEY[=VALUE]:EFFECT (repeatable)."),
    backoff_limit: int | None = typer.Option(None, "--backoff-limit", min=0, help="Failed pods retried (default 2)."),
    deadline: int | None = typer.Option(None, "--deadline", min=1, help="Seconds before the Job is stopped."),
    cluster: str | None = typer.Option(None, "--cluster", help="kind cluster name (default pizzactl)."),
    registry: str | None = typer.Option(None, "--registry", help="Registry for the trainer (--on CONTEXT)."),
    pull_secret: str | None = typer.Option(None, "--pull-secret", help="Image pull secret for --registry."),
    platform: str | None = typer.Option(None, "--platform", help="linux/amd64 or linux/arm64 (default: the nodes')."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds the training pod may wait to start."),
    attach: bool = typer.Option(False, "--attach", help="Follow the last Job again and collect its result."),
    deploy: bool | None = typer.Option(None, "--deploy/--no-deploy", help="Roll the new version out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the Job's objects; touch nothing."),
    json_out: bool = JsonOpt,
) -> None:
    """Train one or several backbones, print a leaderboard and export the best (here, in Docker or as a Job)."""
    s = settings(
        data_dir=data,
        backbone=backbone,
        weights=weights,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        image_size=image_size,
        batch_size=batch_size,
        augment=augment,
        seed=seed,
        models_dir=output,
        gpus=gpus,
        train_cpu=cpu,
        train_memory=memory,
        node_selector=",".join(node_selector) if node_selector else None,
        tolerations=",".join(toleration) if toleration else None,
        backoff_limit=backoff_limit,
        train_deadline=deadline,
        cluster=cluster,
        registry=registry,
        pull_secret=pull_secret,
        platform=platform,
    )
    from pizzactl.train import print_result, remote

    if dry_run:
        sys.stdout.write(remote.dry_run(s, on))
        return
    result = remote.train_on(s, on, attach=attach, timeout=timeout, deploy=deploy)
    if json_out:
        print_json(result)
    else:
        print_result(result)


@runs_app.command("list")
def runs_list(json_out: bool = JsonOpt) -> None:
    """All training runs, newest first."""
    from pizzactl.train.runs import list_runs, print_runs

    runs = list_runs(settings())
    if json_out:
        print_json(runs)
    else:
        print_runs(runs)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix) or a run directory."), json_out: bool = JsonOpt
) -> None:
    """One run's configuration and metrics."""
    from pizzactl.train.runs import print_run, show_run

    run = show_run(settings(), run_id)
    if json_out:
        print_json(run)
    else:
        print_run(run)


@app.command()
def export(
    run: str = typer.Argument(..., help="Run id (or a unique prefix) or a run directory."),
    to: Path | None = typer.Option(None, "--to", help="Models directory (default ./models)."),
    json_out: bool = JsonOpt,
) -> None:
    """Export a run's model again as a new SavedModel version."""
    from pizzactl.export import export_run

    version_dir = export_run(settings(models_dir=to), run)
    if json_out:
        print_json({"model_dir": str(version_dir), "version": int(version_dir.name)})
    else:
        out.print(str(version_dir))


@app.command()
def evaluate(
    model_dir: Path | None = typer.Argument(None, help="Exported version directory (default: the latest)."),
    data: Path | None = DataOpt,
    models: Path | None = ModelsOpt,
    errors: Path | None = typer.Option(None, "--errors", help="Write misclassified images to this CSV."),
    confusion_png: Path | None = typer.Option(
        None, "--confusion-matrix", help="Draw the confusion matrix to this PNG (needs [train])."
    ),
    runtime: ModelRuntime | None = typer.Option(
        None,
        "--runtime",
        help="What runs the model; auto (default): what the builtin model server would run.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Run the exported model on raw image bytes, as serving will, and report metrics."""
    from pizzactl.evaluate import evaluate as evaluate_
    from pizzactl.evaluate import print_metrics

    metrics = evaluate_(
        settings(data_dir=data, models_dir=models, model_runtime=runtime),
        model_dir=model_dir,
        errors_csv=errors,
        confusion_png=confusion_png,
    )
    if json_out:
        print_json(metrics)
    else:
        print_metrics(metrics)


# --- serve, deploy, predict, status, teardown -----------------------------------------


@app.command()
def serve(
    models: Path | None = ModelsOpt,
    port: int | None = typer.Option(None, "--port", help="Gateway port (default 9696)."),
    model_port: int | None = typer.Option(None, "--model-port", help="Model server port (default 8501)."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    allow_private_urls: bool | None = typer.Option(
        None, "--allow-private-urls/--no-allow-private-urls", help="Let the gateway fetch loopback/private URLs."
    ),
) -> None:
    """Run the model server and the gateway in the foreground (Ctrl-C stops both)."""
    from pizzactl.serving import serve as serve_

    serve_(
        settings(models_dir=models, port=port, model_port=model_port, host=host, allow_private_urls=allow_private_urls)
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
    from pizzactl.deploy.images import build as build_
    from pizzactl.deploy.images import build_trainer, print_images

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
        settings(endpoint=endpoint),
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


# --- bench -----------------------------------------------------------------------------


@bench_app.command("train")
def bench_train(
    backbone: str | None = typer.Option(
        None, "--backbone", help="Backbone (default: what `pizzactl train` trains, efficientnet_lite0)."
    ),
    epochs: int = typer.Option(20, "--epochs"),
    data: Path | None = DataOpt,
    weights: str | None = typer.Option(None, "--weights", help="imagenet | none | PATH"),
    limit: int | None = typer.Option(None, "--limit", help="Use at most this many images."),
    scale: str | None = typer.Option(
        None,
        "--scale",
        help="Instead: the whole `pizzactl train` on N photos each (e.g. 1571,5000,15000; re-crops past the data's own), cold: time and peak memory.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Plain model.fit over images vs the cached-feature path, side by side (or, with --scale, training cost vs photos)."""
    from pizzactl.bench import train as bench

    s = settings(data_dir=data, weights=weights)
    if scale:
        sizes = [int(n) for n in scale.split(",") if n.strip()]
        res = bench.bench_scaling(s, sizes, backbone=backbone)
        show = bench.print_scaling
    else:
        res = bench.bench_train(s, backbone=backbone, epochs=epochs, limit=limit)
        show = bench.print_bench
    if json_out:
        print_json(res)
    else:
        show(res)


@bench_app.command("serve")
def bench_serve(
    models: Path | None = ModelsOpt,
    concurrency: int = typer.Option(16, "--concurrency"),
    requests_: int = typer.Option(200, "--requests", help="Requests for the throughput phase."),
    data: Path | None = DataOpt,
    runtimes: str | None = typer.Option(
        None, "--runtimes", help="Comma-separated: tensorflow, litert, litert-int8 (default: every one the model has)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """The model's best in-process throughput (thread and batch sweep) vs end to end, per runtime."""
    from pizzactl.bench.serve import bench_serve as bench
    from pizzactl.bench.serve import print_bench

    chosen = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    res = bench(
        settings(models_dir=models, data_dir=data), concurrency=concurrency, requests=requests_, runtimes=chosen
    )
    if json_out:
        print_json(res)
    else:
        print_bench(res)


# --- the error boundary -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turn every error into a message, a hint and an exit code.

    Usage errors are click's (exit 2, printed by click itself); `PizzaError` is the user's
    to fix (its hint is printed); anything else is a bug in pizzactl.
    """
    # Quiet TensorFlow's C++ logging where it honours TF_CPP_MIN_LOG_LEVEL (CUDA probing errors
    # on CPU-only machines); --debug or an explicit TF_CPP_MIN_LOG_LEVEL keeps it.
    args = sys.argv[1:] if argv is None else argv
    if "--debug" not in args:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from pizzactl import tfimport

        if tfimport.needs_tensorflow(args):
            tfimport.import_quietly()
    try:
        app(args=argv, prog_name="pizzactl")
    except PizzaError as exc:
        _user_error(exc)
    except ImportError as exc:  # an extra's module (TensorFlow without [train]) is the user's to install
        missing = as_missing_extra(exc)
        if missing is None:
            _internal_error(exc)
        _user_error(missing)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        _internal_error(exc)


def _user_error(exc: PizzaError) -> NoReturn:
    if _DEBUG["on"]:
        import traceback

        traceback.print_exc()
    err.print(f"[bold red]Error:[/] {escape(exc.message)}", highlight=False)
    if exc.hint:
        err.print(f"[yellow]Hint:[/] {escape(exc.hint)}", highlight=False)
    sys.exit(exc.exit_code)


def _internal_error(exc: BaseException) -> NoReturn:
    """A bug: say so, and how to report it."""
    if _DEBUG["on"]:
        raise exc
    err.print(f"[bold red]Internal error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
    err.print("[yellow]Hint:[/] run again with --debug for the traceback and report it.", highlight=False)
    sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    main()
