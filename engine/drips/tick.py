"""One scheduler tick: every drip (enrol, exit, advance, queue) and every scheduled broadcast due.

``tick`` is what ``campaign drip run`` and ``campaign worker`` run, and what
``simulate`` runs on a copy of the database with a clock that advances. Each
drip step goes through the one send pipeline (``engine.sending.send_campaign``
with ``audience=`` the merchants it is due for, in their send window, and
``deliver=False``); one delivery pass follows for everything queued. Every
statement is idempotent: the unique keys of ``drip_enrolments`` and of the outbox
make a tick run twice, or on two machines at once, enrol and queue nothing twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.campaigns import Campaign, fire_times, load_campaigns
from engine.clock import Clock
from engine.db import dialect_insert, refresh_statistics, write_transaction
from engine.drips import enrolment
from engine.errors import CampaignError, DeliveryError
from engine.models import drip_enrolments, messages, schedule_fires
from engine.rendering import RenderPool, shared_render_pool
from engine.sending import send_campaign
from engine.windows import present_zones, window_open

# Fire times of a scheduled broadcast looked back on: older ones are neither sent nor reported.
SCHEDULE_LOOKBACK = timedelta(days=7)
# Pipeline skips that leave a drip step due (no outbox row): it is retried next tick.
WAITING_SKIPS = ("frequency_cap", "invalid_address", "limit")


@dataclass
class DripReport:
    """What one tick did for one drip."""

    campaign: str
    enrolled: int = 0
    exited: Counter = field(default_factory=Counter)  # step the merchants will not get → count
    queued: Counter = field(default_factory=Counter)  # step → messages put in the outbox
    holdout: Counter = field(default_factory=Counter)  # step → control group rows
    skipped: Counter = field(default_factory=Counter)  # pipeline reasons that end a step
    waiting: Counter = field(default_factory=Counter)  # reason → enrolments still waiting
    finished: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "enrolled": self.enrolled,
            "exited": {str(k): v for k, v in sorted(self.exited.items())},
            "queued": {str(k): v for k, v in sorted(self.queued.items())},
            "holdout": {str(k): v for k, v in sorted(self.holdout.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "waiting": dict(sorted(self.waiting.items())),
            "finished": self.finished,
        }


@dataclass
class BroadcastFire:
    """A scheduled broadcast's fire time seen by a tick: ``sent`` or ``skipped`` (too late)."""

    campaign: str
    fire_at: datetime
    run: str
    outcome: str
    queued: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "fire_at": self.fire_at.isoformat() + "Z",
            "run": self.run,
            "outcome": self.outcome,
            "queued": self.queued,
        }


