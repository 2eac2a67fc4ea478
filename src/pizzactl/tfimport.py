"""Import TensorFlow without its start-up chatter on stderr.

TensorFlow 2.19+ logs through absl before absl is initialised, so TF_CPP_MIN_LOG_LEVEL does not
silence its import-time INFO lines ("oneDNN custom operations are on", "Could not find cuda
drivers", tensorflow/tensorflow#100442). Those lines would be the first thing a user reads on
every `train`. The import (and the device lookup, whose failed CUDA probe is logged as an
ERROR on every CPU-only machine) runs with file descriptor 2 captured; INFO lines, and the CUDA
probe's line when no GPU turned up, are dropped; anything else (warnings, errors) is written
back. `--debug` skips all this.

`quiet_tf_logs` is the one place pizzactl sets TF_CPP_MIN_LOG_LEVEL (for itself, or in a child's
environment); `import_quietly`, which every TensorFlow import path goes through, calls it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, MutableMapping

from pizzactl.errors import missing_extra

NOISE = re.compile(
    r"^(I\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
# On a machine without a usable GPU, TensorFlow's first device lookup logs this at ERROR level:
# it only means "running on CPU", which is what pizzactl expects there.
NO_GPU = re.compile(r"^E\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\] failed call to cuInit")

# TensorFlow's C++ log level where pizzactl picks it: 2 hides INFO and WARNING lines; the CLI's 3
# (without --debug) also hides the ERROR a CPU-only machine's CUDA probe logs.
TF_LOG_LEVEL = "2"
CLI_TF_LOG_LEVEL = "3"


def quiet_tf_logs(env: MutableMapping[str, str] | None = None, level: str = TF_LOG_LEVEL) -> None:
    """Set TF_CPP_MIN_LOG_LEVEL in `env` (default: this process, before TensorFlow is imported)
    unless it is set already: a user's own value, or the CLI's (absent under --debug), wins."""
    (os.environ if env is None else env).setdefault("TF_CPP_MIN_LOG_LEVEL", level)


# Verbs that load TensorFlow anyway: importing it up front (quietly) costs them nothing.
TF_COMMANDS = {("train",), ("export",), ("evaluate",), ("bench", "train"), ("bench", "serve")}


def needs_tensorflow(argv: list[str]) -> bool:
    words = [a for a in argv if not a.startswith("-")]
    if any(a in ("--help", "-h", "--version") for a in argv):
        return False
    if words[:1] == ["predict"] and any(a == "--explain" or a.startswith("--explain=") for a in argv):
        return True
    if words[:1] == ["train"] and _on_elsewhere(argv):
        return False  # `train --on docker|kind|CONTEXT` needs no TensorFlow here
    return tuple(words[:1]) in TF_COMMANDS or tuple(words[:2]) in TF_COMMANDS


def _on_elsewhere(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        value = (
            arg.split("=", 1)[1]
            if arg.startswith("--on=")
            else (argv[i + 1] if arg == "--on" and i + 1 < len(argv) else None)
        )
        if value is not None and value not in ("", "local"):
            return True
    return False


# Lines the LiteRT converter and interpreter write straight to file descriptor 2, whatever the log
# level: the quantizer's settings and the XNNPACK delegate's creation. Nothing for a user to act on.
LITERT_NOISE = re.compile(r"^(fully_quantize: \d|INFO: Created TensorFlow Lite XNNPACK delegate)")


@contextlib.contextmanager
def native_stderr_filtered(*noise: re.Pattern[str], drop: Callable[[str], bool] = lambda line: False):
    """Run the block with file descriptor 2 captured (native code writes there, not to sys.stderr);
    then write back every line that matches none of `noise` (nor `drop`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if line and not any(n.match(line) for n in noise) and not drop(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def import_quietly() -> None:
    """Import tensorflow with its INFO start-up lines filtered out of stderr (no-op if imported)."""
    quiet_tf_logs()
    if "tensorflow" in sys.modules:
        return
    gpus = None
    with native_stderr_filtered(NOISE, drop=lambda line: gpus == [] and bool(NO_GPU.match(line))):
        try:
            import tensorflow

            gpus = tensorflow.config.list_physical_devices("GPU")  # the CUDA probe, inside the capture
        except ImportError:
            pass  # the command's own import says which extra to install


def require_tensorflow() -> None:
    """Fail first, with the extra to install, where a command cannot work without TensorFlow."""

    try:
        import_quietly()
        import tensorflow  # noqa: F401
    except ImportError:
        raise missing_extra("tensorflow") from None


def require_training() -> None:
    """`require_tensorflow`, and TensorBoard: every run writes its events with tf.summary, which
    TensorFlow only fails on at the first summary (TBNotInstalledError), after the data is read."""

    require_tensorflow()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise missing_extra("tensorboard") from None
