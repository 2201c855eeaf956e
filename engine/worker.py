"""``campaign worker``: drip ticks and scheduled broadcasts on APScheduler, and the delivery loop.

The scheduler's jobs queue messages (``tick(..., deliver=False)``); one
long-running ``Delivery`` drains the outbox meanwhile, woken when a tick queues
something. Any number of workers may share one PostgreSQL database: every tick
is idempotent (unique keys) and delivery claims rows with ``FOR UPDATE SKIP
LOCKED``. SIGTERM and SIGINT stop the scheduling, let each sender thread finish
the message it holds, give the other claims back, and return 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter

from engine.clock import SystemClock, real_now
from engine.delivery import Delivery, default_transport_factory
from engine.drips import tick
from engine.errors import CampaignError
from engine.outbox import recover
from engine.scheduler import Scheduler

log = logging.getLogger("campaign.worker")
RESTART_PAUSE = 5.0  # seconds before a new delivery pass after the server went away


class Worker:
    """One worker process: its scheduler, its delivery loop, and how it stops."""

    def __init__(self, project, *, transport_factory=None) -> None:
        self.project = project
        self.settings = project.settings
        self.engine = project.database()
        self.factory = transport_factory or default_transport_factory(self.settings)
        self.clock = SystemClock()  # a worker runs on the real time
        self.stopping = threading.Event()
        self._tick_lock = threading.Lock()
        self._delivered: Counter = Counter()
        self._counts_lock = threading.Lock()
        self._delivery: Delivery | None = None

    def tick(self, campaign: str | None = None) -> None:
        """One tick (all campaigns, or one scheduled broadcast), logged in one line."""
        if self.stopping.is_set():
            return
        with self._tick_lock:
            try:
                # The long delivery pass does not: leases of dead workers.
                recover(self.engine, now=self.clock.now(), lease_now=real_now())
                report = tick(
                    self.project,
                    clock=self.clock,
                    campaign=campaign,
                    deliver=False,
                    stop=self.stopping,  # SIGTERM mid-tick: stop at the next batch
                )
            except CampaignError as exc:  # a campaign file broke: say so, keep delivering
                log.error("tick failed: %s", exc)
                return
            except Exception:
                log.exception("tick failed")
                return
        with self._counts_lock:
            report.delivered, self._delivered = self._delivered, Counter()
        log.info(report.summary())
        if report.queued and self._delivery is not None:
            self._delivery.notify()

    def _on_result(self, state: str) -> None:
        with self._counts_lock:
            self._delivered[state] += 1

    def stop(self, *_args) -> None:
        """Stop: finish the messages in flight, give the other claims back."""
        self.stopping.set()
        if self._delivery is not None:
            self._delivery.stop()

    def run(self, *, once: bool = False) -> int:
        """Run until ``stop`` (or one tick and one delivery pass with ``once``); returns 0."""
        if once:
            self.tick()
            stats = Delivery(
                self.engine,
                self.settings,
                clock=self.clock,
                transport_factory=self.factory,
                on_result=self._on_result,
            ).run()
            log.info("delivered: %s", dict(stats.states))
            return 0
        scheduler = Scheduler()
        scheduler.every("drip-tick", self.settings.scheduler.tick, self.tick)
        for name, campaign in _scheduled(self.project).items():
            scheduler.cron(
                f"broadcast:{name}",
                campaign.schedule,
                campaign.timezone,
                self.settings.scheduler.broadcast_grace,
                lambda name=name: self.tick(name),
            )
        scheduler.start()
        log.info("worker started: tick every %s", self.settings.scheduler.tick)
        try:
            while not self.stopping.is_set():
                self._delivery = Delivery(
                    self.engine,
                    self.settings,
                    clock=self.clock,
                    transport_factory=self.factory,
                    on_result=self._on_result,
                )
                if self.stopping.is_set():
                    break
                stats = self._delivery.start().join()  # runs until stop() or the server goes away
                if stats.server_down and not self.stopping.is_set():
                    log.warning(
                        "SMTP server unavailable (%s): retrying delivery", stats.server_down
                    )
                    self.stopping.wait(RESTART_PAUSE)
        finally:
            scheduler.shutdown()
            with self._tick_lock:  # a tick in progress finishes its statements first
                pass
        log.info("worker stopped")
        return 0


def _scheduled(project) -> dict:
    from engine.campaigns import load_campaigns
    from engine.segments import load_segments

    campaigns = load_campaigns(project.settings, load_segments(project.settings.segments_dir))
    return {n: c for n, c in campaigns.items() if c.kind == "broadcast" and c.schedule}


def run_worker(project, *, once: bool = False, transport_factory=None) -> int:
    """``campaign worker``: run until SIGTERM/SIGINT (handled here, in the main thread)."""
    worker = Worker(project, transport_factory=transport_factory)
    previous = {sig: signal.signal(sig, worker.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run(once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
