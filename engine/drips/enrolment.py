"""A drip's state in the database, moved on by set-based statements (never a query per merchant).

One ``drip_enrolments`` row per entry: ``step`` is how many steps are done and
``step_at`` when the last one went (``entered_at`` before the first). Step k is
due ``delay_k`` after that. The statements here enrol, exit, advance and finish
whole sets of merchants at once; the send pipeline, between them, queues the
due step for its audience (and records holdout and suppressed rows).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.campaigns import Campaign
from engine.db import dialect_insert, write_transaction
from engine.models import drip_enrolments, merchants, messages, suppressions

e = drip_enrolments
GOAL = "goal"  # exit_reason: the campaign's exit rule matched


def active(campaign: str) -> sa.ColumnElement[bool]:
    """Enrolments of ``campaign`` still in the sequence."""
    return sa.and_(e.c.campaign == campaign, e.c.exited_at.is_(None), e.c.finished_at.is_(None))


def _base() -> sa.ColumnElement[datetime]:
    return sa.func.coalesce(e.c.step_at, e.c.entered_at)


def due(campaign: Campaign, number: int, now: datetime) -> sa.ColumnElement[bool]:
    """Enrolments for which step ``number`` is due at ``now`` (its delay has passed)."""
    step = campaign.steps[number - 1]
    return sa.and_(active(campaign.name), e.c.step == number - 1, _base() <= now - step.delay)


def due_merchants(
    campaign: Campaign, number: int, now: datetime, cycle: int | None = None
) -> sa.ColumnElement[bool]:
    """A condition on ``merchants``: step ``number`` is due for them (in entry ``cycle``)."""
    where = [due(campaign, number, now)]
    if cycle is not None:
        where.append(e.c.cycle == cycle)
    return merchants.c.id.in_(sa.select(e.c.merchant_id).where(*where))


def due_cycles(conn: Connection, campaign: Campaign, number: int, now: datetime) -> list[int]:
    """The entry numbers step ``number`` is due in (``[1]`` unless merchants re-entered)."""
    if campaign.reenter_after is None:
        return [1]
    query = sa.select(e.c.cycle).where(due(campaign, number, now)).distinct().order_by(e.c.cycle)
    return list(conn.execute(query).scalars())


def not_suppressed(topic: str) -> sa.ColumnElement[bool]:
    """A condition on ``merchants``: the address is not suppressed for ``topic`` nor for all."""
    return ~sa.exists().where(
        suppressions.c.email == sa.func.lower(merchants.c.email),
        suppressions.c.topic.in_([topic, "*"]),
    )


def enrol(
    conn: Connection, campaign: Campaign, segment: sa.ColumnElement[bool], now: datetime
) -> int:
    """Enrol the segment's members who are not in the drip (nor may re-enter yet); returns how many."""
    # Uncorrelated (an anti-join and a join on one aggregate): one pass over the
    # campaign's enrolments whatever the planner believes about their number.
    mine = e.c.campaign == campaign.name
    if campaign.reenter_after is None:
        blocking = sa.select(e.c.merchant_id).where(mine)
    else:
        ended = sa.func.coalesce(e.c.exited_at, e.c.finished_at)
        blocking = sa.select(e.c.merchant_id).where(
            mine, sa.or_(ended.is_(None), ended > now - campaign.reenter_after)
        )
    previous = (
        sa.select(e.c.merchant_id, sa.func.max(e.c.cycle).label("cycle"))
        .where(mine)
        .group_by(e.c.merchant_id)
        .subquery("previous")
    )
    select = (
        sa.select(
            sa.literal(campaign.name, sa.String()),
            merchants.c.id,
            sa.func.coalesce(previous.c.cycle, 0) + 1,
            sa.literal(now, sa.DateTime()),
            sa.literal(0, sa.Integer()),
        )
        .select_from(merchants.outerjoin(previous, previous.c.merchant_id == merchants.c.id))
        .where(segment, not_suppressed(campaign.topic), merchants.c.id.not_in(blocking))
    )
    statement = (
        dialect_insert(conn)(e)
        .from_select(["campaign", "merchant_id", "cycle", "entered_at", "step"], select)
        .on_conflict_do_nothing(index_elements=["campaign", "merchant_id", "cycle"])
        .returning(e.c.id)
    )
    # RETURNING, not rowcount: psycopg reports no rowcount for INSERT ... SELECT ON CONFLICT.
    return len(conn.execute(statement).all())


