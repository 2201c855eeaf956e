"""``campaign send``: the orchestration of the send pipeline, and its dry run.

The stages, each in its own module, data flowing one way::

    preparation ─▶ audience ─────────▶ rendering ─────▶ queueing ─────▶ delivery
    (campaign,     (segment members    (one renderer:   (outbox rows,   (sender threads:
     rules,         in id batches,      here or in       written by      claim, SMTP,
     builder)       skips, holdout,     children)        the process     result)
                    cap, window)                         that rendered)

``send_campaign`` runs them for a broadcast run or a drip step on one clock;
the drip engine calls it with its own audience (``audience=``) and without
delivery (``deliver=False``). A dry run does every step except the outbox
writes and the network: it opens no socket and changes no row.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.audience import (
    Tally,
    audience_size,
    count_rest,
    filter_batch,
    member_batches,
    waiting_keys,
)
from engine.clock import Clock, clock_for, real_now
from engine.db import dialect_insert, write_transaction
from engine.delivery import Delivery, DeliveryStats, default_transport_factory
from engine.errors import DeliveryError
from engine.models import campaign_runs
from engine.outbox import held_leases, release_server_holds, requeue_unknown, state_counts, waiting
from engine.preparation import PreparedCampaign, check_database, prepare_campaign
from engine.queueing import Queued
from engine.rendering import Renderer, RenderPool, render_workers
from engine.send_report import MANUAL_RUN, SKIP_REASONS, SendReport, iso

__all__ = ["MANUAL_RUN", "SKIP_REASONS", "SendReport", "dry_run_campaign", "send_campaign"]

Progress = Callable[[int, int | None], None]

QUEUE_ONLY_BATCH = 500  # audience rows per batch when this send does not deliver


def send_campaign(
    project,
    name: str,
    *,
    now: datetime | None = None,
    clock: Clock | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    run: str | None = None,
    step: int | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    transport_factory=None,
    wait_retries: timedelta = timedelta(0),
    server_patience: float = 10.0,
    render_workers: int | None = None,
    render_pool: RenderPool | None = None,
    audience: sa.ColumnElement[bool] | None = None,
    deliver: bool = True,
    stop: threading.Event | None = None,
    cycle: int = 1,
) -> SendReport:
    """Send a broadcast run (default ``manual``, resumed on every send) or a drip's step now.

    ``clock`` (or a fixed ``now``; neither: the real clock) is the time of every
    rule and every timestamp. ``audience`` replaces the campaign's segment (the
    drip engine's due members); ``deliver=False`` queues without delivering.
    ``stop`` set (a signal) ends the send cleanly: messages in flight finish,
    other claims go back, the report says so. With ``dry_run`` everything is
    computed and rendered but no row is written and no connection is opened.
    ``transport_factory`` (tests, benchmarks) replaces the SMTP transport;
    ``render_workers``: child processes that render (None: automatic);
    ``render_pool``: children to render in, shared with other sends (a tick's). ``cycle``:
    the drip entry (``reenter_after``) the messages belong to.
    """
    clock = clock or clock_for(now)
    start = clock.now()
    settings = project.settings
    engine: Engine = project.engine
    if dry_run:
        check_database(engine)
    else:
        if settings.secret_key is None:
            raise DeliveryError(
                "CAMPAIGN_SECRET_KEY is not set: a real send needs it to sign unsubscribe links"
            )
        if deliver and transport_factory is None:
            transport_factory = default_transport_factory(settings)  # no SMTP URL: stop here
        engine = project.database()
    plan = prepare_campaign(
        settings, name, now=start, run=run, step=step, sending=not dry_run, cycle=cycle
    )
    if audience is not None:
        plan.condition = audience
    report = SendReport(
        campaign=plan.campaign.name,
        kind=plan.campaign.kind,
        dry_run=dry_run,
        step=plan.step,
        run=plan.run,
    )
    if plan.campaign.kind == "drip" and audience is None:
        report.notes.append(
            f"{plan.campaign.name} is a drip: `send` sends step {plan.step} now to segment "
            "members who have not had it (`campaign drip run` schedules the later steps)"
        )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if not dry_run and deliver:
        # An explicit send delivers the run's messages now, including those that a
        # server-wide backoff (server down, no attempt charged) held back.
        release_server_holds(
            engine,
            campaign=plan.campaign.name,
            run=plan.run,
            step=plan.step,
            retry_backoff=settings.delivery.retry_backoff,
            now=start,
        )
    with engine.connect() as conn:
        plan.resumed = waiting_keys(conn, plan)
    delivery = None
    if not dry_run:
        if plan.run is not None:
            with write_transaction(engine) as conn:
                conn.execute(
                    dialect_insert(conn)(campaign_runs)
                    .values(campaign=plan.campaign.name, run=plan.run, started_at=start)
                    .on_conflict_do_nothing(index_elements=["campaign", "run"])
                )
        if deliver:
            delivery = _delivery(
                engine, settings, plan, report, clock, transport_factory, progress,
                wait_retries=wait_retries, server_patience=server_patience, stop=stop,
            )  # fmt: skip
            delivery.start()
    stats = None
    with _long_lived_frozen():
        try:
            _produce(
                settings, engine, plan, report, clock=clock, now=start, dry_run=dry_run,
                limit=limit, out_dir=out_dir, progress=progress, delivery=delivery,
                workers=render_workers, pool=render_pool, stop=stop,
            )  # fmt: skip
        except BaseException:
            if delivery is not None:
                delivery.stop()
                delivery.join()
            raise
        if delivery is not None:
            stats = delivery.join()
    if report.window_waiting:
        verb = "would wait" if dry_run else "wait"
        report.notes.append(
            f"{report.window_waiting} message(s) of {_what(plan)} {verb} for the send window "
            f"in the merchant's time zone, the first until {iso(report.window_opens)} and the "
            f"last until {iso(report.window_last)} (`campaign worker`, or `campaign send` "
            "again then, delivers them)"
        )
    if not dry_run:
        _after_delivery(engine, plan, report, stats, clock)
    return report


def _delivery(
    engine, settings, plan, report, clock, factory, progress, *, wait_retries, server_patience, stop
) -> Delivery:
    finished = [0]

    def on_result(_state: str) -> None:
        finished[0] += 1
        if progress is not None:
            progress(finished[0], report.would_send)

    return Delivery(
        engine,
        settings,
        clock=clock,
        campaign=plan.campaign.name,
        run=plan.run,
        step=plan.step,
        transport_factory=factory,
        wait_retries=wait_retries,
        on_result=on_result,
        server_patience=server_patience,
        stop=stop,
    )


@contextlib.contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """Keep the objects that exist now (modules, engine, templates) out of the garbage
    collector's walks while a send allocates millions of short-lived ones (several
    percent of a send's CPU otherwise); unfrozen afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _produce(
    settings,
    engine: Engine,
    plan: PreparedCampaign,
    report: SendReport,
    *,
    clock: Clock,
    now: datetime,
    dry_run: bool,
    limit: int | None,
    out_dir: Path | None,
    progress: Progress | None,
    delivery: Delivery | None,
    workers: int | None,
    pool: RenderPool | None,
    stop: threading.Event | None,
) -> None:
    """The audience loop: batch, skip with reasons, render and queue, count."""
    total = audience_size(engine, plan)
    renderer = Renderer(
        settings, plan, engine=engine, now=now, clock=clock, dry_run=dry_run,
        out_dir=out_dir,
        workers=render_workers(total, limit, workers, delivering=delivery is not None),
        pool=pool,
    )  # fmt: skip
    tally = Tally()

    def record(queued: Queued) -> None:
        _record(report, plan, queued)
        if delivery is not None:
            delivery.notify()
        if progress is not None and dry_run:
            progress(tally.audience, total)

    batch_size = max(50, settings.delivery.batch_size)
    if delivery is None and not dry_run:
        # Queueing only (a drip tick): no sender waits for the first messages,
        # and larger batches take fewer statements per message.
        batch_size = max(batch_size, QUEUE_ONLY_BATCH)
    try:
        for conn, rows in member_batches(engine, plan, batch_size):
            if stop is not None and stop.is_set():
                break  # the rest of the audience is reached by the next send of the run
            if limit is not None and report.would_send >= limit:
                # Enough messages: the rest of the audience is only counted.
                count_rest(conn, plan, tally, rows[0]["id"])
                break
            batch = filter_batch(conn, settings, plan, tally, rows, now)
            if limit is not None:
                room = max(0, limit - report.would_send)
                tally.skipped["limit"] += max(0, len(batch.candidates) - room)
                batch.candidates = batch.candidates[:room]
            for queued in renderer.submit(conn, batch):
                record(queued)
        for queued in renderer.finish():
            record(queued)
    finally:
        renderer.close()
        report.audience += tally.audience
        report.pending += tally.pending
        report.skipped.update(tally.skipped)
    # Batches rendered here while the children started were recorded before
    # earlier ones rendered there: list the messages in audience order again.
    report.messages.sort(key=lambda m: m["merchant_id"])
    report.render_errors.sort(key=lambda m: m["merchant_id"])


