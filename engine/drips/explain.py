"""``campaign drip explain``: one merchant's journey through a drip, and what happens next.

Read from the same places the tick uses (the enrolment row, the outbox, the
rules at ``now``), so the story is the one the next tick will act on: entered
when or why not, each step sent / queued / holdout / passed over / exited /
waiting (for its delay, the send window, the frequency cap) / due.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.campaigns import Campaign, in_holdout, load_campaign
from engine.drips.enrolment import not_suppressed
from engine.errors import CampaignError
from engine.models import drip_enrolments, merchants, messages
from engine.preview import find_merchant
from engine.send_report import iso
from engine.windows import opening_in, valid_zone

e = drip_enrolments
_NOT_DELIVERED = ("failed", "suppressed", "holdout")


@dataclass
class StepStory:
    step: int
    state: str  # sent | queued | sending | deferred | failed | holdout | suppressed | skipped | exited | waiting | due | planned
    at: datetime | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "state": self.state, "at": iso(self.at), "reason": self.reason}


@dataclass
class Journey:
    campaign: str
    merchant_id: int
    status: str  # not_enrolled | active | exited | finished
    entered_at: datetime | None = None
    reason: str | None = None  # why not enrolled, or how it ended
    holdout: bool = False
    steps: list[StepStory] = field(default_factory=list)
    next: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "merchant_id": self.merchant_id,
            "entered_at": iso(self.entered_at),
            "status": self.status,
            "reason": self.reason,
            "holdout": self.holdout,
            "steps": [s.to_json() for s in self.steps],
            "next": self.next,
        }


def _member(conn, condition, merchant_id: int) -> bool:
    return bool(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(merchants)
            .where(merchants.c.id == merchant_id, condition)
        ).scalar_one()
    )


def explain(project, name: str, who: str, *, now: datetime) -> Journey:
    """The journey of merchant ``who`` (id, email or external id) through drip ``name`` at ``now``."""
    from engine.segments import load_segments, rule_condition, segment_condition

    settings = project.settings
    segments = load_segments(settings.segments_dir)
    campaign = load_campaign(settings, name, segments)
    if campaign.kind != "drip":
        raise CampaignError(f"campaign {name!r} is a broadcast: `drip explain` is for drips")
    engine = project.database()
    with engine.connect() as conn:
        merchant = find_merchant(conn, who)
        mid = merchant["id"]
        journey = Journey(campaign.name, mid, "not_enrolled")
        journey.holdout = in_holdout(campaign.name, mid, campaign.holdout)
        enrolment = (
            conn.execute(
                sa.select(e)
                .where(e.c.campaign == campaign.name, e.c.merchant_id == mid)
                .order_by(e.c.cycle.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        in_segment = _member(conn, segment_condition(segments, campaign.segment, now=now), mid)
        suppressed = not _member(conn, not_suppressed(campaign.topic), mid)
        outbox = {
            r.step: r
            for r in conn.execute(
                sa.select(
                    messages.c.step,
                    messages.c.state,
                    messages.c.created_at,
                    messages.c.sent_at,
                    messages.c.next_attempt_at,
                    messages.c.last_error,
                ).where(messages.c.campaign == campaign.name, messages.c.merchant_id == mid)
            )
        }
        if enrolment is None:
            journey.reason = (
                "suppressed for this topic"
                if suppressed
                else "in the segment: enters on the next tick"
                if in_segment
                else f"not in the segment {campaign.segment!r}"
            )
            journey.next = (
                "nothing: the address is suppressed"
                if suppressed
                else "enters the drip on the next tick"
                if in_segment
                else "nothing until the merchant matches the segment"
            )
            return journey
        journey.entered_at = enrolment["entered_at"]
        exit_now = campaign.exit is not None and _member(
            conn, rule_condition(campaign.exit, now=now, segments=segments), mid
        )
        next_step = enrolment["step"] + 1
        when_now = None
        if next_step <= len(campaign.steps) and campaign.steps[next_step - 1].when is not None:
            when_now = _member(
                conn,
                rule_condition(campaign.steps[next_step - 1].when, now=now, segments=segments),
                mid,
            )
        cap_until = _cap_until(conn, settings, campaign, mid, now)
    facts = _Facts(merchant, enrolment, outbox, exit_now, when_now, cap_until, suppressed)
    _tell(journey, campaign, settings, now, facts)
    return journey


@dataclass(frozen=True)
class _Facts:
    """What the database says of one enrolled merchant at ``now``."""

    merchant: Any
    enrolment: Any
    outbox: dict[int, Any]  # the merchant's message per step of this campaign
    exit_now: bool  # the exit rule matches now
    when_now: bool | None  # the next step's ``when`` (None: it has none)
    cap_until: datetime | None  # when the frequency cap lets the next email go
    suppressed: bool


def _cap_until(conn, settings, campaign: Campaign, mid: int, now: datetime) -> datetime | None:
    """When the frequency cap lets the merchant's next email go, or None if it does now."""
    cap = settings.limits.frequency_cap
    exempt = tuple(settings.limits.frequency_cap_exempt)
    if cap is None or campaign.topic in exempt:
        return None
    stamp = sa.func.coalesce(messages.c.sent_at, messages.c.created_at)
    query = (
        sa.select(stamp)
        .where(
            messages.c.merchant_id == mid,
            messages.c.state.not_in(_NOT_DELIVERED),
            stamp >= now - cap.per,
        )
        .order_by(stamp.desc())
    )
    if exempt:
        query = query.where(messages.c.topic.not_in(exempt))
    recent = list(conn.execute(query).scalars())
    if len(recent) < cap.count:
        return None
    oldest_counted = recent[cap.count - 1]
    if not isinstance(oldest_counted, datetime):
        oldest_counted = datetime.fromisoformat(str(oldest_counted))
    return oldest_counted + cap.per


