"""Delivery: a fixed number of sender threads draining the outbox over reused SMTP connections.

Each thread owns one ``SmtpTransport`` (one connection, reused across messages)
and one database connection (an ``OutboxSession`` for its claims, committing
marks and results); all threads share one ``RateLimiter`` (the overall cap) and
one ``_PassState`` (counts, the server's health). Rendering happens elsewhere,
before: a thread only claims ready bytes, sends them and records the result.
Many processes may run this at once on PostgreSQL; on SQLite one process with
several threads (a second process waits its turn on the lock).

Times: due times, ``sent_at`` and attempt times come from the pass's ``clock``
(the command's); leases from the real clock (``engine.clock.real_now``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.engine import Engine

from engine.clock import Clock, real_now
from engine.config import Settings
from engine.errors import DeliveryError
from engine.outbox import Claim, Finish, LeaseLost, State, next_due, recover
from engine.outbox_session import OutboxSession, finish, release
from engine.outcomes import DeliveryResult, Outcome, SmtpReply
from engine.pacing import RateLimiter, ServerBackoff
from engine.return_path import envelope_sender

TransportFactory = Callable[[], "Transport"]  # noqa: F821 - engine.transport.Transport


@dataclass
class DeliveryStats:
    """What one delivery pass did."""

    states: Counter = field(default_factory=Counter)  # state reached → count
    attempts: int = 0
    lease_lost: int = 0
    recovered: Counter = field(default_factory=Counter)
    server_down: str | None = None  # the reason, when the server stopped the pass
    stopped: bool = False  # stop() was asked for (a signal): claims not tried were given back

    @property
    def delivered(self) -> int:
        return self.states.get(str(State.SENT), 0)


def default_transport_factory(settings: Settings) -> TransportFactory:
    from engine.transport import SmtpTransport

    if settings.smtp is None:
        raise DeliveryError(
            "no SMTP server is configured: set CAMPAIGN_SMTP_URL (e.g. smtp://user:pass@host:587?starttls=true)"
        )
    smtp = settings.smtp
    timeout = settings.delivery.timeout.total_seconds()
    # MAIL, RCPT and DATA in one write: one round trip fewer per message
    # (measured: about 10% more messages per second over 4 connections).
    return lambda: SmtpTransport(smtp, timeout=timeout, pipeline_data=True)


def claim_size(settings: Settings) -> int:
    """Small claims: what one connection sends in about a quarter of a lease, 1 to 50."""
    d = settings.delivery
    share = d.rate.per_second / d.connections
    return max(1, min(50, d.batch_size, int(share * d.lease.total_seconds() / 4)))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _PassState:
    """What the sender threads of one pass share: counts, stop and the server's health."""

    def __init__(
        self,
        server_patience: float,
        on_result: Callable[[str], None] | None,
        stop: threading.Event | None,
    ) -> None:
        self.stats = DeliveryStats()
        self.backoff = ServerBackoff(base=0.5, maximum=8.0)
        self.server_patience = server_patience
        self.on_result = on_result
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._down_since: float | None = None

    @property
    def halted(self) -> bool:
        return self.stop.is_set() or self.stats.server_down is not None

    def counted(self, state: State | None, outcome: Outcome) -> None:
        """One attempt recorded (``state`` None: the claim was no longer ours)."""
        with self._lock:
            self.stats.attempts += 1
            if state is None:
                self.stats.lease_lost += 1
            elif outcome is not Outcome.SERVER_DOWN:
                self.stats.states[str(state)] += 1
        if outcome is not Outcome.SERVER_DOWN and self.on_result is not None and state is not None:
            self.on_result(str(state))

    def lost(self) -> None:
        with self._lock:
            self.stats.lease_lost += 1

    def recovered(self, counts: dict[str, int]) -> None:
        with self._lock:
            self.stats.recovered.update({k: v for k, v in counts.items() if v})

    def server_reply(self, result: DeliveryResult, retry_backoff: timedelta) -> timedelta | None:
        """Note how the server answered; for a server that is down, how long its message waits.

        After ``server_patience`` seconds of nothing but that, the pass ends and
        the messages wait the full retry backoff, for the next pass or the worker.
        """
        pause = self.backoff.record(result)
        if result.outcome is not Outcome.SERVER_DOWN:
            if self._down_since is not None:  # (read without the lock: the common case)
                with self._lock:
                    self._down_since = None
            return None
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            if now - self._down_since >= self.server_patience and self.stats.server_down is None:
                self.stats.server_down = _reason(result.reply)
                return retry_backoff
            return timedelta(seconds=pause)