def _record(report: SendReport, plan: PreparedCampaign, queued: Queued) -> None:
    report.enqueued += queued.enqueued
    for merchant_id, email, subject in queued.rendered:
        report.would_send += 1
        report.messages.append(
            {"merchant_id": merchant_id, "email": email, "step": plan.step, "subject": subject}
        )
    for merchant_id, email, reason in queued.failures:
        report.skipped["render_error"] += 1
        report.render_errors.append({"merchant_id": merchant_id, "email": email, "reason": reason})
    for opening in queued.window:
        report.note_window(opening)


def _after_delivery(
    engine: Engine,
    plan: PreparedCampaign,
    report: SendReport,
    stats: DeliveryStats | None,
    clock: Clock,
) -> None:
    """The outbox of this run or step after the pass, and the notes an operator needs."""
    name, what = plan.campaign.name, _what(plan)
    scope = {"campaign": name, "run": plan.run, "step": plan.step}
    with engine.connect() as conn:
        report.states = state_counts(conn, **scope)
        report.waiting, report.next_due = waiting(conn, **scope)
        report.held, report.held_until = held_leases(conn, lease_now=real_now(), **scope)
    if stats is None:
        if report.enqueued:
            report.notes.append(f"{report.enqueued} message(s) of {what} queued, not delivered yet")
        return
    report.server_down = stats.server_down
    if stats.stopped:
        report.notes.append(
            f"stopped by a signal: the messages in flight were finished and every other claim "
            f"given back; {report.waiting} message(s) of {what} wait in the outbox "
            "(`campaign send` again goes on)"
        )
    if stats.recovered.get("unknown"):
        report.notes.append(
            f"{stats.recovered['unknown']} message(s) from an interrupted send are now 'unknown': "
            f"check them, then `campaign retry --unknown {name}` to resend on purpose"
        )
    unknown = report.states.get("unknown", 0)
    if unknown and not stats.recovered.get("unknown"):
        report.notes.append(
            f"{unknown} message(s) of {what} are 'unknown' (the connection dropped after the body: "
            f"the server may have them): check them, then `campaign retry --unknown {name}`"
        )
    if report.held:
        report.notes.append(
            f"{report.held} message(s) of {what} are held by another sender (or one that "
            f"stopped) until {iso(report.held_until)}; after that `campaign send` takes them over"
        )
    due = _due(report.next_due, clock.now())
    if report.server_down:
        report.notes.append(
            f"the SMTP server is unavailable ({report.server_down}); {report.waiting} "
            f"message(s) of {what} wait in the outbox, {due} "
            "(`campaign send` again delivers them at once once the server is back)"
        )
    elif report.waiting > report.window_waiting:
        report.notes.append(
            f"{report.waiting - report.window_waiting} message(s) of {what} deferred by the "
            f"server wait in the outbox, {due} (`campaign worker` or another send retries them)"
        )


