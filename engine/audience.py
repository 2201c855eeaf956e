"""The audience stage: segment members in id batches, each left out with a reason or kept.

Each batch loses, with a reason that the report shows: invalid addresses, the
holdout group, suppressed addresses (the campaign's topic or all), merchants this
run already reached (or whose message failed), drip members that the exit or
``when`` rule leaves out, those past ``--limit``, and (for non-exempt topics)
merchants at the frequency cap. Holdout and suppressed members become outbox rows
of their own (``recorded``), never sent, so that the report shows them. Members
kept get the moment they may be sent: now, or the next opening of the campaign's
send window in their own time zone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.addresses import normalize_email
from engine.config import Settings
from engine.keys import message_key
from engine.models import merchants, messages
from engine.outbox import NewMessage, existing_keys
from engine.preparation import PreparedCampaign
from engine.states import IN_FLIGHT, NOT_DELIVERED, PENDING, State
from engine.suppressions import suppression_reasons

# Audience ids read per statement (a drip step's due set is built once per page).
ID_PAGE = 10_000

_EXITED = "_campaign_exited"
_STEP_OK = "_campaign_step_ok"


@dataclass
class Batch:
    """One batch of the audience, after the skips: what to render and what to record."""

    candidates: list[dict[str, Any]]  # merchant rows to render
    recorded: list[NewMessage]  # holdout and suppressed members: outbox rows, never sent
    due: dict[int, datetime] = field(default_factory=dict)  # merchant id → send-window opening


@dataclass
class Tally:
    """Counts the audience loop keeps for the report."""

    audience: int = 0
    pending: int = 0
    skipped: Counter = field(default_factory=Counter)


def audience_size(engine: Engine, plan: PreparedCampaign) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(plan.condition)).scalar() or 0


def waiting_keys(conn: Connection, plan: PreparedCampaign) -> frozenset[str]:
    """Keys of this run (or step) still queued, deferred or in flight in the outbox."""
    query = sa.select(messages.c.key).where(
        messages.c.campaign == plan.campaign.name,
        messages.c.state.in_([str(s) for s in (*PENDING, *IN_FLIGHT)]),
    )
    if plan.run is not None:
        query = query.where(messages.c.run == plan.run)
    else:
        query = query.where(messages.c.step == plan.step)
    return frozenset(conn.execute(query).scalars())


def member_batches(
    engine: Engine, plan: PreparedCampaign, batch_size: int
) -> Iterator[tuple[Connection, list[Mapping[str, Any]]]]:
    """The audience's merchant rows in id order, ``batch_size`` at a time.

    The audience's ids come a page of ``ID_PAGE`` at a time (an id cursor), and the
    rows of each batch by id. Evaluating the audience once per page rather than per
    batch matters for a drip step, whose audience is a set of due enrolments: the
    database builds that set afresh for every statement. Each batch comes with the
    connection it was read on, open while the caller works on the batch (the
    filter's queries use it too).
    """
    cursor = 0
    flags = _flags(plan)
    while True:
        with engine.connect() as conn:
            ids = (
                conn.execute(
                    sa.select(merchants.c.id)
                    .where(plan.condition, merchants.c.id > cursor)
                    .order_by(merchants.c.id)
                    .limit(max(ID_PAGE, batch_size))
                )
                .scalars()
                .all()
            )
        if not ids:
            return
        cursor = ids[-1]
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            with engine.connect() as conn:
                rows = (
                    conn.execute(
                        sa.select(merchants, *flags)
                        .where(merchants.c.id.in_(chunk))
                        .order_by(merchants.c.id)
                    )
                    .mappings()
                    .all()
                )
                if rows:  # a merchant deleted since its page was read is simply not there
                    yield conn, rows


def count_rest(conn: Connection, plan: PreparedCampaign, tally: Tally, first_id: int) -> None:
    """Past ``--limit``: the rest of the audience is counted, as pending or as ``limit``."""
    ids = conn.execute(
        sa.select(merchants.c.id).where(plan.condition, merchants.c.id >= first_id)
    ).scalars()
    for merchant_id in ids:
        tally.audience += 1
        if _key(plan, merchant_id) in plan.resumed:
            tally.pending += 1
        else:
            tally.skipped["limit"] += 1


def filter_batch(
    conn: Connection,
    settings: Settings,
    plan: PreparedCampaign,
    tally: Tally,
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
) -> Batch:
    """Skip with reasons; returns the members to render and the rows to record."""
    from engine.campaigns import in_holdout

    campaign = plan.campaign
    flagged = plan.exit is not None or plan.when is not None
    valid: list[tuple[dict[str, Any], str]] = []
    recorded: list[NewMessage] = []
    keys: dict[int, str] = {}
    tally.audience += len(rows)
    for row in rows:
        key = keys[row["id"]] = _key(plan, row["id"])
        if key in plan.resumed:
            # Waiting from an earlier send of this run: the delivery pass resumes it
            # (suppression is checked again at claim time).
            tally.pending += 1
            continue
        if flagged:
            if plan.exit is not None and row[_EXITED]:
                tally.skipped["exited"] += 1
                continue
            if plan.when is not None and not row[_STEP_OK]:
                tally.skipped["step_condition"] += 1
                continue
        member = {k: v for k, v in row.items() if k not in (_EXITED, _STEP_OK)}
        try:
            email = normalize_email(member["email"])
        except ValueError:
            tally.skipped["invalid_address"] += 1
            continue
        if in_holdout(campaign.name, member["id"], campaign.holdout):
            tally.skipped["holdout"] += 1
            recorded.append(_record(plan, member, email, State.HOLDOUT))
            continue
        valid.append((member, email))
    suppressed = suppression_reasons(conn, [email for _, email in valid], campaign.topic)
    known = existing_keys(conn, (keys[row["id"]] for row, _ in valid))
    capped = frequency_capped(
        conn,
        settings,
        campaign.topic,
        [
            row["id"]
            for row, email in valid
            if email not in suppressed and keys[row["id"]] not in known
        ],
        now,
    )
    batch = Batch([], recorded)
    window = campaign.send_window
    openings: dict[str, datetime] = {}
    for row, email in valid:
        state = known.get(keys[row["id"]])
        if email in suppressed or state == State.SUPPRESSED:
            tally.skipped["suppressed"] += 1
            if state is None:  # recorded once per run, so that the report shows it
                reason = f"suppressed: {suppressed[email]}"
                recorded.append(_record(plan, row, email, State.SUPPRESSED, reason))
        elif state == State.FAILED:
            tally.skipped["failed_before"] += 1
        elif state == State.HOLDOUT:
            tally.skipped["holdout"] += 1
        elif state is not None:
            tally.skipped["already_sent"] += 1
        elif row["id"] in capped:
            tally.skipped["frequency_cap"] += 1
        else:
            batch.candidates.append(row)
            if window is not None:
                zone = row.get("timezone") or settings.project.timezone
                if zone not in openings:
                    openings[zone] = window.next_opening(now, zone)
                if openings[zone] > now:
                    batch.due[row["id"]] = openings[zone]
    return batch


def frequency_capped(
    conn: Connection,
    settings: Settings,
    topic: str,
    merchant_ids: Sequence[int],
    now: datetime,
) -> set[int]:
    """Merchants who already had the project-wide maximum of emails in the rolling window.

    A message counts from the moment it was sent (or queued, while it waits), on
    the command's clock: the window is ``[now - per, now]`` of that clock.
    """
    cap = settings.limits.frequency_cap
    exempt = tuple(settings.limits.frequency_cap_exempt)
    if cap is None or topic in exempt or not merchant_ids:
        return set()
    since = now - cap.per
    moment = sa.func.coalesce(messages.c.sent_at, messages.c.created_at)
    query = (
        sa.select(messages.c.merchant_id)
        .where(
            messages.c.merchant_id.in_(list(merchant_ids)),
            messages.c.state.not_in([str(s) for s in NOT_DELIVERED]),
            moment >= since,
            moment <= now,
        )
        .group_by(messages.c.merchant_id)
        .having(sa.func.count() >= cap.count)
    )
    if exempt:
        query = query.where(messages.c.topic.not_in(exempt))
    return set(conn.execute(query).scalars())


def _key(plan: PreparedCampaign, merchant_id: int) -> str:
    return message_key(
        plan.campaign.name, merchant_id, step=plan.step, run=plan.run, cycle=plan.cycle
    )


def _flags(plan: PreparedCampaign) -> list[sa.ColumnElement]:
    """Columns that say, per audience member, whether a drip's exit or ``when`` rule applies."""
    flags: list[sa.ColumnElement] = []
    if plan.exit is not None:
        flags.append(sa.case((plan.exit, 1), else_=0).label(_EXITED))
    if plan.when is not None:
        flags.append(sa.case((plan.when, 1), else_=0).label(_STEP_OK))
    return flags


def _record(
    plan: PreparedCampaign,
    row: Mapping[str, Any],
    email: str,
    state: State,
    error: str | None = None,
) -> NewMessage:
    campaign = plan.campaign
    return NewMessage(
        key=_key(plan, row["id"]),
        campaign=campaign.name,
        topic=campaign.topic,
        merchant_id=row["id"],
        email=email,
        sender=plan.sender,
        subject=None,
        message_id=None,
        data=None,
        step=plan.step,
        run=plan.run,
        state=state,
        last_error=error,
    )
