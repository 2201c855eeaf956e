"""``campaign send``: audience → skips → render → outbox → SMTP, and its dry run.

The audience is read from the segment in id-ordered batches. Each batch loses,
with a reason that the report shows: invalid addresses, the holdout group,
suppressed addresses (the campaign's topic or all), merchants this run already
reached (or whose message failed), drip members that the exit or ``when`` rule
leaves out, those past ``--limit``, and (for non-exempt topics) merchants at the
frequency cap: audience == would_send + pending + sum(skipped). The rest is
rendered in one ``render_batch`` call per batch (in this thread, or for large
sends in child processes, which leave the GIL to SMTP and the outbox) while the sender
threads (``engine.delivery``) drain the outbox. A dry run does every step
except the outbox writes and the network: it opens no socket and changes no row.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.addresses import normalize_email
from engine.db import current_revision, dialect_insert, head_revision, write_transaction
from engine.errors import CampaignError, DeliveryError
from engine.keys import message_key
from engine.models import campaign_runs, merchants, messages
from engine.outbox import (
    IN_FLIGHT,
    PENDING,
    NewMessage,
    State,
    enqueue,
    existing_keys,
    release_server_holds,
    requeue_unknown,
    state_counts,
    waiting,
)
from engine.times import utcnow
from engine.transport import is_smtp_ready

MANUAL_RUN = "manual"
# Every audience member not in ``would_send`` is either ``pending`` (its message
# waits in the outbox from an earlier send of the run) or skipped for one of these:
# audience == would_send + pending + sum(skipped), always.
SKIP_REASONS = (
    "suppressed",
    "frequency_cap",
    "holdout",
    "already_sent",  # sent, unknown or in flight in this run
    "failed_before",  # this run's message to them failed (e.g. 554 or a render error)
    "invalid_address",
    "render_error",
    "exited",  # drip: the campaign's exit rule matches
    "step_condition",  # drip: the step's ``when`` rule does not match
    "limit",  # beyond --limit
)
# States that never count towards the frequency cap: nothing reached the merchant.
_NOT_DELIVERED = (State.FAILED, State.SUPPRESSED, State.HOLDOUT)

Progress = Callable[[int, int | None], None]


@dataclass
class SendReport:
    """What a send (or a dry run) did; ``to_json`` is the SPEC 8 form."""

    campaign: str
    kind: str
    dry_run: bool
    step: int | None = None
    run: str | None = None
    audience: int = 0
    would_send: int = 0  # rendered and (on a real send) in the outbox for this run
    enqueued: int = 0  # new outbox rows written by this send
    pending: int = 0  # audience members whose message waits from an earlier send (resumed)
    skipped: Counter = field(default_factory=Counter)
    messages: list[dict[str, Any]] = field(default_factory=list)
    render_errors: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)  # this run's/step's outbox, after delivery
    server_down: str | None = None
    waiting: int = 0  # this run's/step's messages still queued or deferred after delivery
    next_due: datetime | None = None  # when the first of them is due
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Something needs attention: failures, render errors, or the server refused to talk."""
        return bool(
            self.states.get(str(State.FAILED))
            or self.skipped.get("render_error")
            or self.server_down
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "campaign": self.campaign,
            "audience": self.audience,
            "would_send": self.would_send,
            "skipped": {reason: self.skipped.get(reason, 0) for reason in SKIP_REASONS},
            "messages": self.messages,
        }
        data.update(
            kind=self.kind, step=self.step, run=self.run, dry_run=self.dry_run, pending=self.pending
        )
        if self.render_errors:
            data["render_errors"] = self.render_errors
        if not self.dry_run:
            data.update(
                enqueued=self.enqueued,
                states=self.states,
                server_down=self.server_down,
                waiting=self.waiting,
                next_due=_iso(self.next_due),
            )
        if self.notes:
            data["notes"] = self.notes
        return data


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "Z"


def _due(moment: datetime | None) -> str:
    if moment is None or moment <= utcnow():
        return "due now"
    return f"the first due at {_iso(moment)}"


