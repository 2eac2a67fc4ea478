"""`pizzactl serve`: the model server and the gateway in the foreground."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import ApiKeyOpt, ModelsOpt, app, settings
from pizzactl.serving import serve as serve_


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
