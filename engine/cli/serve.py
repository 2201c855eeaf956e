"""Commands for the HTTP side and returned mail: ``serve`` and ``bounces import``."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import cli, load_project, project_option
from engine.clock import SystemClock


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@project_option
def serve(host: str, port: int, project_dir: Path) -> None:
    """Answer one-click unsubscribes, the preference page, click redirects and the events API."""
    from engine.serve.server import serve as run_server  # starlette and uvicorn load only here

    run_server(load_project(project_dir), SystemClock(), host=host, port=port)