@dataclass
class _Plan:
    """Everything fixed before the first batch: campaign, step/run, rules, builder."""

    campaign: Any
    step: int | None
    run: str | None
    template: str
    condition: sa.ColumnElement[bool]  # the audience: the campaign's segment
    builder: Any
    # Drip rules checked per member, so that those they leave out are counted:
    exit: sa.ColumnElement[bool] | None = None
    when: sa.ColumnElement[bool] | None = None
    # Keys of this run/step still waiting in the outbox when the send began: the
    # delivery pass resumes them; the audience loop neither renders nor skips them.
    resumed: frozenset[str] = frozenset()

    @property
    def sender(self) -> str:
        """The envelope sender (MAIL FROM): ``from:`` without the name, parsed once."""
        if "_sender" not in self.__dict__:
            self.__dict__["_sender"] = self.campaign.sender_address
        return self.__dict__["_sender"]


def _check_database(engine: Engine) -> None:
    """A dry run must not create or migrate anything: the schema has to be there already."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not Path(database).exists():
            raise DeliveryError(
                f"no database at {database}: run `campaign db upgrade` or `campaign demo` first"
            )
    if current_revision(engine) != head_revision():
        raise DeliveryError(
            "the database schema is not up to date: run `campaign db upgrade` first"
        )


def _plan(
    settings, name: str, *, now: datetime, run: str | None, step: int | None, sending: bool
) -> _Plan:
    from engine.campaigns import load_campaign
    from engine.messages import MessageBuilder
    from engine.segments import load_segments, rule_condition, segment_condition
    from engine.templates import TemplateSet

    segments = load_segments(settings.segments_dir)
    campaign = load_campaign(settings, name, segments)
    condition = segment_condition(segments, campaign.segment, now=now)
    exit_rule = when_rule = None
    if campaign.kind == "broadcast":
        if step not in (None, 1):
            raise CampaignError(f"campaign {name!r} is a broadcast and has no step {step}")
        step_number, run_label = None, run or MANUAL_RUN
    else:
        if run is not None:
            raise CampaignError(f"campaign {name!r} is a drip: --run is for broadcasts")
        step_number, run_label = step or 1, None
        if campaign.exit is not None:
            exit_rule = rule_condition(campaign.exit, now=now, segments=segments)
        when = campaign.step(step_number).when
        if when is not None:
            when_rule = rule_condition(when, now=now, segments=segments)
    templates = TemplateSet(settings.templates_dir, settings.project.default_locale)
    builder = MessageBuilder(settings, campaign, templates, sending=sending)
    return _Plan(
        campaign,
        step_number,
        run_label,
        campaign.template_for(step_number),
        condition,
        builder,
        exit=exit_rule,
        when=when_rule,
    )


def _frequency_capped(
    conn: Connection, settings, campaign, merchant_ids: Sequence[int], now: datetime
) -> set[int]:
    """Merchants who already had the project-wide maximum of emails in the rolling window."""
    cap = settings.limits.frequency_cap
    exempt = tuple(settings.limits.frequency_cap_exempt)
    if cap is None or campaign.topic in exempt or not merchant_ids:
        return set()
    since = now - cap.per
    query = (
        sa.select(messages.c.merchant_id)
        .where(
            messages.c.merchant_id.in_(list(merchant_ids)),
            messages.c.state.not_in([str(s) for s in _NOT_DELIVERED]),
            sa.func.coalesce(messages.c.sent_at, messages.c.created_at) >= since,
        )
        .group_by(messages.c.merchant_id)
        .having(sa.func.count() >= cap.count)
    )
    if exempt:
        query = query.where(messages.c.topic.not_in(exempt))
    return set(conn.execute(query).scalars())


def _eml_name(key: str) -> str:
    return key.replace("/", "_") + ".eml"


def send_campaign(
    project,
    name: str,
    *,
    now: datetime | None = None,
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
    audience: sa.ColumnElement[bool] | None = None,
    deliver: bool = True,
) -> SendReport:
    """Send a broadcast run (default ``manual``, resumed on every send) or a drip's step now.

    With ``dry_run`` everything is computed and rendered but no row is written and
    no connection is opened. ``transport_factory`` (tests, benchmarks) replaces
    the SMTP transport built from the settings. ``render_workers``: child
    processes that render (None: automatic, from ``POOL_THRESHOLD`` merchants
    and a spare CPU; 0: render in this process). ``audience`` (the drip tick): a
    condition on ``merchants`` that replaces the campaign's segment; ``deliver=False``
    queues the messages and returns without delivering them.
    """
    now = now or utcnow()
    settings = project.settings
    engine: Engine = project.engine
    if dry_run:
        _check_database(engine)
    else:
        if settings.secret_key is None:
            raise DeliveryError(
                "CAMPAIGN_SECRET_KEY is not set: a real send needs it to sign unsubscribe links"
            )
        if transport_factory is None and deliver:
            from engine.delivery import default_transport_factory

            transport_factory = default_transport_factory(settings)  # no SMTP URL: stop here
        engine = project.database()
    plan = _plan(settings, name, now=now, run=run, step=step, sending=not dry_run)
    if audience is not None:
        plan.condition = audience
    campaign = plan.campaign
    report = SendReport(
        campaign=campaign.name, kind=campaign.kind, dry_run=dry_run, step=plan.step, run=plan.run
    )
    if campaign.kind == "drip" and audience is None:
        report.notes.append(
            f"{campaign.name} is a drip: `send` sends step {plan.step} now to segment members "
            "who have not had it (send windows are not applied; `drip run` schedules the later steps)"
        )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    if not dry_run:
        # An explicit send delivers the run's messages now, including those that a
        # server-wide backoff (server down, no attempt charged) held back.
        release_server_holds(
            engine,
            campaign=campaign.name,
            run=plan.run,
            step=plan.step,
            retry_backoff=settings.delivery.retry_backoff,
            now=utcnow(),
        )
    with engine.connect() as conn:
        plan.resumed = _waiting_keys(conn, plan)
    delivery = None
    if not dry_run:
        from engine.delivery import Delivery

        finished = [0]

        def on_result(_state: str) -> None:
            finished[0] += 1
            if progress is not None:
                progress(finished[0], report.would_send)

        delivery = (
            Delivery(
                engine,
                settings,
                campaign=campaign.name,
                run=plan.run,
                step=plan.step,
                transport_factory=transport_factory,
                wait_retries=wait_retries,
                on_result=on_result,
                server_patience=server_patience,
            )
            if deliver
            else None
        )
        if plan.run is not None:
            with write_transaction(engine) as conn:
                conn.execute(
                    dialect_insert(conn)(campaign_runs)
                    .values(campaign=campaign.name, run=plan.run, started_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["campaign", "run"])
                )
        if delivery is not None:
            delivery.start()

    with _long_lived_frozen():
        try:
            _produce(
                project,
                engine,
                plan,
                report,
                dry_run=dry_run,
                limit=limit,
                now=now,
                out_dir=out_dir,
                progress=progress,
                delivery=delivery,
                render_workers=render_workers,
            )
        except BaseException:
            if delivery is not None:
                delivery.stop()
                delivery.join()
            raise
        stats = delivery.join() if delivery is not None else None
    if stats is not None:
        report.server_down = stats.server_down
        if stats.recovered.get("unknown"):
            report.notes.append(
                f"{stats.recovered['unknown']} message(s) from an interrupted send are now 'unknown': "
                f"check them, then `campaign retry --unknown {campaign.name}` to resend on purpose"
            )
        with engine.connect() as conn:
            report.states = state_counts(conn, campaign=campaign.name, step=plan.step, run=plan.run)
            report.waiting, report.next_due = waiting(
                conn, campaign=campaign.name, run=plan.run, step=plan.step
            )
        what = f"run {plan.run!r}" if plan.run is not None else f"step {plan.step}"
        if report.server_down:
            report.notes.append(
                f"the SMTP server is unavailable ({report.server_down}); {report.waiting} "
                f"message(s) of {what} wait in the outbox, {_due(report.next_due)} "
                "(`campaign send` again delivers them at once once the server is back)"
            )
        elif report.waiting:
            report.notes.append(
                f"{report.waiting} message(s) of {what} deferred by the server wait in the "
                f"outbox, {_due(report.next_due)} (`campaign worker` or "
                "another send retries them)"
            )
    return report


@contextlib.contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """Keep the objects that exist now (modules, engine, templates) out of the garbage
    collector's walks while a send allocates millions of short-lived ones.

    A send's full collections otherwise re-walk every long-lived object each time
    (measured: several percent of a send's CPU). Unfrozen afterwards, so that any
    garbage among them is collected as usual.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _produce(
    project,
    engine: Engine,
    plan: _Plan,
    report: SendReport,
    *,
    dry_run: bool,
    limit: int | None,
    now: datetime,
    out_dir: Path | None,
    progress: Progress | None,
    delivery,
    render_workers: int | None,
) -> None:
    """The audience loop: batch, skip with reasons, render, enqueue (or just record)."""
    settings = project.settings
    batch_size = max(50, settings.delivery.batch_size)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).where(plan.condition)).scalar()
    pool = _start_pool(settings, plan, now, dry_run, total, limit, render_workers, out_dir)
    pending: deque = deque()

    def record(results) -> None:
        _record(
            engine,
            plan,
            report,
            results,
            now=now,
            dry_run=dry_run,
            out_dir=out_dir,
            delivery=delivery,
        )
        if progress is not None and dry_run:
            progress(report.audience, total)

    cursor = 0
    warming = pool is not None
    try:
        while True:
            with engine.connect() as conn:
                rows = (
                    conn.execute(
                        sa.select(merchants, *_flags(plan))
                        .where(plan.condition, merchants.c.id > cursor)
                        .order_by(merchants.c.id)
                        .limit(batch_size)
                    )
                    .mappings()
                    .all()
                )
                if not rows:
                    break
                cursor = rows[-1]["id"]
                if limit is not None and report.would_send >= limit:
                    # Enough messages: the rest of the audience is only counted.
                    _count_rest(conn, plan, report, rows[0]["id"])
                    break
                report.audience += len(rows)
                candidates, recorded = _filter(conn, settings, plan, report, rows, now)
                if limit is not None:
                    room = max(0, limit - report.would_send)
                    report.skipped["limit"] += max(0, len(candidates) - room)
                    candidates = candidates[:room]
                # Child processes take about a second to start (an interpreter,
                # imports, the templates): until the first batch comes back from
                # one, this process renders the batches itself rather than leave
                # the sender threads idle.
                local = pool is None or bool(warming and pending and not pending[0].done())
                if local:
                    results = (
                        plan.builder.render_batch(
                            conn,
                            candidates,
                            now=now,
                            template=plan.template,
                            step=plan.step,
                            run=plan.run,
                        )
                        if candidates
                        else []
                    )
            if recorded and not dry_run:
                # The control group and the suppressed, recorded once per run for the report.
                enqueue(engine, recorded, now=now)
            if local:
                record(results)
                continue
            pending.append(pool.submit(_render_remote, [dict(r) for r in candidates]))
            while len(pending) > 2 * pool._max_workers or (pending and pending[0].done()):
                record(pending.popleft().result())
                warming = False
        while pending:
            record(pending.popleft().result())
    finally:
        if pool is not None:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
    # Batches rendered here while the children started were recorded before
    # earlier ones rendered there: list the messages in audience order again.
    report.messages.sort(key=lambda m: m["merchant_id"])
    report.render_errors.sort(key=lambda m: m["merchant_id"])


