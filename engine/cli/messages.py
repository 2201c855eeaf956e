"""Commands for messages: ``render`` (one message to look at) and ``check`` (the whole project)."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import cli, command_clock, load_project, now_option, project_option


@cli.command()
@click.argument("campaign")
@click.option("--merchant", "who", required=True, help="The merchant's id or email address.")
@click.option(
    "--step", type=click.IntRange(1, 1000), default=None, help="The drip step (default: 1)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the message as .eml and its HTML as .html in this folder.",
)
@now_option
@project_option
def render(
    campaign: str,
    who: str,
    step: int | None,
    out_dir: Path | None,
    now_text: str | None,
    project_dir: Path,
) -> None:
    """Render one message of CAMPAIGN for one merchant, exactly as it would be sent."""
    from engine.preview import render_preview

    project = load_project(project_dir)
    preview = render_preview(project, campaign, who, now=command_clock(now_text).now(), step=step)
    if out_dir is not None:
        eml, html = preview.write(out_dir)
        click.echo(f"{eml}\n{html}")
        return
    for name, value in preview.headers:
        click.echo(f"{name}: {value}")
    click.echo(f"Template: {preview.template} ({', '.join(preview.parts)})")
    click.echo("")
    click.echo(preview.message.text)


@cli.command()
@now_option
@project_option
def check(now_text: str | None, project_dir: Path) -> None:
    """Validate every segment, campaign and template; render each template for sample merchants."""
    from engine.checking import check_project

    result = check_project(load_project(project_dir), now=command_clock(now_text).now())
    for problem in result.problems:
        click.echo(problem)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not result.ok:
        click.echo(f"{len(result.problems)} problem(s) found.", err=True)
        raise click.exceptions.Exit(1)
    click.echo(result.summary)
