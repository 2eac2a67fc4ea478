"""Where output goes: results to stdout, progress and logs to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

out = Console()
err = Console(stderr=True)


def print_json(obj: Any) -> None:
    """One JSON document on stdout, for scripts (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    err.print(message, highlight=False)