def _record(
    engine,
    plan: _Plan,
    report: SendReport,
    results,
    *,
    now: datetime | None = None,
    dry_run: bool,
    out_dir: Path | None,
    delivery,
) -> None:
    """Count rendered messages and failures; on a real send, put them in the outbox."""
    if isinstance(results, _RemoteError):
        raise CampaignError(results.message)
    written = isinstance(results, _Enqueued)  # by the child that rendered them
    if written:
        report.enqueued += results.new
        results = results.results
    outbox: list[NewMessage] = []
    for result in results:
        rendered = hasattr(result, "data")
        if not rendered:
            report.skipped["render_error"] += 1
            report.render_errors.append(
                {"merchant_id": result.merchant_id, "email": result.email, "reason": result.reason}
            )
        else:
            report.would_send += 1
            report.messages.append(
                {
                    "merchant_id": result.merchant_id,
                    "email": result.email,
                    "step": plan.step,
                    "subject": result.subject,
                }
            )
            if out_dir is not None and not written:
                (out_dir / _eml_name(result.key)).write_bytes(result.data)
        if not dry_run and not written:
            outbox.append(_new_message(plan, result, rendered))
    if outbox:
        report.enqueued += enqueue(engine, outbox, now=now)
    if not dry_run and results and delivery is not None:
        delivery.notify()