def _tell(journey, campaign, settings, now: datetime, facts: _Facts) -> None:
    enrolment, outbox, merchant = facts.enrolment, facts.outbox, facts.merchant
    exit_now, when_now, cap_until = facts.exit_now, facts.when_now, facts.cap_until
    suppressed = facts.suppressed
    done = enrolment["step"]
    skipped = {int(s) for s in (enrolment["skipped"] or "").split(",") if s}
    base = enrolment["step_at"] or enrolment["entered_at"]
    zone = valid_zone(merchant["timezone"], settings.project.timezone)
    if enrolment["exited_at"] is not None:
        journey.status = "exited"
        journey.reason = f"the exit goal matched at {iso(enrolment['exited_at'])}"
    elif enrolment["finished_at"] is not None:
        journey.status = "finished"
        journey.reason = f"every step done at {iso(enrolment['finished_at'])}"
    else:
        journey.status = "active"
    planned_at = None
    for step in campaign.steps:
        k = step.number
        row = outbox.get(k)
        if k <= done:
            if k in skipped and row is None:
                journey.steps.append(
                    StepStory(k, "skipped", None, "its `when` rule was false when it fell due")
                )
            elif row is not None:
                at = row.sent_at or row.created_at
                reason = {"holdout": "control group: recorded, never emailed"}.get(
                    row.state, row.last_error
                )
                journey.steps.append(StepStory(k, row.state, at, reason))
            else:
                journey.steps.append(StepStory(k, "done", None, None))
            continue
        if journey.status == "exited":
            journey.steps.append(
                StepStory(
                    k, "exited", enrolment["exited_at"], "exited by the goal before this step"
                )
            )
            continue
        if k == done + 1:
            due_at = base + step.delay
            if due_at > now:
                journey.steps.append(
                    StepStory(
                        k, "waiting", due_at, f"delay: due {step.delay} after the previous step"
                    )
                )
                planned_at = due_at
            elif exit_now:
                journey.steps.append(
                    StepStory(
                        k,
                        "exited",
                        now,
                        "the exit goal matches now: the next tick ends the journey",
                    )
                )
            elif when_now is False:
                journey.steps.append(
                    StepStory(
                        k,
                        "skipped",
                        now,
                        "its `when` rule is false now: the next tick passes it over",
                    )
                )
            elif opening_in(campaign.send_window, now, zone) > now:
                opens = opening_in(campaign.send_window, now, zone)
                journey.steps.append(
                    StepStory(k, "held", opens, f"send window closed in {zone} until {iso(opens)}")
                )
                planned_at = opens
            elif suppressed:
                journey.steps.append(
                    StepStory(
                        k,
                        "held",
                        None,
                        "suppressed for this topic: recorded as suppressed, not emailed",
                    )
                )
            elif cap_until is not None and cap_until > now:
                journey.steps.append(
                    StepStory(k, "held", cap_until, f"frequency cap until {iso(cap_until)}")
                )
                planned_at = cap_until
            elif journey.holdout:
                journey.steps.append(
                    StepStory(k, "due", now, "due now: holdout, recorded but not emailed")
                )
                planned_at = now
            else:
                journey.steps.append(StepStory(k, "due", now, "due now: the next tick queues it"))
                planned_at = now
            continue
        planned_at = planned_at + step.delay if planned_at is not None else None
        journey.steps.append(
            StepStory(k, "planned", planned_at, f"{step.delay} after step {k - 1}")
        )
    journey.next = _next(journey)


def _next(journey: Journey) -> str:
    if journey.status in ("exited", "finished"):
        return "nothing more in this drip"
    for story in journey.steps:
        if story.state in ("waiting", "held", "due", "skipped", "exited"):
            when = f" at {iso(story.at)}" if story.at else ""
            return f"step {story.step}: {story.state}{when} ({story.reason})"
    return "nothing more in this drip"
