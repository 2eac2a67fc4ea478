"""The typer app, its command groups and the options several verbs share.

The verbs live in the modules beside this one, one per verb or verb group, each registering
on these objects; `pizzactl.cli` imports them in the order `pizzactl --help` lists them.
"""

from __future__ import annotations

import logging
from typing import Any

import typer

from pizzactl import __version__
from pizzactl.config import Settings, declaration, load_settings
from pizzactl.console import err, out

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


def option(name: str) -> Any:
    """The option of a declared setting (config.py): its flag, help and shown default come from
    the declaration, never typed here. Its value is None unless given, so an unset flag leaves
    pizzactl.toml and PIZZACTL_* in charge (`settings(**flags)` ignores None)."""
    d = declaration(name)
    if d.flag is None:
        raise ValueError(f"setting {name} has no flag (config.py)")  # a bug in a CLI module
    flag = f"{d.flag}/--no-{d.flag[2:]}" if d.is_bool else d.flag
    shown = d.default_text if d.default_text != "unset" else False  # nothing to say about a plain unset
    return typer.Option(None, flag, help=d.help, show_default=shown, min=d.min)


def alias(name: str, flag: str) -> Any:
    """A hidden, deprecated spelling of a setting's flag (`train --output` for `--models`), kept
    for old scripts; `settings()` takes it through `deprecated()`."""
    return typer.Option(None, flag, hidden=True, help=f"Deprecated: use {declaration(name).flag}.")


def deprecated(value: Any, old: Any, name: str, flag: str) -> Any:
    """`value` (the setting's own flag), else the deprecated alias's, with a warning on stderr."""
    if old is not None:
        err.print(f"[yellow]Warning:[/] {flag} is deprecated; use {declaration(name).flag}.", highlight=False)
    return value if value is not None else old


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