# --- rendering in other processes ------------------------------------------------
#
# Rendering is pure CPU and holds the GIL; the sender threads need it too. For
# large sends the batches are rendered in child processes (spawned, each with its
# own database connection) while this process filters the audience and drives
# SMTP. On a real send a child also writes its batch to the outbox (an SQLite
# writer in another process just waits for the lock, as a second `send` would),
# so the bodies never cross back; a dry run gets the bytes back instead.

POOL_THRESHOLD = 5000  # audience size from which child processes pay for their start-up


@dataclass(frozen=True)
class _Rendered:
    key: str
    merchant_id: int
    email: str
    subject: str
    message_id: str
    data: bytes


@dataclass(frozen=True)
class _Failed:
    key: str
    merchant_id: int
    email: str
    reason: str


@dataclass(frozen=True)
class _RemoteError:
    message: str


@dataclass(frozen=True)
class _Enqueued:
    """A batch a child process rendered and put in the outbox itself (a real send)."""

    results: list[_Rendered | _Failed]  # without their bytes
    new: int  # outbox rows the batch added


_WORKER: dict[str, Any] = {}


def _start_pool(
    settings,
    plan: _Plan,
    now: datetime,
    dry_run: bool,
    total: int,
    limit: int | None,
    workers: int | None,
    out_dir: Path | None,
):
    if workers is None:
        if total < POOL_THRESHOLD or limit is not None:
            return None
        # Rendering holds the GIL that the sender threads need: even on two cores
        # one renderer beside this process (outbox and SMTP) measured faster
        # than rendering here (20,000 messages: about 2,000/s against 1,600/s).
        # More renderers only on the cores beyond the first two.
        cores = os.cpu_count() or 1
        workers = 0 if cores < 2 else min(4, max(1, cores - 2))
    if workers < 1:
        return None
    context = multiprocessing.get_context("spawn")
    args = (settings, plan.campaign.name, now, plan.run, plan.step, not dry_run, out_dir)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=args)