def exit_goal(
    conn: Connection, campaign: Campaign, goal: sa.ColumnElement[bool], now: datetime
) -> Counter:
    """Mark the enrolments whose merchant matches the exit rule; returns exits per step they miss."""
    result = conn.execute(
        e.update()
        # Correlated: the goal is evaluated for the enrolled merchants only, by index.
        .where(
            active(campaign.name),
            sa.exists().where(merchants.c.id == e.c.merchant_id, goal),
        )
        .values(exited_at=now, exit_reason=GOAL, exit_step=e.c.step + 1)
        .returning(e.c.exit_step)
    )
    return Counter(result.scalars())


def advance_skipped(
    conn: Connection,
    campaign: Campaign,
    number: int,
    now: datetime,
    *,
    when_false: sa.ColumnElement[bool],
    window: sa.ColumnElement[bool],
) -> int:
    """Step ``number`` is passed over where its ``when`` rule is false when it falls due."""
    return conn.execute(
        e.update()
        .where(
            due(campaign, number, now),
            e.c.merchant_id.in_(sa.select(merchants.c.id).where(window, when_false)),
        )
        .values(
            step=number,
            step_at=now,
            skipped=sa.func.coalesce(e.c.skipped, "") + f"{number},",
        )
    ).rowcount


def advance_recorded(conn: Connection, campaign: Campaign, number: int, now: datetime) -> int:
    """Step ``number`` is done where the outbox has its row (queued, holdout, suppressed, ...).

    Only a row made in this entry counts (after it began): a merchant who re-entered
    gets the step again.
    """
    recorded = sa.exists().where(
        messages.c.campaign == campaign.name,
        messages.c.step == number,
        messages.c.merchant_id == e.c.merchant_id,
        messages.c.created_at >= e.c.entered_at,
    )
    return conn.execute(
        e.update().where(due(campaign, number, now), recorded).values(step=number, step_at=now)
    ).rowcount


def finish(conn: Connection, campaign: Campaign, now: datetime) -> int:
    """Enrolments that have done every step are finished."""
    return conn.execute(
        e.update()
        .where(active(campaign.name), e.c.step >= len(campaign.steps))
        .values(finished_at=now)
    ).rowcount


def waiting_counts(
    conn: Connection, campaign: Campaign, now: datetime, window: sa.ColumnElement[bool]
) -> Counter:
    """Active enrolments waiting: for a step's ``delay``, or (due) for the ``send_window``."""
    not_yet = sa.or_(
        *(
            sa.and_(e.c.step == k - 1, _base() > now - s.delay)
            for k, s in enumerate(campaign.steps, 1)
        )
    )
    due_any = sa.or_(*(due(campaign, k, now) for k in range(1, len(campaign.steps) + 1)))
    closed = sa.and_(due_any, e.c.merchant_id.in_(sa.select(merchants.c.id).where(~window)))
    row = conn.execute(
        sa.select(
            sa.func.count().filter(not_yet),
            sa.func.count().filter(closed),
        ).where(active(campaign.name))
    ).one()
    return Counter({"delay": row[0] or 0, "send_window": row[1] or 0})


def count_due(
    engine: Engine, campaign: Campaign, number: int, now: datetime, window: sa.ColumnElement[bool]
) -> int:
    """How many merchants step ``number`` is due for with the window open (0: nothing to send)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(due_merchants(campaign, number, now), window)
        ).scalar_one()


def in_transaction(engine: Engine):
    """The write transaction the drip statements run in."""
    return write_transaction(engine)
