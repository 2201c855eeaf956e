"""``campaign report``: outcomes per campaign, broadcast run and drip step.

Message counts by state, conversions and revenue in the attribution window,
unsubscribes, and the lift against the holdout with its Newcombe interval
(``outcomes``, over the SQL of ``queries``); the HTML form in ``page``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.project import Project
from engine.reports.outcomes import COLUMNS, collect, report_rows
from engine.reports.queries import Filter
from engine.reports.warmup import start_import

__all__ = ["COLUMNS", "Filter", "HtmlReport", "campaign_report", "write_html_report"]


def campaign_report(
    project: Project,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """The report's rows (SPEC 8's JSON form), for one campaign or every campaign that sent."""
    flt = Filter(campaign=campaign, run=run, since=since, until=until)
    with project.database().connect() as conn:
        return report_rows(conn, project.settings, flt)


@dataclass(frozen=True)
class HtmlReport:
    path: Path
    size: int  # bytes written
    rows: list[dict[str, Any]]


def write_html_report(
    project: Project,
    path: Path,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    run: str | None = None,
    locale: str | None = None,
) -> HtmlReport:
    """Write the self-contained HTML report to ``path``; returns its rows as well."""
    flt = Filter(campaign=campaign, run=run, since=since, until=until)
    settings = project.settings
    start_import("engine.reports.page")  # matplotlib: loaded while the database works
    with project.database().connect() as conn:
        outcomes = collect(conn, settings, flt)
        from engine.reports.page import render_page

        locale = locale or settings.project.default_locale
        html = render_page(conn, settings, flt, outcomes, locale)
    data = html.encode("utf-8")
    path.write_bytes(data)
    return HtmlReport(path=path, size=len(data), rows=outcomes.rows)
