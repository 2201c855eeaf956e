"""The rendering stage: one renderer for a send, rendering each batch here or in child processes.

Rendering is pure CPU and holds the GIL that the sender threads need. For large
sends the batches go to child processes (spawned, each with its own database
connection), which render them and hand them to the queueing stage
(``engine.queueing``) themselves, so that the bodies never cross back; only what
the report needs returns. Until the first child is warm (about a second: an
interpreter, imports, the templates) this process renders the batches itself
rather than leave the sender threads idle. Either way each batch is rendered
and queued exactly once, by one process. A drip tick shares one pool between
all its sends (``shared_render_pool``), so the children start once per tick.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from engine.audience import Batch
from engine.clock import Clock
from engine.config import Settings
from engine.errors import CampaignError
from engine.preparation import PreparedCampaign, prepare_campaign
from engine.queueing import Queued, queue_batch

POOL_THRESHOLD = 5000  # audience size from which child processes pay for their start-up


def render_workers(
    total: int, limit: int | None, workers: int | None, *, delivering: bool = True
) -> int:
    """How many child processes render (0: this process does)."""
    if workers is not None:
        return max(0, workers)
    if total < POOL_THRESHOLD or limit is not None:
        return 0
    cores = os.cpu_count() or 1
    if not delivering:
        # Queueing only (a drip tick, a dry run): this process just reads the
        # audience, so every core renders.
        return min(4, cores) if cores >= 2 else 0
    # Rendering holds the GIL that the sender threads need: even on two cores
    # one renderer beside this process (outbox and SMTP) measured faster
    # than rendering here (20,000 messages: about 2,000/s against 1,600/s).
    # More renderers only on the cores beyond the first two.
    return 0 if cores < 2 else min(4, max(1, cores - 2))


class RenderPool:
    """Child processes that render, shared by the sends of one tick (or owned by one send).

    A drip tick sends each due step of each drip: one pool for all of them spares
    starting (and importing everything in) new children for every step. The
    children are started on the first batch only, so a tick with nothing large
    to render starts none. Each batch names the send it belongs to (``RenderJob``);
    a child prepares each send once.
    """

    def __init__(self, settings: Settings, workers: int) -> None:
        self.workers = workers
        self._settings = settings
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, job: RenderJob, batch: Batch) -> Future:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_child,
                initargs=(self._settings,),
            )
        rows = [dict(r) for r in batch.candidates]
        return self._executor.submit(_render_child, job, rows, batch.recorded, batch.due)

    @property
    def started(self) -> bool:
        """Whether the children run (from the first batch until ``close``)."""
        return self._executor is not None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


@contextlib.contextmanager
def shared_render_pool(settings: Settings) -> Iterator[RenderPool]:
    """A pool for several sends that only queue (a tick): every core renders, started on demand."""
    pool = RenderPool(settings, render_workers(POOL_THRESHOLD, None, None, delivering=False))
    try:
        yield pool
    finally:
        pool.close()


@dataclass(frozen=True)
class RenderJob:
    """Which send a batch belongs to: what a child needs to prepare the campaign as the parent did."""

    name: str
    now: datetime
    run: str | None
    step: int | None
    cycle: int
    clock: Clock = field(compare=False)  # not part of the key: each batch brings its own copy
    dry_run: bool
    out_dir: Path | None


class Renderer:
    """Renders and queues a send's batches, in this process or in child processes.

    ``pool`` (a tick's) is used as it is and left open; otherwise a send that
    wants ``workers`` children starts its own pool and closes it at the end.
    """

    def __init__(
        self,
        settings: Settings,
        plan: PreparedCampaign,
        *,
        engine: Engine,
        now: datetime,
        clock: Clock,
        dry_run: bool,
        out_dir: Path | None,
        workers: int,
        pool: RenderPool | None = None,
    ) -> None:
        self.plan = plan
        self.engine = None if dry_run else engine  # the queueing stage writes on a real send
        self.now = now
        self.clock = clock
        self.out_dir = out_dir
        if pool is not None and pool.workers == 0:
            pool = None  # a shared pool on one core: no children at all
        self._own_pool = workers > 0 and pool is None
        self.pool: RenderPool | None = None
        if workers > 0:
            self.pool = pool if pool is not None else RenderPool(settings, workers)
        self.workers = self.pool.workers if self.pool is not None else 0
        self.job = RenderJob(
            plan.campaign.name, now, plan.run, plan.step, plan.cycle, clock, dry_run, out_dir
        )
        self._pending: deque[Future] = deque()
        self._warming = self.pool is not None

    def submit(self, conn: Connection, batch: Batch) -> Iterator[Queued]:
        """Render and queue ``batch``; yields every batch that is done by now (in order)."""
        pending = self._pending
        local = self.pool is None or bool(self._warming and pending and not pending[0].done())
        if local:
            yield self._render_here(conn, batch)
        else:
            pending.append(self.pool.submit(self.job, batch))
        while pending and (len(pending) > 2 * self.workers or pending[0].done()):
            yield pending.popleft().result()
            self._warming = False

    def finish(self) -> Iterator[Queued]:
        """The batches still being rendered in the children."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        if self._pending and not self._own_pool:
            # A shared pool goes on; wait for what already runs so that nothing
            # of this send is still being queued after it returned.
            wait(self._pending)
        self._pending.clear()
        if self._own_pool and self.pool is not None:
            self.pool.close()
        self.pool = None

    def _render_here(self, conn: Connection, batch: Batch) -> Queued:
        plan = self.plan
        results = (
            plan.builder.render_batch(
                conn,
                batch.candidates,
                now=self.now,
                template=plan.template,
                step=plan.step,
                run=plan.run,
            )
            if batch.candidates
            else []
        )
        return queue_batch(
            self.engine, plan, batch, results, now=self.clock.now(), out_dir=self.out_dir
        )


# --- the child processes -------------------------------------------------------------

_CHILD: dict[str, Any] = {}


def _init_child(settings: Settings) -> None:
    from engine.db import make_engine

    # Ctrl-C and SIGTERM are for the parent, which stops the send and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _CHILD.update(settings=settings, engine=make_engine(settings.database_url), plans={})


def _child_plan(job: RenderJob) -> PreparedCampaign:
    plans: dict[RenderJob, PreparedCampaign] = _CHILD["plans"]
    plan = plans.get(job)
    if plan is None:
        settings: Settings = _CHILD["settings"]
        plan = plans[job] = prepare_campaign(
            settings,
            job.name,
            now=job.now,
            run=job.run,
            step=job.step,
            sending=not job.dry_run,
            cycle=job.cycle,
        )
        # Load the template now (premailer and all), then keep everything loaded so
        # far out of the garbage collector's sight: rendering allocates a lot, and
        # each full collection would otherwise walk these long-lived objects again.
        with contextlib.suppress(CampaignError):  # it comes back, with its reason, from the batch
            plan.builder.templates.get(plan.template, settings.project.default_locale)
        gc.freeze()
    return plan


def _render_child(
    job: RenderJob, rows: list[dict[str, Any]], recorded, due: dict[int, datetime]
) -> Queued:
    plan = _child_plan(job)
    engine: Engine = _CHILD["engine"]
    batch = Batch(rows, recorded, due)
    results = []
    if rows:
        with engine.connect() as conn:
            results = plan.builder.render_batch(
                conn, rows, now=job.now, template=plan.template, step=plan.step, run=plan.run
            )
    return queue_batch(
        None if job.dry_run else engine,
        plan,
        batch,
        results,
        now=job.clock.now(),
        out_dir=job.out_dir,
    )
