"""The `pizzactl` command line: one thin function per verb over the library.

Each verb parses its flags, resolves `Settings`, calls the library function of the same
name and formats the answer (rich for people, `--json` for scripts). Each verb (or verb
group: `data`, `runs`, `bench`, deploy's family) has its own module here that registers on
the app of `cli.base`; errors are handled once, in `main()` below. Heavy imports (tensorflow, docker, kubernetes) live inside
the library functions, so `pizzactl --help` stays instant.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.markup import escape

from pizzactl import tfimport
from pizzactl.cli.base import DEBUG, app
from pizzactl.console import err
from pizzactl.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, PizzaError, as_missing_extra

# Importing the verb modules registers their commands; `pizzactl --help` lists them in this order.
# isort: off
from pizzactl.cli import up  # noqa: F401
from pizzactl.cli import train  # noqa: F401
from pizzactl.cli import export  # noqa: F401
from pizzactl.cli import evaluate  # noqa: F401
from pizzactl.cli import serve  # noqa: F401
from pizzactl.cli import build  # noqa: F401
from pizzactl.cli import deploy  # noqa: F401
from pizzactl.cli import rollout  # noqa: F401
from pizzactl.cli import predict  # noqa: F401
from pizzactl.cli import doctor  # noqa: F401
from pizzactl.cli import runs  # noqa: F401
from pizzactl.cli import config  # noqa: F401
from pizzactl.cli import data  # noqa: F401
from pizzactl.cli import bench  # noqa: F401
# isort: on

__all__ = ["app", "main"]

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
        tfimport.quiet_tf_logs(level=tfimport.CLI_TF_LOG_LEVEL)
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
    if DEBUG["on"]:
        import traceback

        traceback.print_exc()
    err.print(f"[bold red]Error:[/] {escape(exc.message)}", highlight=False)
    if exc.hint:
        err.print(f"[yellow]Hint:[/] {escape(exc.hint)}", highlight=False)
    sys.exit(exc.exit_code)


def _internal_error(exc: BaseException) -> NoReturn:
    """A bug: say so, and how to report it."""
    if DEBUG["on"]:
        raise exc
    err.print(f"[bold red]Internal error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
    err.print("[yellow]Hint:[/] run again with --debug for the traceback and report it.", highlight=False)
    sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    main()
