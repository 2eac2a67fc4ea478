"""`pizzactl serve`: the model server and the gateway in the foreground."""

from __future__ import annotations

from pathlib import Path

from pizzactl.cli.base import app, option, settings
from pizzactl.serving import serve as serve_


@app.command()
def serve(
    models: Path | None = option("models_dir"),
    port: int | None = option("port"),
    model_port: int | None = option("model_port"),
    host: str | None = option("host"),
    allow_private_urls: bool | None = option("allow_private_urls"),
    api_key: str | None = option("api_key"),
    model_protocol: str | None = option("model_protocol"),
) -> None:
    """Run the model server and the gateway in the foreground (Ctrl-C stops both)."""
    serve_(
        settings(
            models_dir=models,
            port=port,
            model_port=model_port,
            host=host,
            allow_private_urls=allow_private_urls,
            api_key=api_key,
            model_protocol=model_protocol,
        )
    )
