"""The rendering stage: one renderer for a send, rendering each batch here or in child processes.

Rendering is pure CPU and holds the GIL that the sender threads need. For large
sends the batches go to child processes (spawned, each with its own database
connection), which render them and hand them to the queueing stage
(``engine.queueing``) themselves, so that the bodies never cross back; only what
the report needs returns. Until the first child is warm (about a second: an
interpreter, imports, the templates) this process renders the batches itself
rather than leave the sender threads idle. Either way each batch is rendered
and queued exactly once, by one process.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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


def render_workers(total: int, limit: int | None, workers: int | None) -> int:
    """How many child processes render (0: this process does)."""
    if workers is not None:
        return max(0, workers)
    if total < POOL_THRESHOLD or limit is not None:
        return 0
    # Rendering holds the GIL that the sender threads need: even on two cores
    # one renderer beside this process (outbox and SMTP) measured faster
    # than rendering here (20,000 messages: about 2,000/s against 1,600/s).
    # More renderers only on the cores beyond the first two.
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(4, max(1, cores - 2))


class Renderer:
    """Renders and queues a send's batches, in this process or in ``workers`` children."""

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
    ) -> None:
        self.plan = plan
        self.engine = None if dry_run else engine  # the queueing stage writes on a real send
        self.now = now
        self.clock = clock
        self.out_dir = out_dir
        self.pool: ProcessPoolExecutor | None = None
        self.workers = workers
        self._pending: deque[Future] = deque()
        self._warming = workers > 0
        if workers > 0:
            context = multiprocessing.get_context("spawn")
            args = (
                settings, plan.campaign.name, now, plan.run, plan.step, plan.cycle, clock,
                dry_run, out_dir,
            )  # fmt: skip
            self.pool = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_child, initargs=args
            )

    def submit(self, conn: Connection, batch: Batch) -> Iterator[Queued]:
        """Render and queue ``batch``; yields every batch that is done by now (in order)."""
        pending = self._pending
        local = self.pool is None or bool(self._warming and pending and not pending[0].done())
        if local:
            yield self._render_here(conn, batch)
        else:
            rows = [dict(r) for r in batch.candidates]
            pending.append(self.pool.submit(_render_child, rows, batch.recorded, batch.due))
        while pending and (len(pending) > 2 * self.workers or pending[0].done()):
            yield pending.popleft().result()
            self._warming = False

    def finish(self) -> Iterator[Queued]:
        """The batches still being rendered in the children."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            for future in self._pending:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
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


def _init_child(
    settings: Settings,
    name: str,
    now: datetime,
    run: str | None,
    step: int | None,
    cycle: int,
    clock: Clock,
    dry_run: bool,
    out_dir: Path | None,
) -> None:
    from engine.db import make_engine

    # Ctrl-C and SIGTERM are for the parent, which stops the send and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    plan = prepare_campaign(
        settings, name, now=now, run=run, step=step, sending=not dry_run, cycle=cycle
    )
    _CHILD.update(
        plan=plan,
        engine=make_engine(settings.database_url),
        now=now,
        clock=clock,
        dry_run=dry_run,
        out_dir=out_dir,
    )
    # Load the template now (premailer and all), then keep everything loaded so
    # far out of the garbage collector's sight: rendering allocates a lot, and
    # each full collection would otherwise walk these long-lived objects again.
    with contextlib.suppress(CampaignError):  # it comes back, with its reason, from the batch
        plan.builder.templates.get(plan.template, settings.project.default_locale)
    gc.freeze()


def _render_child(rows: list[dict[str, Any]], recorded, due: dict[int, datetime]) -> Queued:
    plan: PreparedCampaign = _CHILD["plan"]
    engine: Engine = _CHILD["engine"]
    batch = Batch(rows, recorded, due)
    results = []
    if rows:
        with engine.connect() as conn:
            results = plan.builder.render_batch(
                conn, rows, now=_CHILD["now"], template=plan.template, step=plan.step, run=plan.run
            )
    return queue_batch(
        None if _CHILD["dry_run"] else engine,
        plan,
        batch,
        results,
        now=_CHILD["clock"].now(),
        out_dir=_CHILD["out_dir"],
    )
