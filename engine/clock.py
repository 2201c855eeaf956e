"""The clock a command runs on: the real time, or the fixed time of ``--now``.

Every rule (segment windows, caps, delays, send windows, due times) and every
timestamp a rule compares with (``created_at``, ``sent_at``, attempt times,
entry times) comes from the ``Clock`` a command was given. Only process
liveness (leases, timeouts, rate pacing) reads the real clock, through
``engine.times.utcnow`` and ``time.monotonic``; no other module calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from engine.times import utcnow


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time of this clock, as naive UTC."""
        ...


class SystemClock:
    """The real time (a long-running worker, a command without ``--now``)."""

    def now(self) -> datetime:
        return utcnow()

    def __repr__(self) -> str:
        return "SystemClock()"


@dataclass
class FixedClock:
    """A clock that stands still at ``at`` until ``advance`` moves it (``--now``, simulations)."""

    at: datetime

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> datetime:
        self.at = self.at + delta
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at


def clock_for(now: datetime | None) -> Clock:
    """``--now`` given: a fixed clock at that time; not given: the real clock."""
    return SystemClock() if now is None else FixedClock(now)


def real_now() -> datetime:
    """The real time as naive UTC, for leases and pacing only (whatever clock a command runs on).

    A lease is read by other processes and machines, so it must be real time even
    when the command's clock is fixed by ``--now``.
    """
    return utcnow()
