"""Serving: a TF Serving-compatible model server and a gateway in front of it.

`serve(settings)` runs both in the foreground as child processes with their logs interleaved
on stderr; Ctrl-C (or SIGTERM) stops both. The servers themselves are
`python -m pizzactl.serving.modelserver` and `python -m pizzactl.serving.gateway`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pizzactl.config import add_argument, load_settings
from pizzactl.console import err
from pizzactl.errors import DeployError, gateway_body, require_extra
from pizzactl.model.store import latest_version_dir
from pizzactl.serving import processes as proc
from pizzactl.serving.auth import key_env
from pizzactl.serving.connections import ConnectionLimits, uvicorn_config


def server_arguments(parser) -> None:
    """The flags both servers take (each also reads PIZZACTL_*; a flag wins)."""

    for name in ("model_name", "host", "log_level"):
        add_argument(parser, name)


def log_to_stderr(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_server(app, host: str, port: int, level: str, access_log: bool = False, *, settings=None, body=None) -> None:
    """uvicorn on uvloop + httptools (what uvicorn[standard] installs) until SIGTERM, with the
    slow-client timeouts and connection limits of `settings` (`connections.py`); errors in `body`'s shape."""
    import uvicorn

    limits = ConnectionLimits.from_settings(settings if settings is not None else load_settings())
    config = uvicorn_config(app, host, port, level, access_log=access_log, limits=limits, body=body or gateway_body)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    if not server.started:  # e.g. the port is taken: uvicorn.run's exit code
        sys.exit(3)


class _Stop(Exception):
    """Raised in the main thread by our SIGTERM/SIGHUP handler."""


def _pump(stream, prefix: str) -> None:
    """Copy a child's output to our stderr line by line, each line tagged with its origin."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        sys.stderr.write(f"{prefix} {line}\n")
        sys.stderr.flush()
    stream.close()


def serve(settings) -> None:
    """Model server + gateway in the foreground until Ctrl-C; a child that dies stops the other."""

    require_extra("serve")  # the gateway and the model server run in children: say it here, not in their logs
    version_dir = latest_version_dir(settings.models_dir)
    proc.require_free_port(settings.host, settings.port)
    model_port = proc.pick_model_port("127.0.0.1", settings.model_port, avoid=[settings.port])
    if model_port != settings.model_port:
        err.print(f"Port {settings.model_port} is taken; the model server listens on {model_port} instead.")

    stop_signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]

    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in stop_signals}
    started = None
    try:
        started = proc.start_pair(
            Path(settings.models_dir).expanduser().resolve(),
            host=settings.host,
            port=settings.port,
            model_port=model_port,
            allow_private_urls=settings.allow_private_urls,
            attached=True,
            logs={proc.MODELSERVER: subprocess.PIPE, proc.GATEWAY: subprocess.PIPE},
            env=key_env(settings),
            model_protocol=settings.model_protocol,
        )
        pumps = [
            threading.Thread(target=_pump, args=(started.modelserver.stdout, "[model]  "), daemon=True),
            threading.Thread(target=_pump, args=(started.gateway.stdout, "[gateway]"), daemon=True),
        ]
        for t in pumps:
            t.start()
        children = {"model server": started.modelserver, "gateway": started.gateway}
        proc.wait_ready(started.url, children, timeout=600.0)
        err.print(
            f"[bold green]Serving[/] {version_dir} at [bold]{started.url}[/] "
            f"(model server {started.model_url}). Try: pizzactl predict --endpoint {started.url} IMAGE. Ctrl-C stops.",
            highlight=False,
        )
        while True:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    raise DeployError(f"The {name} exited with code {code}; stopping.", hint="See its log lines above.")
            time.sleep(0.2)
    except (KeyboardInterrupt, _Stop):
        err.print("Stopping the gateway and the model server ...")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if started is not None:
            started.stop(grace=10.0)
    err.print("Stopped.")
