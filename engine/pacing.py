"""Pacing: the sending rate shared by every connection, and the pause after a server goes down.

Both read the real monotonic clock (pacing is process liveness, not a campaign rule).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine.outcomes import DeliveryResult, Outcome
from engine.times import Rate


class RateLimiter:
    """The overall sending cap shared by every connection of a process (thread-safe).

    Generic cell rate algorithm: each ``acquire()`` reserves the next free slot
    under a lock and sleeps outside it, so waiting threads queue up fairly and a
    late wake-up does not lose throughput. ``burst`` slots may be used at once.
    """

    def __init__(
        self,
        rate: Rate,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        burst: int = 1,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.interval = 1.0 / rate.per_second
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None  # theoretical arrival time of the next message

    def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = now if self._next is None else max(self._next, now)
            self._next = slot + self.interval
            wait = slot - self._tolerance - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


class ServerBackoff:
    """Pause for the whole server after consecutive SERVER_DOWN results (thread-safe).

    ``record(result)`` after every send; SERVER_DOWN number n pauses the server
    ``base * 2**(n-1)`` seconds (at most ``maximum``), anything else resets it.
    Before sending, ``remaining()`` says how long to hold off (or ``wait()``).
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        maximum: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.failures = 0
        self._until = 0.0

    def record(self, result: DeliveryResult | Outcome) -> float:
        """Note one result; returns the pause now in force (seconds)."""
        outcome = result.outcome if isinstance(result, DeliveryResult) else result
        with self._lock:
            now = self._clock()
            if outcome is Outcome.SERVER_DOWN:
                self.failures += 1
                pause = min(self.maximum, self.base * 2 ** (self.failures - 1))
                self._until = max(self._until, now + pause)
            else:
                self.failures = 0
                self._until = 0.0
            return max(0.0, self._until - now)

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - self._clock())

    def wait(self) -> float:
        """Sleep out the current pause; returns the seconds slept."""
        pause = self.remaining()
        if pause > 0:
            self._sleep(pause)
        return pause
