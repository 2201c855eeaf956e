"""``campaign report``: outcomes per campaign and step, read from the outbox.

Basic form (issue 5): message counts by state. Conversions and lift need the
conversion definition of a later issue; until then ``conversions`` is 0 and the
rates and ``lift`` are null.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.models import messages
from engine.outbox import State

COLUMNS = (
    "campaign",
    "step",
    "sent",
    "deferred",
    "failed",
    "suppressed",
    "unknown",
    "queued",
    "holdout",
    "conversions",
    "conversion_rate",
    "holdout_conversion_rate",
    "lift",
)
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


def campaign_report(engine: Engine, campaign: str | None = None) -> list[dict[str, Any]]:
    """One row per (campaign, step) — ``step`` is null for a broadcast — in SPEC 8 form."""
    query = sa.select(
        messages.c.campaign, messages.c.step, messages.c.state, sa.func.count()
    ).group_by(messages.c.campaign, messages.c.step, messages.c.state)
    if campaign is not None:
        query = query.where(messages.c.campaign == campaign)
    rows: dict[tuple[str, int | None], dict[str, Any]] = {}
    with engine.connect() as conn:
        for name, step, state, count in conn.execute(query):
            row = rows.setdefault((name, step), _empty(name, step))
            row[_FOLD.get(state, "queued")] += count
    return [rows[key] for key in sorted(rows, key=lambda k: (k[0], k[1] or 0))]


def _empty(campaign: str, step: int | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, 0)
    row.update(
        campaign=campaign, step=step, conversion_rate=None, holdout_conversion_rate=None, lift=None
    )
    return row
