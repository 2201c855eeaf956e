"""``campaign report``: outcomes per campaign, broadcast run and drip step."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from engine.cli.main import cli, format_option, load_project, project_option
from engine.cli.output import echo_err, print_csv, print_json, print_table
from engine.config import LOCALES
from engine.errors import ReportError
from engine.times import parse_timestamp

# The table shows what fits a laptop terminal; json and csv carry every column.
# lift_ci is the 95% interval of the lift, in points, as one cell.
TABLE_COLUMNS = (
    "campaign",
    "run",
    "step",
    "sent",
    "failed",
    "holdout",
    "conversions",
    "conversion_rate",
    "holdout_conversion_rate",
    "lift",
    "lift_ci",
    "revenue",
    "unsubscribes",
)


def _time(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except (ValueError, OverflowError):
        raise ReportError(f"{option} {value!r} is not an ISO 8601 time (e.g. 2026-12-01)") from None


def _cell(row: dict, column: str) -> str:
    if column == "lift_ci":
        if row["lift_ci_low"] is None:
            return ""
        return f"{row['lift_ci_low'] * 100:+.1f} to {row['lift_ci_high'] * 100:+.1f}"
    value = row[column]
    if value is None:
        return ""
    if column.endswith("rate"):
        return f"{value:.1%}"
    if column == "lift":
        return f"{value * 100:+.1f} pt"
    return str(value)


@cli.command()
@click.argument("campaign", required=False)
@click.option(
    "--since", metavar="ISO", default=None, help="Only messages sent at or after this time."
)
@click.option("--until", metavar="ISO", default=None, help="Only messages sent before this time.")
@click.option("--run", "run_label", default=None, help="Only this broadcast run.")
@format_option("table", "json", "csv")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML report with charts to this file.",
)
@click.option(
    "--locale",
    type=click.Choice(LOCALES),
    default=None,
    help="Language of the HTML report (default: [project] default_locale).",
)
@project_option
def report(
    campaign: str | None,
    since: str | None,
    until: str | None,
    run_label: str | None,
    output_format: str,
    html_file: Path | None,
    locale: str | None,
    project_dir: Path,
) -> None:
    """Outcomes per campaign, broadcast run and drip step: conversions and lift against holdout."""
    from engine.reports import COLUMNS, campaign_report, write_html_report

    project = load_project(project_dir)
    window = {"since": _time("--since", since), "until": _time("--until", until), "run": run_label}
    if html_file is not None:
        written = write_html_report(project, html_file, campaign, locale=locale, **window)
        rows = written.rows
    else:
        rows = campaign_report(project, campaign, **window)
    if output_format == "json":
        print_json(rows)
    elif output_format == "csv":
        print_csv(rows, COLUMNS)
    else:
        print_table(
            [[_cell(r, c) for c in TABLE_COLUMNS] for r in rows],
            TABLE_COLUMNS,
            title="campaign report",
        )
        for row in rows:
            if row["note"]:
                where = f"step {row['step']}" if row["step"] is not None else f"run {row['run']}"
                click.echo(f"note: {row['campaign']} {where}: {row['note']}")
    if html_file is not None:
        echo_err(f"wrote {html_file} ({written.size // 1024 + 1} KB)")
