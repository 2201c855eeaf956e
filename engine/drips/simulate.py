"""``campaign simulate`` and dry-run ticks: the real tick, on a copy of the database.

The copy is a temporary SQLite file (SQLite's backup API, or the rows of a
PostgreSQL database copied over), so that nothing in the real database changes
and the tick code is the one ``drip run`` runs, not a second implementation.
The clock starts at ``now`` and moves from tick to tick: by ``every`` (the
scheduler's tick, at least 6 hours), and straight to the next moment a step
falls due or a send window opens, so a forecast over weeks is a few hundred ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import FixedClock
from engine.errors import CampaignError
from engine.models import (
    drip_enrolments,
    merchants,
    messages,
)

# Between events (a step falling due, a window opening) the forecast ticks this
# often, to see merchants newly matching a segment as time passes.
DEFAULT_EVERY = timedelta(hours=6)


@dataclass
class Planned:
    """One message the forecast expects: who, which step, when (UTC)."""

    merchant_id: int
    external_id: str
    step: int
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "merchant_id": self.merchant_id,
            "external_id": self.external_id,
            "step": self.step,
            "at": self.at.isoformat() + "Z",
        }


@dataclass
class Simulation:
    """The forecast: the planned messages, and the tick times it ran at."""

    campaign: str
    start: datetime
    end: datetime
    planned: list[Planned] = field(default_factory=list)
    ticks: list[datetime] = field(default_factory=list)
    exited: int = 0
    holdout: int = 0


def simulate(
    project, name: str, *, days: int, now: datetime, every: timedelta | None = None
) -> Simulation:
    """Who gets which step of ``name`` when over the next ``days`` days if the data does not change."""
    from engine.drips import enrolment
    from engine.drips.copy import on_copy
    from engine.drips.tick import load_definitions, tick
    from engine.windows import present_zones

    if days < 1:
        raise CampaignError("simulate needs --days 1 or more")
    step = every or max(project.settings.scheduler.tick, DEFAULT_EVERY)
    end = now + timedelta(days=days)
    result = Simulation(campaign=name, start=now, end=end)
    with on_copy(project) as copy:
        definitions = load_definitions(copy)
        if name not in definitions.campaigns:
            from engine.campaigns import load_campaign

            load_campaign(copy.settings, name, definitions.segments)  # raises, naming the file
        campaign = definitions.campaigns[name]
        clock = FixedClock(now)
        with copy.engine.connect() as conn:
            zones = present_zones(conn)
        first_id = _last_message_id(copy.engine)
        while clock.now() < end:
            report = tick(
                copy,
                clock=clock,
                campaign=name,
                deliver=False,
                definitions=definitions,
                zones=zones,
            )
            result.ticks.append(clock.now())
            result.exited += report.exited
            result.holdout += sum(sum(d.holdout.values()) for d in report.drips)
            upcoming = _next_event(copy, campaign, clock.now(), zones, enrolment)
            target = clock.now() + step
            if upcoming is not None and clock.now() < upcoming < target:
                target = upcoming
            clock.set(target)
        result.planned = _planned(copy.engine, name, first_id)
    return result


def _last_message_id(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.coalesce(sa.func.max(messages.c.id), 0))).scalar_one()


def _planned(engine, name: str, after_id: int) -> list[Planned]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                messages.c.merchant_id,
                merchants.c.external_id,
                messages.c.step,
                messages.c.run,
                messages.c.created_at,
            )
            .join(merchants, merchants.c.id == messages.c.merchant_id)
            .where(
                messages.c.campaign == name, messages.c.id > after_id, messages.c.state == "queued"
            )
            .order_by(messages.c.created_at, messages.c.merchant_id, messages.c.step)
        ).all()
    return [Planned(m, x, s or 1, at) for m, x, s, _run, at in rows]


def _next_event(copy, campaign, now: datetime, zones: list[str], enrolment) -> datetime | None:
    """The next moment a step of the drip falls due, or its window opens for one that is due."""
    from engine.windows import opening_in, valid_zone

    name = campaign.name
    if campaign.kind != "drip":
        return None
    e = drip_enrolments
    base = sa.func.coalesce(e.c.step_at, e.c.entered_at)
    candidates: list[datetime] = []
    with copy.engine.connect() as conn:
        for k, s in enumerate(campaign.steps, 1):
            first = conn.execute(
                sa.select(sa.func.min(base)).where(
                    enrolment.active(name), e.c.step == k - 1, base > now - s.delay
                )
            ).scalar()
            if first is not None:
                candidates.append(_as_datetime(first) + s.delay)
    if campaign.send_window is not None:
        default = copy.settings.project.timezone
        for zone in zones:
            opening = opening_in(campaign.send_window, now, valid_zone(zone, default))
            if opening > now:
                candidates.append(opening)
    return min(candidates) if candidates else None


def _as_datetime(value) -> datetime:
    # SQLite hands back min() of a DATETIME column as text.
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
