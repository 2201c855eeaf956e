"""Durations, rates and timestamps as users write them, and the clock.

All timestamps inside the engine are naive ``datetime`` values in UTC: that is
how both SQLite and PostgreSQL store them, and it keeps comparisons exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, units: str = "smhdw") -> timedelta:
    """``"5m"`` → 5 minutes. ``units`` limits which suffixes are allowed.

    Raises ``ValueError`` with a sentence naming the valid forms.
    """
    match = _DURATION.match(str(text))
    if not match or match.group(2) not in units:
        forms = ", ".join(f"N{u}" for u in units)
        raise ValueError(f"{text!r} is not a duration (use {forms}, e.g. 30{units[-1]})")
    number, unit = int(match.group(1)), match.group(2)
    try:
        return timedelta(**{_UNITS[unit]: number})
    except OverflowError:
        raise ValueError(f"{text!r} is too long to be a duration") from None


@dataclass(frozen=True)
class Rate:
    """A number of events per period, such as ``50/s``."""

    count: int
    per: timedelta

    @property
    def per_second(self) -> float:
        return self.count / self.per.total_seconds()

    def __str__(self) -> str:
        seconds = self.per.total_seconds()
        unit = {1: "s", 60: "m", 3600: "h", 86400: "d"}.get(int(seconds))
        return f"{self.count}/{unit}" if unit else f"{self.count}/{int(seconds)}s"


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhdw])\s*$")


def parse_rate(text: str, units: str = "smh") -> Rate:
    """``"50/s"`` → Rate(50, 1 s); ``"3/7d"`` → Rate(3, 7 days)."""
    match = _RATE.match(str(text))
    if not match or match.group(3) not in units:
        forms = ", ".join(f"N/{u}" for u in units)
        raise ValueError(f"{text!r} is not a rate (use {forms}, e.g. 50/{units[0]})")
    count = int(match.group(1))
    span = int(match.group(2) or 1)
    if count <= 0 or span <= 0:
        raise ValueError(f"{text!r} is not a rate (both numbers must be above zero)")
    return Rate(count, timedelta(**{_UNITS[match.group(3)]: span}))


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 text → naive UTC. Without an offset the time is taken as UTC.

    A bare date means midnight UTC. Raises ``ValueError`` when unparsable.
    """
    value = datetime.fromisoformat(str(text).strip())
    return to_utc(value)


def to_utc(value: datetime) -> datetime:
    """Any datetime → naive UTC (naive input is taken as UTC already)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def utcnow() -> datetime:
    """The real clock, as naive UTC. Code takes ``now`` as a parameter instead of calling this."""
    return datetime.now(UTC).replace(tzinfo=None)
