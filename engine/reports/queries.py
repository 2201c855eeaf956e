"""The report's SQL: a fixed number of set-based queries over the whole outbox.

Every query groups by a report row's key, ``(campaign, run, step)``, so that the
database does the counting and Python only receives aggregated rows, however
many merchants a campaign reached.

The attribution window of a message sent at ``t`` is ``(t, t + window]``: an
order placed at the very moment of the send cannot have been caused by it, one
placed exactly ``window`` later still counts. A holdout member's ``t`` is the
moment the message would have been sent (its row's ``created_at``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.db import is_sqlite
from engine.models import (
    attempts,
    drip_enrolments,
    messages,
    orders,
    suppressions,
)
from engine.outbox import State
from engine.suppressions import ALL_TOPICS

Key = tuple[str, str | None, int | None]  # (campaign, run, step)

SENT, HOLDOUT = str(State.SENT), str(State.HOLDOUT)
STATES = tuple(str(state) for state in State)
NEAR = 1e-6  # days (86 ms): closer than this to the end of a window, compare exactly
PAID = "paid"
UNSUBSCRIBE = "unsubscribe"  # one of engine.suppressions.REASONS


@dataclass(frozen=True)
class Filter:
    """Which messages a report covers: one campaign or all, one run or all, a send-time range."""

    campaign: str | None = None
    run: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def send_time() -> sa.ColumnElement:
    """When a message was sent; for a holdout (or not yet sent) row, when it was recorded."""
    return sa.func.coalesce(messages.c.sent_at, messages.c.created_at)


def message_filter(flt: Filter, *, times: bool = True) -> list[sa.ColumnElement]:
    conditions = []
    if flt.campaign is not None:
        conditions.append(messages.c.campaign == flt.campaign)
    if flt.run is not None:
        conditions.append(messages.c.run == flt.run)
    if times and flt.since is not None:
        conditions.append(send_time() >= flt.since)
    if times and flt.until is not None:
        conditions.append(send_time() < flt.until)
    return conditions


def window_end(conn: Connection, start: Any, window: timedelta) -> sa.ColumnElement:
    """``start + window`` as SQL, exact to the microsecond on both databases."""
    seconds = int(window.total_seconds())
    if is_sqlite(conn):
        # SQLAlchemy stores SQLite times as 'YYYY-MM-DD HH:MM:SS.ffffff': shift the whole
        # seconds with strftime and keep the fraction as it was, so that the end of the
        # window compares with placed_at as text exactly (datetime() would drop it).
        shifted = sa.func.strftime("%Y-%m-%d %H:%M:%S", start, f"+{seconds} seconds")
        return sa.type_coerce(shifted, sa.String) + sa.func.substr(start, 20)
    return start + sa.literal(timedelta(seconds=seconds), sa.Interval)


def in_window(conn: Connection, at: Any, start: Any, window: timedelta) -> sa.ColumnElement:
    """``start < at <= start + window``: the attribution window, exact on both databases."""
    if not is_sqlite(conn):
        return sa.and_(at > start, at <= window_end(conn, start, window))
    # Formatting the end of the window as text costs more than the rest of the report's
    # join: compare Julian days (a double, within ~50 µs) and format the exact end only
    # for the rare times within a tenth of a second of it.
    days = window.total_seconds() / 86400
    apart = sa.func.julianday(at) - sa.func.julianday(start)
    return sa.and_(
        at > start,
        apart <= days + NEAR,
        sa.or_(apart < days - NEAR, at <= window_end(conn, start, window)),
    )


def _day(conn: Connection, column: Any) -> sa.ColumnElement:
    """The UTC calendar day of a timestamp, as 'YYYY-MM-DD' text on both databases."""
    if is_sqlite(conn):
        return sa.func.substr(column, 1, 10)
    return sa.func.to_char(column, "YYYY-MM-DD")


def shapes(conn: Connection, flt: Filter) -> list[tuple[Key, datetime]]:
    """Every (campaign, run, step) the outbox holds (times not filtered), with its first row."""
    query = (
        sa.select(
            messages.c.campaign,
            messages.c.run,
            messages.c.step,
            sa.func.min(messages.c.created_at),
        )
        .where(*message_filter(flt, times=False))
        .group_by(messages.c.campaign, messages.c.run, messages.c.step)
    )
    return [((c, r, s), first) for c, r, s, first in conn.execute(query)]


def state_counts(conn: Connection, flt: Filter) -> Iterator[tuple[Key, datetime, dict[str, int]]]:
    """Messages per row key and state (in the send-time range), with the row's first message.

    One row per key: a sum per state grouped by (campaign, step, run), the order of the
    outbox index, so that SQLite counts in one pass instead of sorting every message.
    The first message (for the order of runs) is over all time, like ``shapes``.
    """
    in_range = message_filter(Filter(since=flt.since, until=flt.until))
    sums = [
        sa.func.sum(sa.case((sa.and_(messages.c.state == state, *in_range), 1), else_=0))
        for state in STATES
    ]
    query = (
        sa.select(
            messages.c.campaign,
            messages.c.step,
            messages.c.run,
            sa.func.min(messages.c.created_at),
            *sums,
        )
        .where(*message_filter(flt, times=False))
        .group_by(messages.c.campaign, messages.c.step, messages.c.run)
    )
    for campaign, step, run, first, *counts in conn.execute(query):
        yield (campaign, run, step), first, dict(zip(STATES, map(int, counts), strict=True))


def _exposed(flt: Filter) -> sa.Subquery:
    """The merchants written to (sent) or held out, with the moment their window opens."""
    return (
        sa.select(
            messages.c.campaign,
            messages.c.run,
            messages.c.step,
            messages.c.state,
            messages.c.merchant_id,
            messages.c.email,
            messages.c.topic,
            send_time().label("t"),
        )
        .where(messages.c.state.in_([SENT, HOLDOUT]), *message_filter(flt))
        .subquery("exposed")
    )


def _converted(conn: Connection, flt: Filter, window: timedelta) -> sa.Subquery:
    """One row per converted merchant and report row: revenue in the window, first order."""
    m = _exposed(flt)
    paid_in_window = sa.and_(
        orders.c.merchant_id == m.c.merchant_id,
        orders.c.status == PAID,
        in_window(conn, orders.c.placed_at, m.c.t, window),
    )
    return (
        sa.select(
            m.c.campaign,
            m.c.run,
            m.c.step,
            m.c.state,
            m.c.merchant_id,
            sa.func.sum(orders.c.amount).label("revenue"),
            sa.func.min(orders.c.placed_at).label("first_at"),
        )
        .select_from(m.join(orders, paid_in_window))
        .group_by(m.c.campaign, m.c.run, m.c.step, m.c.state, m.c.merchant_id)
        .subquery("converted")
    )


def conversions(
    conn: Connection, flt: Filter, window: timedelta
) -> Iterator[tuple[Key, str, str, int, int]]:
    """(key, state, day, converted merchants, revenue) for ``sent`` and ``holdout`` rows.

    ``day`` is the UTC day of each merchant's first order in the window: the report adds
    the days up, the HTML report also draws them, from this one query.
    """
    c = _converted(conn, flt, window)
    day = _day(conn, c.c.first_at)
    query = sa.select(
        c.c.campaign,
        c.c.run,
        c.c.step,
        c.c.state,
        day,
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(c.c.revenue), 0),
    ).group_by(c.c.campaign, c.c.run, c.c.step, c.c.state, day)
    for campaign, run, step, state, at, count, revenue in conn.execute(query):
        yield (campaign, run, step), state, str(at), int(count), int(revenue)


def unsubscribes(conn: Connection, flt: Filter, window: timedelta) -> Iterator[tuple[Key, int]]:
    """Merchants written to who unsubscribed (this topic or all) within the window after the send."""
    m = _exposed(flt)
    matched = sa.and_(
        suppressions.c.email == m.c.email,
        suppressions.c.reason == UNSUBSCRIBE,
        suppressions.c.topic.in_([m.c.topic, sa.literal(ALL_TOPICS)]),
        in_window(conn, suppressions.c.created_at, m.c.t, window),
    )
    query = (
        sa.select(m.c.campaign, m.c.run, m.c.step, sa.func.count(sa.distinct(m.c.merchant_id)))
        .select_from(m.join(suppressions, matched))
        # Few merchants ever unsubscribe: an IN list of their addresses spares a probe of
        # the suppression index for every message (seconds over millions of messages).
        .where(
            m.c.state == SENT,
            m.c.email.in_(
                sa.select(suppressions.c.email).where(suppressions.c.reason == UNSUBSCRIBE)
            ),
        )
        .group_by(m.c.campaign, m.c.run, m.c.step)
    )
    for campaign, run, step, count in conn.execute(query):
        yield (campaign, run, step), int(count)


# --- for the HTML report -----------------------------------------------------


def sent_per_day(conn: Connection, flt: Filter) -> Iterator[tuple[str, str, int]]:
    """(campaign, 'YYYY-MM-DD', messages sent that UTC day)."""
    day = _day(conn, messages.c.sent_at)
    query = (
        sa.select(messages.c.campaign, day, sa.func.count())
        .where(messages.c.state == SENT, *message_filter(flt))
        .group_by(messages.c.campaign, day)
    )
    for campaign, at, count in conn.execute(query):
        yield campaign, str(at), int(count)


def failure_reasons(conn: Connection, flt: Filter) -> Iterator[tuple[str, str, str, int]]:
    """(campaign, state, last error, messages) for messages that did not go out cleanly."""
    states = [str(s) for s in (State.FAILED, State.DEFERRED, State.UNKNOWN)]
    query = (
        sa.select(messages.c.campaign, messages.c.state, messages.c.last_error, sa.func.count())
        .where(
            messages.c.state.in_(states), messages.c.last_error.is_not(None), *message_filter(flt)
        )
        .group_by(messages.c.campaign, messages.c.state, messages.c.last_error)
    )
    for campaign, state, error, count in conn.execute(query):
        yield campaign, state, error, int(count)


def bounce_reasons(conn: Connection, flt: Filter) -> Iterator[tuple[str, str, str, int]]:
    """(campaign, SMTP status, a sample reply, attempts) for refused or bounced attempts."""
    status = sa.func.coalesce(
        attempts.c.enhanced_status, sa.cast(attempts.c.smtp_code, sa.String), sa.literal("-")
    )
    query = (
        sa.select(messages.c.campaign, status, sa.func.min(attempts.c.reply), sa.func.count())
        .select_from(attempts.join(messages, messages.c.id == attempts.c.message_id))
        .where(attempts.c.outcome.in_(["bounced", "failed", "deferred"]), *message_filter(flt))
        .group_by(messages.c.campaign, status)
    )
    for campaign, code, reply, count in conn.execute(query):
        yield campaign, str(code), reply or "", int(count)


def drip_progress(conn: Connection, flt: Filter) -> Iterator[tuple[Key, str, int]]:
    """Per drip step: merchants the exit goal took out before it (``exited``, by when they
    left) and active ones that have not had it yet (``waiting``: a delay, the window, the cap)."""
    e = drip_enrolments
    scope = [e.c.campaign == flt.campaign] if flt.campaign is not None else []
    if flt.run is not None:
        return  # broadcast runs have no drip steps
    left = [e.c.exited_at.is_not(None), e.c.exit_step.is_not(None), *scope]
    if flt.since is not None:
        left.append(e.c.exited_at >= flt.since)
    if flt.until is not None:
        left.append(e.c.exited_at < flt.until)
    exits = (
        sa.select(e.c.campaign, e.c.exit_step, sa.func.count())
        .where(*left)
        .group_by(e.c.campaign, e.c.exit_step)
    )
    for campaign, step, count in conn.execute(exits):
        yield (campaign, None, step), "exited", count
    next_step = (e.c.step + 1).label("next_step")
    waits = (
        sa.select(e.c.campaign, next_step, sa.func.count())
        .where(e.c.exited_at.is_(None), e.c.finished_at.is_(None), *scope)
        .group_by(e.c.campaign, next_step)
    )
    for campaign, step, count in conn.execute(waits):
        yield (campaign, None, step), "waiting", count
