"""Report rows: one per campaign and broadcast run or drip step, in the JSON form of SPEC 8."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

import engine.reports.queries as queries
from engine.config import Settings
from engine.engagement import grouped_counts
from engine.errors import ProblemList, ReportError
from engine.outbox import State
from engine.reports.interval import MIN_HOLDOUT, STATSMODELS, lift_interval, rate
from engine.reports.queries import Filter, Key
from engine.reports.warmup import start_import
from engine.send_report import MANUAL_RUN

COLUMNS = (
    "campaign",
    "run",
    "step",
    "sent",
    "deferred",
    "failed",
    "suppressed",
    "unknown",
    "queued",
    "holdout",
    "exited",
    "waiting",
    "conversions",
    "holdout_conversions",
    "conversion_rate",
    "holdout_conversion_rate",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "revenue",
    "unsubscribes",
    "bounced",
    "soft_bounces",
    "clicks",
    "note",
)
COUNTS = tuple(c for c in COLUMNS[3:] if not c.endswith(("rate", "lift", "low", "high", "note")))
SMALL_SAMPLE = f"fewer than {MIN_HOLDOUT} merchants in the holdout: too small a sample to conclude"
NO_HOLDOUT = "no holdout: lift cannot be measured"

# Messages still on their way count as queued: waiting, claimed, or being handed over.
_FOLD = {
    str(State.QUEUED): "queued",
    str(State.SENDING): "queued",
    str(State.COMMITTING): "queued",
    str(State.SENT): "sent",
    str(State.DEFERRED): "deferred",
    str(State.FAILED): "failed",
    str(State.SUPPRESSED): "suppressed",
    str(State.UNKNOWN): "unknown",
    str(State.HOLDOUT): "holdout",
}


def engagement_counts(conn: Connection, flt: Filter) -> dict[Key, dict[str, int]]:
    """Clicks and hard and soft bounces per row, of the messages the report covers."""
    return {
        (campaign, run, step): {k: counts[k] for k in ("clicks", "bounced", "soft_bounces")}
        for (campaign, step, run), counts in grouped_counts(
            conn, where=queries.message_filter(flt)
        ).items()
    }


def drip_progress_counts(conn: Connection, flt: Filter) -> dict[Key, dict[str, int]]:
    """Merchants who left a drip before a step (``exited``) or wait for it (``waiting``)."""
    out: dict[Key, dict[str, int]] = {}
    for key, column, count in queries.drip_progress(conn, flt):
        out.setdefault(key, {})[column] = count
    return out


def empty_row(campaign: str, run: str | None, step: int | None) -> dict[str, Any]:
    """A row of zeros (rates, lift and note null) in column order."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, None)
    row.update(dict.fromkeys(COUNTS, 0), campaign=campaign, run=run, step=step)
    return row


def _definition_shapes(settings: Settings, name: str, run: str | None) -> list[Key] | None:
    """The rows a campaign file would give: its drip steps, or its broadcast run; None if no file."""
    from engine.campaigns import campaign_files, load_campaign
    from engine.segments import load_segments

    if not any(p.stem == name for p in campaign_files(settings.campaigns_dir)):
        return None
    campaign = load_campaign(settings, name, load_segments(settings.segments_dir))
    if campaign.kind == "drip":
        return (
            [] if run is not None else [(name, None, n) for n in range(1, len(campaign.steps) + 1)]
        )
    return [(name, run or MANUAL_RUN, None)]