def _init_worker(
    settings, name: str, now: datetime, run, step, sending: bool, out_dir: Path | None
) -> None:
    from engine.db import make_engine

    plan = _plan(settings, name, now=now, run=run, step=step, sending=sending)
    _WORKER["plan"] = plan
    _WORKER["engine"] = make_engine(settings.database_url)
    _WORKER["now"] = now
    _WORKER["sending"] = sending
    _WORKER["out_dir"] = out_dir
    # Load the template now (premailer and all), then keep everything loaded so
    # far out of the garbage collector's sight: rendering allocates a lot, and
    # each full collection would otherwise walk these long-lived objects again.
    with contextlib.suppress(CampaignError):  # it comes back, with its reason, from the batch
        plan.builder.templates.get(plan.template, settings.project.default_locale)
    gc.freeze()


def _render_remote(
    rows: list[dict[str, Any]],
) -> list[_Rendered | _Failed] | _Enqueued | _RemoteError:
    if not rows:
        return []
    plan: _Plan = _WORKER["plan"]
    try:
        with _WORKER["engine"].connect() as conn:
            results = plan.builder.render_batch(
                conn, rows, now=_WORKER["now"], template=plan.template, step=plan.step, run=plan.run
            )
    except CampaignError as exc:
        # Our exceptions do not all survive pickling (ProjectFileError's signature):
        # send the sentence back and raise it in the parent.
        return _RemoteError(str(exc))
    if not _WORKER["sending"]:
        return [
            _Rendered(r.key, r.merchant_id, r.email, r.subject, r.message_id, r.data)
            if hasattr(r, "data")
            else _Failed(r.key, r.merchant_id, r.email, r.reason)
            for r in results
        ]
    # A real send: the outbox rows are written here, and only what the report needs
    # goes back (the bodies are the bulk of a batch: they need not cross twice).
    out_dir: Path | None = _WORKER["out_dir"]
    if out_dir is not None:
        for r in results:
            if hasattr(r, "data"):
                (out_dir / _eml_name(r.key)).write_bytes(r.data)
    new = enqueue(
        _WORKER["engine"],
        [_new_message(plan, r, hasattr(r, "data")) for r in results],
        now=_WORKER["now"],
    )
    return _Enqueued(
        [
            _Rendered(r.key, r.merchant_id, r.email, r.subject, r.message_id, b"")
            if hasattr(r, "data")
            else _Failed(r.key, r.merchant_id, r.email, r.reason)
            for r in results
        ],
        new,
    )