def _what(plan: PreparedCampaign) -> str:
    return f"run {plan.run!r}" if plan.run is not None else f"step {plan.step}"


def _due(moment: datetime | None, now: datetime) -> str:
    if moment is None or moment <= now:
        return "due now"
    return f"the first due at {iso(moment)}"


def dry_run_campaign(
    project,
    name: str,
    *,
    now: datetime | None = None,
    limit: int | None = None,
    run: str | None = None,
    out_dir: Path | None = None,
) -> SendReport:
    """What ``send NAME`` would do now, changing nothing (used by ``campaign demo``)."""
    return send_campaign(
        project, name, now=now, dry_run=True, limit=limit, run=run, out_dir=out_dir
    )


def retry_unknown(
    project,
    name: str,
    *,
    now: datetime | None = None,
    transport_factory=None,
    progress: Progress | None = None,
    server_patience: float = 10.0,
) -> SendReport:
    """``campaign retry --unknown``: resend a campaign's ``unknown`` messages, on purpose."""
    from engine.campaigns import campaign_files

    clock = clock_for(now)
    settings = project.settings
    engine = project.database()
    with engine.connect() as conn:
        known = bool(state_counts(conn, campaign=name))
    if not known and name not in {p.stem for p in campaign_files(settings.campaigns_dir)}:
        raise DeliveryError(
            f"no campaign named {name!r}: there is no {settings.campaigns_dir / (name + '.yaml')} "
            "and nothing was sent under that name"
        )
    factory = transport_factory or default_transport_factory(settings)
    report = SendReport(campaign=name, kind="retry", dry_run=False)
    report.would_send = requeue_unknown(engine, name, now=clock.now())
    done = [0]

    def on_result(_state: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], report.would_send)

    stats = Delivery(
        engine,
        settings,
        clock=clock,
        campaign=name,
        transport_factory=factory,
        on_result=on_result,
        server_patience=server_patience,
    ).run()
    report.server_down = stats.server_down
    # What this retry did (the campaign's earlier failures are not this command's).
    report.states = dict(stats.states)
    return report
