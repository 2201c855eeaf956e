"""Commands for the HTTP side and returned mail: ``serve`` and ``bounces import``."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import (
    cli,
    format_option,
    is_terminal,
    load_project,
    now_option,
    parse_now,
    project_option,
)
from engine.cli.output import print_json, print_table, progress_bar
from engine.clock import SystemClock, clock_for


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes (one per core; with SQLite they share one writer).",
)
@click.option(
    "--access-log/--no-access-log", default=True, show_default=True, help="Log each request."
)
@project_option
def serve(host: str, port: int, workers: int, access_log: bool, project_dir: Path) -> None:
    """Answer one-click unsubscribes, the preference page, click redirects and the events API.

    Meant to run behind an HTTPS reverse proxy at CAMPAIGN_BASE_URL; needs
    CAMPAIGN_SECRET_KEY (the key the links were signed with). The events API is
    on when CAMPAIGN_API_TOKEN is set.
    """
    from engine.serve.server import serve as run_server  # starlette and uvicorn load only here

    project = load_project(project_dir)
    run_server(project, SystemClock(), host=host, port=port, log=access_log, workers=workers)


@cli.group()
def bounces() -> None:
    """Returned mail: bounces suppress addresses, auto-replies are ignored."""


@bounces.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@format_option("table", "json")
@now_option
@project_option
def bounces_import(path: Path, output_format: str, now_text: str | None, project_dir: Path) -> None:
    """Read returned mail from PATH (an mbox file or a Maildir folder).

    Hard bounces (5.x.x) suppress the address for every topic; soft ones
    (4.x.x) are counted and suppress it after [limits] soft_bounce_limit in
    30 days; delays and auto-replies change nothing. Importing the same mail
    twice changes nothing.
    """
    from engine.bounces import import_bounces

    project = load_project(project_dir)
    clock = clock_for(parse_now(now_text))
    with progress_bar("Reading returned mail", None, is_terminal()) as update:
        report = import_bounces(
            project.database(), project.settings, path, now=clock.now(), on_progress=update
        )
    counts = report.as_dict()
    if output_format == "json":
        print_json(counts)
        return
    print_table(counts.items(), ("returned mail", "count"), title=str(path))