def _new_message(plan: _Plan, result, rendered: bool) -> NewMessage:
    campaign = plan.campaign
    common = dict(
        key=result.key,
        campaign=campaign.name,
        topic=campaign.topic,
        merchant_id=result.merchant_id,
        email=result.email,
        sender=plan.sender,
        step=plan.step,
        run=plan.run,
    )
    if rendered:
        return NewMessage(
            subject=result.subject,
            message_id=result.message_id,
            data=result.data,
            smtp_ready=is_smtp_ready(result.data),  # here, not in the sending threads
            **common,
        )
    # A render error fails that one message, with its reason, and the rest go on.
    return NewMessage(
        subject=None,
        message_id=None,
        data=None,
        state=State.FAILED,
        last_error=f"render error: {result.reason}",
        **common,
    )


_EXITED = "_campaign_exited"
_STEP_OK = "_campaign_step_ok"


def _flags(plan: _Plan) -> list[sa.ColumnElement]:
    """Columns that say, per audience member, whether a drip's exit or ``when`` rule applies."""
    flags: list[sa.ColumnElement] = []
    if plan.exit is not None:
        flags.append(sa.case((plan.exit, 1), else_=0).label(_EXITED))
    if plan.when is not None:
        flags.append(sa.case((plan.when, 1), else_=0).label(_STEP_OK))
    return flags


def _count_rest(conn: Connection, plan: _Plan, report: SendReport, first_id: int) -> None:
    """Past ``--limit``: the rest of the audience is counted, as pending or as ``limit``."""
    ids = conn.execute(
        sa.select(merchants.c.id).where(plan.condition, merchants.c.id >= first_id)
    ).scalars()
    for merchant_id in ids:
        report.audience += 1
        key = message_key(plan.campaign.name, merchant_id, step=plan.step, run=plan.run)
        if key in plan.resumed:
            report.pending += 1
        else:
            report.skipped["limit"] += 1


def _record_row(plan: _Plan, row: Mapping[str, Any], email: str, state: State, error=None):
    campaign = plan.campaign
    return NewMessage(
        key=message_key(campaign.name, row["id"], step=plan.step, run=plan.run),
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


def _suppression_reasons(conn: Connection, emails: Sequence[str], topic: str) -> dict[str, str]:
    """``{email: reason}`` for those of ``emails`` suppressed for ``topic`` or for all topics."""
    from engine.models import suppressions

    wanted = sorted({e.lower() for e in emails})
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            sa.select(suppressions.c.email, suppressions.c.topic, suppressions.c.reason)
            .where(
                suppressions.c.email.in_(wanted[start : start + 500]),
                suppressions.c.topic.in_([topic, "*"]),
            )
            .order_by(suppressions.c.email, suppressions.c.topic)
        )
        for address, scope, reason in rows:
            found.setdefault(address, f"{reason} ({'all topics' if scope == '*' else scope})")
    return found