@dataclass
class TickReport:
    """What one tick did: per drip, per scheduled broadcast, and the delivery pass."""

    at: datetime
    dry_run: bool = False
    drips: list[DripReport] = field(default_factory=list)
    broadcasts: list[BroadcastFire] = field(default_factory=list)
    delivered: Counter = field(default_factory=Counter)  # outbox state reached → count
    server_down: str | None = None
    stopped: bool = False  # a signal ended the tick early: the next tick goes on from there

    @property
    def enrolled(self) -> int:
        return sum(d.enrolled for d in self.drips)

    @property
    def exited(self) -> int:
        return sum(sum(d.exited.values()) for d in self.drips)

    @property
    def queued(self) -> int:
        return sum(sum(d.queued.values()) for d in self.drips) + sum(
            b.queued for b in self.broadcasts
        )

    @property
    def failed(self) -> bool:
        """Something needs attention: a message failed, or the SMTP server was unavailable."""
        return bool(self.delivered.get("failed") or self.server_down)

    @property
    def waiting(self) -> Counter:
        total: Counter = Counter()
        for d in self.drips:
            total.update(d.waiting)
        return total

    def summary(self) -> str:
        """The one log line of a tick."""
        waiting = ", ".join(f"{k} {v}" for k, v in sorted(self.waiting.items()) if v) or "none"
        return (
            f"tick {self.at.isoformat(timespec='seconds')}Z: enrolled {self.enrolled}, "
            f"exited {self.exited}, queued {self.queued}, sent {self.delivered.get('sent', 0)}, "
            f"deferred {self.delivered.get('deferred', 0)}, failed {self.delivered.get('failed', 0)}, "
            f"waiting: {waiting}"
            + ("; stopped early by a signal: the next tick goes on" if self.stopped else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() + "Z",
            "dry_run": self.dry_run,
            "enrolled": self.enrolled,
            "exited": self.exited,
            "queued": self.queued,
            "sent": self.delivered.get("sent", 0),
            "deferred": self.delivered.get("deferred", 0),
            "failed": self.delivered.get("failed", 0),
            "waiting": dict(sorted(self.waiting.items())),
            "stopped": self.stopped,
            "drips": [d.to_json() for d in self.drips],
            "broadcasts": [b.to_json() for b in self.broadcasts],
            "server_down": self.server_down,
        }


def tick(
    project,
    *,
    clock: Clock,
    campaign: str | None = None,
    dry_run: bool = False,
    transport_factory=None,
    deliver: bool = True,
    definitions: Definitions | None = None,
    zones: list[str] | None = None,
    stop: threading.Event | None = None,
) -> TickReport:
    """One tick at ``clock.now()`` for every drip and scheduled broadcast (or one campaign).

    ``dry_run`` runs the same tick on a copy of the database (nothing changes, no
    connection is opened); ``deliver=False`` queues without the delivery pass
    (the worker delivers continuously on its own). ``definitions`` and ``zones``
    (``simulate``, whose copy of the data does not change) spare re-reading the
    project's files and the merchants' time zones on every tick. ``stop`` set (a
    signal) ends the tick at the next batch: what was queued stays queued and
    counted, the steps reached so far advance, and the next tick goes on (a
    scheduled broadcast's fire time is decided only once its run is complete).
    """
    if dry_run:
        from engine.drips.copy import on_copy

        with on_copy(project) as copy:
            report = tick(copy, clock=clock, campaign=campaign, deliver=False, stop=stop)
        report.dry_run = True
        return report
    now = clock.now()
    settings = project.settings
    if settings.secret_key is None:
        raise DeliveryError(
            "CAMPAIGN_SECRET_KEY is not set: a tick needs it to sign unsubscribe links"
        )
    if deliver and transport_factory is None:
        from engine.delivery import default_transport_factory

        # Before any work: no SMTP server configured stops the tick, not half of it.
        transport_factory = default_transport_factory(settings)
    engine = project.database()
    definitions = definitions or load_definitions(project)
    campaigns = _selected(project, definitions, campaign)
    report = TickReport(at=now)
    if zones is None:
        with engine.connect() as conn:
            zones = present_zones(conn)
    # One set of render processes for every step and broadcast run of the tick.
    with shared_render_pool(settings) as pool:
        for item in campaigns:
            if stop is not None and stop.is_set():
                break
            if item.kind == "drip":
                report.drips.append(
                    run_drip(
                        project,
                        item,
                        now=now,
                        zones=zones,
                        segments=definitions.segments,
                        transport_factory=transport_factory,
                        render_pool=pool,
                        stop=stop,
                    )
                )
            elif item.schedule is not None:
                report.broadcasts.extend(
                    run_schedule(
                        project,
                        item,
                        now=now,
                        grace=settings.scheduler.broadcast_grace,
                        render_pool=pool,
                        stop=stop,
                    )
                )
    report.stopped = stop is not None and stop.is_set()
    if deliver and not report.stopped:
        from engine.delivery import Delivery

        # Also what earlier ticks left waiting (deferred, due for retry).
        stats = Delivery(
            engine, settings, clock=clock, transport_factory=transport_factory, stop=stop
        ).run()
        report.delivered.update(stats.states)
        report.server_down = stats.server_down
        report.stopped = stats.stopped
    return report


@dataclass(frozen=True)
class Definitions:
    """The project's validated segments and campaigns, read once."""

    segments: Any
    campaigns: dict[str, Campaign]


def load_definitions(project) -> Definitions:
    """Read and validate the segment and campaign files (every mistake at once)."""
    from engine.segments import load_segments

    segments = load_segments(project.settings.segments_dir)
    return Definitions(segments, load_campaigns(project.settings, segments))


def _selected(project, definitions: Definitions, name: str | None) -> list[Campaign]:
    campaigns = definitions.campaigns
    if name is None:
        return list(campaigns.values())
    if name not in campaigns:
        from engine.campaigns import load_campaign

        load_campaign(project.settings, name, definitions.segments)  # raises, naming the file
    chosen = campaigns[name]
    if chosen.kind == "broadcast" and chosen.schedule is None:
        raise CampaignError(
            f"campaign {name!r} is a broadcast without a schedule: send it with `campaign send {name}`"
        )
    return [chosen]


def run_drip(
    project,
    campaign: Campaign,
    *,
    now: datetime,
    zones: list[str],
    segments,
    transport_factory=None,
    render_pool: RenderPool | None = None,
    stop: threading.Event | None = None,
) -> DripReport:
    """Enrol, exit, then each step in order: queue it where due, advance, finish."""
    from engine.segments import rule_condition, segment_condition

    engine = project.engine
    report = DripReport(campaign.name)
    window = window_open(
        campaign.send_window, now, zones, default_zone=project.settings.project.timezone
    )
    with write_transaction(engine) as conn:
        report.enrolled = enrolment.enrol(
            conn, campaign, segment_condition(segments, campaign.segment, now=now), now
        )
        if campaign.exit is not None:
            goal = rule_condition(campaign.exit, now=now, segments=segments)
            report.exited.update(enrolment.exit_goal(conn, campaign, goal, now))
    refresh_statistics(engine, drip_enrolments, report.enrolled)
    for step in campaign.steps:
        if stop is not None and stop.is_set():
            break  # the later steps wait for the next tick
        k = step.number
        if not enrolment.count_due(engine, campaign, k, now, window):
            continue
        with engine.connect() as conn:
            cycles = enrolment.due_cycles(conn, campaign, k, now)
        written = 0
        for cycle in cycles:  # a merchant's second entry (reenter_after) has messages of its own
            sent = send_campaign(
                project,
                campaign.name,
                now=now,
                step=k,
                audience=sa.and_(enrolment.due_merchants(campaign, k, now, cycle), window),
                deliver=False,
                transport_factory=transport_factory,
                cycle=cycle,
                render_pool=render_pool,
                stop=stop,
            )
            written += sent.enqueued
            report.queued[k] += sent.would_send
            report.holdout[k] += sent.skipped.get("holdout", 0)
            for reason, count in sent.skipped.items():
                if reason in WAITING_SKIPS:
                    report.waiting[reason] += count
                elif reason not in ("holdout", "exited") and count:
                    report.skipped[reason] += count
        refresh_statistics(engine, messages, written)  # advance_recorded joins them next
        with write_transaction(engine) as conn:
            if step.when is not None:
                when = rule_condition(step.when, now=now, segments=segments)
                enrolment.advance_skipped(conn, campaign, k, now, when_false=~when, window=window)
            enrolment.advance_recorded(conn, campaign, k, now)
    with write_transaction(engine) as conn:
        report.finished = enrolment.finish(conn, campaign, now)
        report.waiting.update(enrolment.waiting_counts(conn, campaign, now, window))
    return report


def run_label(fire_at: datetime) -> str:
    """The run of a scheduled broadcast: its fire time, ISO 8601 in UTC to the minute."""
    return fire_at.isoformat(timespec="minutes")


def run_schedule(
    project,
    campaign: Campaign,
    *,
    now: datetime,
    grace: timedelta,
    render_pool: RenderPool | None = None,
    stop: threading.Event | None = None,
) -> list[BroadcastFire]:
    """Send each fire time of a scheduled broadcast not yet sent, if it is at most ``grace`` late.

    A fire time is decided once (``schedule_fires``): ``sent`` after its run went
    into the outbox (a crash before that retries it), ``skipped`` when too late.
    """
    engine = project.engine
    assert campaign.schedule is not None
    times = fire_times(campaign.schedule, campaign.timezone, now - SCHEDULE_LOOKBACK, now)
    if not times:
        return []
    with engine.connect() as conn:
        decided = set(
            conn.execute(
                sa.select(schedule_fires.c.fire_at).where(
                    schedule_fires.c.campaign == campaign.name,
                    schedule_fires.c.fire_at.in_(times),
                )
            ).scalars()
        )
    fires: list[BroadcastFire] = []
    for fire_at in times:
        if fire_at in decided:
            continue
        label = run_label(fire_at)
        if now - fire_at > grace:
            outcome, queued = "skipped", 0
        else:
            sent = send_campaign(
                project,
                campaign.name,
                now=now,
                run=label,
                deliver=False,
                render_pool=render_pool,
                stop=stop,
            )
            if stop is not None and stop.is_set():
                break  # undecided: the next tick resumes the run (its keys are the same)
            outcome, queued = "sent", sent.enqueued
        with write_transaction(engine) as conn:
            conn.execute(
                dialect_insert(conn)(schedule_fires)
                .values(campaign=campaign.name, fire_at=fire_at, outcome=outcome, decided_at=now)
                .on_conflict_do_nothing(index_elements=["campaign", "fire_at"])
            )
        fires.append(BroadcastFire(campaign.name, fire_at, label, outcome, queued))
    return fires
