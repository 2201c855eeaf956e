"""APScheduler 3 (the one module that runs it): the worker's interval and cron jobs, in UTC.

No job store is shared between processes (APScheduler cannot do that safely):
each worker schedules its own jobs in memory, and the database (unique keys,
``FOR UPDATE SKIP LOCKED``, ``schedule_fires``) is what keeps several workers
from doing anything twice. The job options are chosen, not left at defaults
(which drop a run more than one second late):

- ``coalesce=True``: runs missed while the process was busy or asleep collapse
  into one; a tick catches up by itself, so running it once per missed minute
  would only repeat work.
- ``max_instances=1``: a slow tick never overlaps the next one in the same process.
- ``misfire_grace_time``: ``None`` for ticks (run however late: idempotent),
  ``[scheduler] broadcast_grace`` for a broadcast's cron job, the same limit
  the tick applies to a missed fire time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine.clock import real_now


class Scheduler:
    """A background scheduler in UTC with deliberate job options."""

    def __init__(self) -> None:
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def every(self, job_id: str, interval: timedelta, func: Callable[[], None]) -> None:
        """Run ``func`` now and then every ``interval``."""
        self._scheduler.add_job(
            func,
            IntervalTrigger(seconds=max(1.0, interval.total_seconds()), timezone=UTC),
            id=job_id,
            next_run_time=real_now().replace(tzinfo=UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )

    def cron(
        self, job_id: str, expr: str, timezone: str, grace: timedelta, func: Callable[[], None]
    ) -> None:
        """Run ``func`` at each fire time of cron ``expr`` in ``timezone``, at most ``grace`` late."""
        self._scheduler.add_job(
            func,
            CronTrigger.from_crontab(expr, timezone=timezone),
            id=job_id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(grace.total_seconds())),
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop scheduling; a job already running finishes on its own thread."""
        self._scheduler.shutdown(wait=False)
