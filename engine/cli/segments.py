"""Commands for segments: ``segment list|count|show|explain``; ``schema segment|campaign``."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import (
    MAX_COUNT,
    cli,
    command_clock,
    format_option,
    load_project,
    now_option,
    project_option,
)
from engine.cli.output import print_csv, print_json, print_table
from engine.segments.commands import (
    count_members,
    explain_members,
    list_segments,
    show_members,
)
from engine.segments.schema import schema_text

SHOW_COLUMNS = ("id", "external_id", "email", "store_name", "plan", "city", "status")


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(warning, err=True)


@cli.group()
def segment() -> None:
    """Inspect the segments in segments/*.yaml."""


@segment.command("list")
@project_option
@now_option
@format_option("table", "json", "csv")
def segment_list(project_dir: Path, now_text: str | None, output_format: str) -> None:
    """Every segment with its description and how many merchants are in it now."""
    project = load_project(project_dir)
    listing = list_segments(project, now=command_clock(now_text).now())
    _warn(listing.warnings)
    rows = listing.rows
    folder = project.settings.segments_dir
    if output_format == "json":
        print_json(rows)
    elif output_format == "csv":
        print_csv(rows, ("segment", "description", "count"))
    elif not rows and not folder.is_dir():
        click.echo(f"No segments: there is no folder {folder} (is this a campaign project?).")
    elif not rows:
        click.echo(f"No segments in {folder}.")
    else:
        print_table(
            ((r["segment"], r["description"], r["count"]) for r in rows),
            ("segment", "description", "merchants"),
        )
    if listing.problems:
        # The usable segments are listed; the broken files still make it a failure.
        raise click.exceptions.Exit(1)


@segment.command("count")
@click.argument("name")
@project_option
@now_option
@format_option("table", "json")
def segment_count(name: str, project_dir: Path, now_text: str | None, output_format: str) -> None:
    """How many merchants are in segment NAME."""
    counted = count_members(load_project(project_dir), name, now=command_clock(now_text).now())
    _warn(counted.warnings)
    count = counted.count
    if output_format == "json":
        print_json({"segment": name, "count": count})
    else:
        click.echo(f"{name}: {count} merchant{'' if count == 1 else 's'}")


@segment.command("show")
@click.argument("name")
@click.option(
    "--limit", type=click.IntRange(0, MAX_COUNT), default=None, help="At most N merchants."
)
@project_option
@now_option
@format_option("table", "csv", "json")
def segment_show(
    name: str, limit: int | None, project_dir: Path, now_text: str | None, output_format: str
) -> None:
    """The merchants in segment NAME, by id."""
    shown = show_members(
        load_project(project_dir), name, now=command_clock(now_text).now(), limit=limit
    )
    _warn(shown.warnings)
    rows = shown.rows
    if output_format == "json":
        print_json(rows)
    elif output_format == "csv":
        print_csv(rows, [c for c in rows[0]] if rows else SHOW_COLUMNS)
    else:
        print_table(
            ([r[c] for c in SHOW_COLUMNS] for r in rows),
            SHOW_COLUMNS,
            title=f"{name}: {len(rows)} merchant{'' if len(rows) == 1 else 's'}"
            + (" (limited)" if limit is not None and len(rows) == limit else ""),
        )


@segment.command("explain")
@click.argument("name")
@project_option
@now_option
def segment_explain(name: str, project_dir: Path, now_text: str | None) -> None:
    """The SQL of segment NAME (with placeholders) and the database's query plan."""
    explained = explain_members(load_project(project_dir), name, now=command_clock(now_text).now())
    _warn(explained.warnings)
    explanation = explained.explanation
    click.echo("-- SQL")
    click.echo(explanation.sql)
    click.echo("-- parameters")
    for key, value in explanation.params.items():
        click.echo(f"{key} = {value!r}")
    click.echo("-- query plan")
    for line in explanation.plan:
        click.echo(line)


@cli.group()
def schema() -> None:
    """JSON Schemas of the project's YAML files, for editor autocompletion."""


def _out_option(func):
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to this file (relative to the project folder) instead of standard output.",
    )(func)


def _emit(text: str, out: Path | None, project_dir: Path) -> None:
    """A schema on standard output, or written to ``out`` (relative to the project folder)."""
    if out is None:
        click.echo(text, nl=False)
        return
    out = out if out.is_absolute() else project_dir / out
    out.write_text(text, encoding="utf-8")
    click.echo(f"Wrote {out}.")


@schema.command("segment")
@_out_option
@project_option
def schema_segment(out: Path | None, project_dir: Path) -> None:
    """The JSON Schema of segments/*.yaml.

    Point your editor at it, e.g. with the YAML extension in VS Code:
    "yaml.schemas": {"segment.schema.json": "segments/*.yaml"}.
    """
    _emit(schema_text(), out, project_dir)


@schema.command("campaign")
@_out_option
@project_option
def schema_campaign(out: Path | None, project_dir: Path) -> None:
    """The JSON Schema of campaigns/*.yaml.

    Point your editor at it, e.g. with the YAML extension in VS Code:
    "yaml.schemas": {"campaign.schema.json": "campaigns/*.yaml"}.
    """
    from engine.campaigns.schema import schema_text as campaign_schema_text

    _emit(campaign_schema_text(), out, project_dir)