def _filter(
    conn: Connection,
    settings,
    plan: _Plan,
    report: SendReport,
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
) -> tuple[list[Mapping[str, Any]], list[NewMessage]]:
    """Skip with reasons; returns (merchants to render, rows to record: holdout, suppressed)."""
    from engine.campaigns import in_holdout

    campaign = plan.campaign
    flagged = plan.exit is not None or plan.when is not None
    valid: list[tuple[Mapping[str, Any], str]] = []
    recorded: list[NewMessage] = []
    keys: dict[int, str] = {}
    for row in rows:
        key = keys[row["id"]] = message_key(campaign.name, row["id"], step=plan.step, run=plan.run)
        if key in plan.resumed:
            # Waiting from an earlier send of this run: the delivery pass resumes it
            # (suppression is checked again at claim time).
            report.pending += 1
            continue
        if flagged:
            if plan.exit is not None and row[_EXITED]:
                report.skipped["exited"] += 1
                continue
            if plan.when is not None and not row[_STEP_OK]:
                report.skipped["step_condition"] += 1
                continue
            row = {k: v for k, v in row.items() if k not in (_EXITED, _STEP_OK)}
        try:
            email = normalize_email(row["email"])
        except ValueError:
            report.skipped["invalid_address"] += 1
            continue
        if in_holdout(campaign.name, row["id"], campaign.holdout):
            report.skipped["holdout"] += 1
            recorded.append(_record_row(plan, row, email, State.HOLDOUT))
            continue
        valid.append((row, email))
    suppressed = _suppression_reasons(conn, [email for _, email in valid], campaign.topic)
    known = existing_keys(conn, (keys[row["id"]] for row, _ in valid))
    capped = _frequency_capped(
        conn,
        settings,
        campaign,
        [
            row["id"]
            for row, email in valid
            if email not in suppressed and keys[row["id"]] not in known
        ],
        now,
    )
    candidates: list[Mapping[str, Any]] = []
    for row, email in valid:
        state = known.get(keys[row["id"]])
        if email in suppressed or state == State.SUPPRESSED:
            report.skipped["suppressed"] += 1
            if state is None:  # recorded once per run, so that the report shows it
                reason = f"suppressed: {suppressed[email]}"
                recorded.append(_record_row(plan, row, email, State.SUPPRESSED, reason))
        elif state == State.FAILED:
            report.skipped["failed_before"] += 1
        elif state == State.HOLDOUT:
            report.skipped["holdout"] += 1
        elif state is not None:
            report.skipped["already_sent"] += 1
        elif row["id"] in capped:
            report.skipped["frequency_cap"] += 1
        else:
            candidates.append(row)
    return candidates, recorded


def _waiting_keys(conn: Connection, plan: _Plan) -> frozenset[str]:
    query = sa.select(messages.c.key).where(
        messages.c.campaign == plan.campaign.name,
        messages.c.state.in_([str(s) for s in (*PENDING, *IN_FLIGHT)]),
    )
    if plan.run is not None:
        query = query.where(messages.c.run == plan.run)
    else:
        query = query.where(messages.c.step == plan.step)
    return frozenset(conn.execute(query).scalars())


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
    transport_factory=None,
    progress: Progress | None = None,
    server_patience: float = 10.0,
) -> SendReport:
    """``campaign retry --unknown``: resend a campaign's ``unknown`` messages, on purpose."""
    from engine.delivery import Delivery, default_transport_factory

    settings = project.settings
    factory = transport_factory or default_transport_factory(settings)
    engine = project.database()
    report = SendReport(campaign=name, kind="retry", dry_run=False)
    report.would_send = requeue_unknown(engine, name)
    done = [0]

    def on_result(_state: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], report.would_send)

    stats = Delivery(
        engine,
        settings,
        campaign=name,
        transport_factory=factory,
        on_result=on_result,
        server_patience=server_patience,
    ).run()
    report.server_down = stats.server_down
    with engine.connect() as conn:
        report.states = state_counts(conn, campaign=name)
    return report