def _row_keys(
    conn: Connection, settings: Settings, flt: Filter, known: Mapping[Key, datetime]
) -> list[Key]:
    """Every row the report shows, in order: campaign, then drip step or run by first use.

    ``known``: the rows the outbox holds, with their first message.
    """
    keys = dict(known)
    drips = sorted({key[0] for key in keys if key[2] is not None})
    if flt.campaign is not None:
        try:
            defined = _definition_shapes(settings, flt.campaign, flt.run)
        except ProblemList:
            if not keys:
                raise  # nothing to report and a file that cannot be read: say what is wrong
            defined = []  # history still reports while its file has a mistake
        if defined is None and not keys and not _ever_sent(conn, flt.campaign):
            path = settings.campaigns_dir / f"{flt.campaign}.yaml"
            # A typo must not read as "not sent yet"; a deleted campaign's history still reports.
            raise ReportError(
                f"no campaign named {flt.campaign!r}: there is no {path} and nothing was sent under that name"
            )
        for key in defined or []:
            keys.setdefault(key, datetime.max)
    else:
        # Drips reached only some steps so far: show the later ones as zeros too.
        for name in drips:
            try:
                defined = _definition_shapes(settings, name, flt.run) or []
            except ProblemList:
                defined = []  # `campaign check` names the mistake; the history still reports
            for key in defined:
                keys.setdefault(key, datetime.max)

    def order(key: Key) -> tuple:
        campaign, _run, step = key
        return (campaign, step if step is not None else 0, keys[key])

    return sorted(keys, key=order)


def _ever_sent(conn: Connection, campaign: str) -> bool:
    return bool(queries.shapes(conn, Filter(campaign=campaign)))


@dataclass
class Outcomes:
    """The report's rows, and the conversions of merchants written to per campaign and day."""

    rows: list[dict[str, Any]]
    converted_per_day: dict[str, dict[str, int]] = field(default_factory=dict)


def collect(
    conn: Connection, settings: Settings, flt: Filter, window: timedelta | None = None
) -> Outcomes:
    """The report for a filter, every count computed by the database."""
    window = settings.reports.attribution_window if window is None else window
    counted = list(queries.state_counts(conn, flt))
    known = {key: first for key, first, _ in counted}
    rows = {key: empty_row(*key) for key in _row_keys(conn, settings, flt, known)}
    for key, _first, by_state in counted:
        for state, count in by_state.items():
            rows[key][_FOLD.get(state, "queued")] += count
    if any(row["holdout"] for row in rows.values()):
        start_import(STATSMODELS)  # needed for the lift: load it while SQL runs
    daily: dict[str, dict[str, int]] = {}
    for key, state, day, count, revenue in queries.conversions(conn, flt, window):
        row = rows.setdefault(key, empty_row(*key))
        if state == queries.SENT:
            row["conversions"] += count
            row["revenue"] += revenue
            per_day = daily.setdefault(key[0], {})
            per_day[day] = per_day.get(day, 0) + count
        else:
            row["holdout_conversions"] += count
    for key, count in queries.unsubscribes(conn, flt, window):
        rows.setdefault(key, empty_row(*key))["unsubscribes"] = count
    for extra in (engagement_counts(conn, flt), drip_progress_counts(conn, flt)):
        for key, counts in extra.items():
            if key in rows:
                rows[key].update(counts)
    for row in rows.values():
        _add_rates(row)
    return Outcomes(list(rows.values()), daily)


def report_rows(
    conn: Connection, settings: Settings, flt: Filter, window: timedelta | None = None
) -> list[dict[str, Any]]:
    """The report's rows for a filter (SPEC 8's JSON form)."""
    return collect(conn, settings, flt, window).rows


def _add_rates(row: dict[str, Any]) -> None:
    row["conversion_rate"] = rate(row["conversions"], row["sent"])
    row["holdout_conversion_rate"] = rate(row["holdout_conversions"], row["holdout"])
    lift = lift_interval(
        row["conversions"], row["sent"], row["holdout_conversions"], row["holdout"]
    )
    if lift is not None:
        row.update(lift=lift.lift, lift_ci_low=lift.low, lift_ci_high=lift.high)
        row["note"] = SMALL_SAMPLE if lift.small_sample else None
    elif row["sent"] and not row["holdout"]:
        row["note"] = NO_HOLDOUT


def rows_by_campaign(rows: list[dict[str, Any]]) -> Mapping[str, list[dict[str, Any]]]:
    """The rows grouped by campaign, in report order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["campaign"], []).append(row)
    return grouped
