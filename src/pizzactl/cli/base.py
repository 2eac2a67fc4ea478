"""The typer app, its command groups and the options several verbs share.

The verbs live in the modules beside this one, one per verb or verb group, each registering
on these objects; `pizzactl.cli` imports them in the order `pizzactl --help` lists them.
"""

from __future__ import annotations

import logging

import typer

from pizzactl import __version__
from pizzactl.config import Settings, load_settings
from pizzactl.console import out

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

DEBUG = {"on": False}

JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout instead of tables.")
DataOpt = typer.Option(None, "--data", help="Dataset folder with one sub-folder per class.")
ModelsOpt = typer.Option(None, "--models", help="Models directory (TF Serving layout MODELS/pizza/<version>).")
ApiKeyOpt = typer.Option(
    None,
    "--api-key",
    help="Require this API key at the gateway (only its SHA-256 is passed on); env PIZZACTL_API_KEY keeps it "
    "out of the process list.",
)


def settings(**flags) -> Settings:
    """Settings from every layer; flags the user did not give are None and ignored."""
    return load_settings(flags)


def _version(value: bool) -> None:
    if value:
        out.print(f"pizzactl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors, and the debug log."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    DEBUG["on"] = debug
    if debug:  # pizzactl's debug log (e.g. what the LiteRT converter printed) on stderr
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
        logging.getLogger("pizzactl").setLevel(logging.DEBUG)