class Delivery:
    """Sender threads for one pass over the outbox (optionally one campaign's run or step).

    ``start()``; the producer calls ``notify()`` after each enqueue and
    ``input_done()`` at the end; ``join()`` returns the stats. A pass ends when
    the input is done and nothing is due within ``wait_retries`` (deferred
    messages due later stay deferred for the next pass or the worker).
    ``stop()`` finishes each message in flight and gives the other claims back.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Clock,
        campaign: str | None = None,
        run: str | None = None,
        step: int | None = None,
        transport_factory: TransportFactory | None = None,
        connections: int | None = None,
        wait_retries: timedelta = timedelta(0),
        on_result: Callable[[str], None] | None = None,
        worker: str | None = None,
        server_patience: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        # ``send NAME`` delivers only that run (or drip step): never another's messages.
        self.scope = {"campaign": campaign, "run": run, "step": step}
        self.factory = transport_factory or default_transport_factory(settings)
        self.connections = connections or settings.delivery.connections
        self.wait_retries = wait_retries
        self.worker = worker or worker_name()
        self.limiter = RateLimiter(settings.delivery.rate)
        # 421, refused connections, TLS/AUTH failures pause every thread (short,
        # doubling pauses, no attempt charged); see _PassState.server_reply.
        # ``stop`` (e.g. set by a signal handler) ends the pass like ``stop()``.
        self.shared = _PassState(server_patience, on_result, stop)
        self._wake = threading.Condition()
        self._input_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._errors_lock = threading.Lock()
        self._claim_size = claim_size(settings)
        self._own: Engine | None = None  # the sender threads' connections (see _own_engine)

    @property
    def stats(self) -> DeliveryStats:
        return self.shared.stats

    # --- control ---------------------------------------------------------------

    def start(self) -> Delivery:
        self._recover()
        self._own = _own_engine(self.engine)
        for number in range(self.connections):
            thread = threading.Thread(
                target=self._run,
                args=(f"{self.worker}/{number}",),
                name=f"sender-{number}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def input_done(self) -> None:
        self._input_done.set()
        self.notify()

    def stop(self) -> None:
        """Finish the messages in flight, give every other claim back, end the pass."""
        self.shared.stop.set()
        self.input_done()

    def join(self) -> DeliveryStats:
        self.input_done()
        for thread in self._threads:
            thread.join()
        if self._own is not None:
            self._own.dispose()
            self._own = None
        if self._errors:
            raise self._errors[0]
        self.stats.stopped = self.shared.stop.is_set()
        return self.stats

    def run(self) -> DeliveryStats:
        return self.start().join()

    # --- the sender threads ------------------------------------------------------

    def _recover(self) -> None:
        self.shared.recovered(recover(self.engine, now=self.clock.now(), lease_now=real_now()))

    def _run(self, worker: str) -> None:
        try:
            assert self._own is not None
            with self._own.connect() as conn:
                sender = _Sender(self, OutboxSession(conn))
                try:
                    self._loop(sender, worker)
                finally:
                    sender.close()
        except BaseException as exc:  # a bug or the database going away: surface it in join()
            with self._errors_lock:
                self._errors.append(exc)
            self.shared.stop.set()
            self.notify()

    def _loop(self, sender: _Sender, worker: str) -> None:
        shared = self.shared
        while not shared.halted:
            claims = sender.outbox.claim(
                worker=worker,
                limit=self._claim_size,
                lease=self.settings.delivery.lease,
                now=self.clock.now(),
                lease_now=real_now(),
                **self.scope,
            )
            if not claims:
                sender.flush()
                if self._idle():
                    return
                continue
            index = 0
            try:
                for index, item in enumerate(claims):
                    # Checked after the waits too: the server may have been declared
                    # down (or a stop asked for) while this thread slept in them.
                    shared.backoff.wait()
                    self.limiter.acquire()
                    if shared.halted:
                        sender.flush()
                        now = self.clock.now()
                        later = None
                        if shared.stats.server_down:
                            later = now + self.settings.delivery.retry_backoff
                        sender.outbox.release(claims[index:], now=now, not_before=later)
                        break
                    sender.send(item)
            except BaseException:
                self._rescue(sender, claims[index:])
                raise
        sender.flush()

    def _rescue(self, sender: _Sender, untried: list[Claim]) -> None:
        """After an error in this thread: record its held 250, give back what it never tried.

        On a fresh pooled connection: the thread's own session may be what failed.
        Without this, the claims sat in ``sending`` until their lease expired and
        the held success became ``unknown``. Best effort: if the database is gone,
        the leases still recover everything later.
        """
        held, sender.held = sender.held, None
        settings = self.settings.delivery
        with contextlib.suppress(Exception):
            if held is not None:
                state = finish(
                    self.engine,
                    held[0],
                    held[1],
                    max_attempts=settings.max_attempts,
                    retry_backoff=settings.retry_backoff,
                    now=self.clock.now(),
                )
                self.shared.counted(state, held[1].outcome)
        with contextlib.suppress(Exception):
            # Only rows still in ``sending`` with our token go back: a message
            # whose committing mark was written stays there (unknown, if so).
            release(self.engine, untried, now=self.clock.now())

    def _idle(self) -> bool:
        """Nothing to claim: True when this thread should end, else after waiting a little."""
        if self._input_done.is_set():
            self._recover()
            due = next_due(self.engine, **self.scope)
            now = self.clock.now()
            pause = self.shared.backoff.remaining()
            horizon = max(self.wait_retries, timedelta(seconds=pause + 0.5 if pause else 0))
            if due is None or due > now + horizon:
                return True
            delay = max(0.01, min(1.0, (due - now).total_seconds()))
        else:
            delay = 0.2
        with self._wake:
            self._wake.wait(delay)
        return self.shared.halted


class _Sender:
    """One sender thread's connection and its one not-yet-recorded success.

    A 250 is recorded in the same transaction that marks the thread's next
    message ``committing`` (or at the latest before the thread claims or waits),
    so a thread never has more than one message in ``committing``: a crash
    leaves at most one ``unknown`` per connection.
    """

    def __init__(self, delivery: Delivery, outbox: OutboxSession) -> None:
        self.outbox = outbox
        self.shared = delivery.shared
        self.clock = delivery.clock
        self.factory = delivery.factory
        self.notify = delivery.notify
        self.settings = delivery.settings
        self.policy = delivery.settings.delivery
        self.transport = None
        self.held: tuple[Claim, Finish] | None = None

    def flush(self) -> None:
        if self.held is None:
            return
        item, result = self.held
        self.held = None
        state = self.outbox.finish(
            item,
            result,
            max_attempts=self.policy.max_attempts,
            retry_backoff=self.policy.retry_backoff,
            now=self.clock.now(),
        )
        self.shared.counted(state, result.outcome)

    def close(self) -> None:
        self.hang_up()
        self.outbox.close()

    def hang_up(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def send(self, item: Claim) -> None:
        """Send one claimed message and record (or hold) its result."""
        policy = self.policy

        def on_commit() -> None:
            held, self.held = self.held, None
            try:
                state, ours = self.outbox.finish_and_commit(
                    held,
                    item,
                    max_attempts=policy.max_attempts,
                    retry_backoff=policy.retry_backoff,
                    lease=policy.lease,
                    now=self.clock.now(),
                    lease_now=real_now(),
                )
            except BaseException:
                self.held = held  # rolled back: still to be recorded (see Delivery._rescue)
                raise
            if held is not None:
                self.shared.counted(state, held[1].outcome)
            if not ours:
                raise LeaseLost(item.key)

        if self.transport is None:
            self.transport = self.factory()
        # A VERP return path (``[delivery] return_path``) names the message for bounces.
        sender = envelope_sender(self.settings, item.id) or item.sender
        try:
            result = self.transport.send(sender, item.email, item.data, on_commit=on_commit)
        except LeaseLost:
            # Another worker owns the message now. The transport reset the SMTP
            # transaction before DATA, so nothing was sent.
            self.shared.lost()
            return
        reply = result.reply
        record = Finish(
            result.outcome,
            reply.code,
            reply.enhanced,
            reply.text or "",
            reply.queue_id,
            at=self.clock.now(),
        )
        server_backoff = self.shared.server_reply(result, policy.retry_backoff)
        if result.outcome is Outcome.SENT and self.held is None:
            self.held = (item, record)  # recorded with the next message's committing mark
            return
        self.flush()
        state = self.outbox.finish(
            item,
            record,
            max_attempts=policy.max_attempts,
            retry_backoff=policy.retry_backoff,
            server_backoff=server_backoff,
            now=record.at,
        )
        self.shared.counted(state, result.outcome)
        if result.outcome is Outcome.SERVER_DOWN:
            self.hang_up()
            self.notify()


def _own_engine(engine: Engine) -> Engine:
    """An engine like ``engine`` but without a pool, for the sender threads' connections."""
    # Each sender keeps its connection for the whole pass (no checkout per
    # transaction); with many connections that must not exhaust the pool that
    # the rest of the process uses.
    from sqlalchemy.pool import NullPool

    from engine.db import make_engine

    return make_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)


def _reason(reply: SmtpReply) -> str:
    code = f"{reply.code} " if reply.code else ""
    return f"{code}{(reply.text or '').strip()}".strip() or "the server is unavailable"


def deliver(
    engine: Engine,
    settings: Settings,
    *,
    clock: Clock,
    campaign: str | None = None,
    transport_factory: TransportFactory | None = None,
    wait_retries: timedelta = timedelta(0),
    on_result: Callable[[str], None] | None = None,
    server_patience: float = 10.0,
) -> DeliveryStats:
    """One delivery pass: send everything due now (and retries due within ``wait_retries``)."""
    return Delivery(
        engine,
        settings,
        clock=clock,
        campaign=campaign,
        transport_factory=transport_factory,
        wait_retries=wait_retries,
        on_result=on_result,
        server_patience=server_patience,
    ).run()
