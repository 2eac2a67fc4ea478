"""Where output goes: results to stdout, progress and logs to stderr.

Both consoles soft-wrap: a message, a hint or a path is written as one line and the terminal
(or the log viewer) wraps it for display. Rich would otherwise break lines at its width, 80
columns when the output is a pipe or a file, so a long path in a log or a test's captured
stderr would be cut in two. On a terminal, tables fit its width; into a pipe or a file (no
COLUMNS set) they are as wide as their content, so each row stays one greppable line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

from pizzactl.results import jsonable

PIPE_WIDTH = 1000  # "as wide as the content" for tables written to a pipe or a file


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


out = _console(stderr=False)
err = _console(stderr=True)


def print_json(obj: Any) -> None:
    """One JSON document on stdout, for scripts (no rich markup, no wrapping); a typed result
    (`pizzactl.results`) anywhere in it is written as its `to_json()`."""
    sys.stdout.write(json.dumps(obj, indent=2, default=jsonable) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    err.print(message, highlight=False)
