"""Commands for the database and its data: ``db upgrade``, ``import``, ``demo``."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import cli, is_terminal, load_project, project_option
from engine.cli.output import echo_err, print_table, progress_bar
from engine.db import describe_url, upgrade_schema
from engine.importer import KINDS, import_file


@cli.group()
def db() -> None:
    """Create or migrate the database schema."""


@db.command("upgrade")
@project_option
def db_upgrade(project_dir: Path) -> None:
    """Create the schema, or migrate it to the newest revision."""
    project = load_project(project_dir)
    before, after = upgrade_schema(project.engine)
    where = describe_url(project.engine)
    if before == after:
        click.echo(f"{where}: schema is up to date (revision {after}).")
    else:
        click.echo(f"{where}: schema migrated from {before or 'empty'} to revision {after}.")


@cli.command("import")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@project_option
def import_command(kind: str, file: Path, project_dir: Path) -> None:
    """Load merchants, orders or activities from a CSV or JSON Lines FILE.

    Bad rows are listed with their line number and left out; the good rows are
    imported. A key given on several lines is imported once (the last line wins)
    and each repeat is listed as a warning. The exit code is 1 when any row was
    rejected.
    """
    project = load_project(project_dir)
    with progress_bar(f"Importing {kind}", None, is_terminal()) as update:
        report = import_file(project.database(), kind, file, on_progress=update)
    repeated = f", {report.warning_count} repeated" if report.warning_count else ""
    click.echo(
        f"{file}: read {report.read} rows, imported {report.imported}, "
        f"rejected {report.rejected_count}{repeated}."
    )
    for row in report.warnings:
        echo_err(f"{file}:{row.line}: warning: {row.reason}")
    if report.warning_count > len(report.warnings):
        echo_err(f"... and {report.warning_count - len(report.warnings)} more warnings.")
    if not report.ok:
        for row in report.rejected:
            echo_err(f"{file}:{row.line}: {row.reason}")
        more = report.rejected_count - len(report.rejected)
        if more:
            echo_err(f"... and {more} more rejected rows.")
        raise click.exceptions.Exit(1)


@cli.command()
@click.option(
    "--merchants",
    "count",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="How many demo merchants.",
)
@click.option(
    "--seed", type=int, default=1212, show_default=True, help="Random seed (same seed, same data)."
)
@project_option
def demo(count: int, seed: int, project_dir: Path) -> None:
    """Create the database, load realistic demo data and dry-run every example campaign."""
    from engine.demo import run_demo

    project = load_project(project_dir)
    summary = run_demo(project, merchants=count, seed=seed)
    click.echo(f"Demo data in {describe_url(project.engine)}:")
    print_table(summary.data_rows(), ("table", "rows"))
    for title, columns, rows in summary.sections:
        print_table(rows, columns, title=title)
    for line in summary.notes:
        click.echo(line)
