"""What happened after sending, for the report: clicks, hard and soft bounces per campaign step.

Set-based: one grouped query for clicks and one for bounces, whatever the
number of messages. ``campaign report`` merges these counts into its rows,
keyed like them by (campaign, step, run).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.models import bounces, clicks, messages

Key = tuple[
    str, int | None, str | None
]  # (campaign, step, run): step for drips, run for broadcasts
COUNTS = ("clicks", "unique_clicks", "bounced", "soft_bounces")


def _times(column, since: datetime | None, until: datetime | None) -> list[sa.ColumnElement]:
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def grouped_counts(
    conn: Connection,
    *,
    where: Sequence[sa.ColumnElement[bool]] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[Key, dict[str, int]]:
    """``{(campaign, step, run): counts}`` for the messages ``where`` selects (conditions on
    ``messages``), the clicks and bounces themselves in ``[since, until)``."""
    group = (messages.c.campaign, messages.c.step, messages.c.run)
    click_query = (
        sa.select(*group, sa.func.count(), sa.func.count(sa.distinct(clicks.c.message_id)))
        .select_from(clicks.join(messages, messages.c.id == clicks.c.message_id))
        .where(*where, *_times(clicks.c.clicked_at, since, until))
        .group_by(*group)
    )
    bounce_query = (
        sa.select(*group, bounces.c.kind, sa.func.count(sa.distinct(bounces.c.message_id)))
        .select_from(bounces.join(messages, messages.c.id == bounces.c.message_id))
        .where(*where, *_times(bounces.c.bounced_at, since, until))
        .group_by(*group, bounces.c.kind)
    )
    out: dict[Key, dict[str, int]] = {}
    for name, step, run, total, unique in conn.execute(click_query):
        row = out.setdefault((name, step, run), dict.fromkeys(COUNTS, 0))
        row["clicks"], row["unique_clicks"] = total, unique
    for name, step, run, kind, count in conn.execute(bounce_query):
        row = out.setdefault((name, step, run), dict.fromkeys(COUNTS, 0))
        row["bounced" if kind == "hard" else "soft_bounces"] += count
    return out


def engagement_counts(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    campaign: str | None = None,
) -> dict[Key, dict[str, int]]:
    """``{(campaign, step, run): {"clicks", "unique_clicks", "bounced", "soft_bounces"}}``.

    ``clicks`` counts every follow of a tracked link, ``unique_clicks`` the
    messages with at least one; ``bounced`` the messages with a hard bounce,
    ``soft_bounces`` those with a soft one. The times (click time, bounce time) fall in
    ``[since, until)``; missing bounds are open.
    """
    where = [messages.c.campaign == campaign] if campaign is not None else []
    with engine.connect() as conn:
        return grouped_counts(conn, where=where, since=since, until=until)
