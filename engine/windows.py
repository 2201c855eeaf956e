"""Send windows in each merchant's own time zone, as SQL on ``merchants.timezone``.

A window is open or closed for a whole time zone at once, so for one clock time
it is computed in Python once per distinct time zone present (a handful: WIB,
WITA, WIT), and the database gets a ``timezone IN (...)`` list or a ``CASE``
over those zones: set-based, the same query whatever the number of merchants.
A time zone the database holds that is not a valid IANA name is read as the
project's time zone (``default_zone``), so a typo delays nobody's mail forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.campaigns import SendWindow
from engine.models import merchants

DEFAULT_ZONE = "Asia/Jakarta"


def present_zones(conn: Connection) -> list[str]:
    """The distinct time zones of the merchants (one query)."""
    return sorted(
        z for z in conn.execute(sa.select(merchants.c.timezone).distinct()).scalars() if z
    )


def valid_zone(zone: str, default_zone: str = DEFAULT_ZONE) -> str:
    """``zone`` when it is an IANA time zone, else ``default_zone``."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return default_zone
    return zone


def is_open_in(window: SendWindow | None, now: datetime, zone: str) -> bool:
    """Whether ``window`` is open at ``now`` (naive UTC) in time zone ``zone``."""
    if window is None:
        return True
    local = now.replace(tzinfo=UTC).astimezone(ZoneInfo(zone)).replace(tzinfo=None)
    return window.is_open(local)


def opening_in(window: SendWindow | None, now: datetime, zone: str) -> datetime:
    """The window's next opening at or after ``now`` in ``zone`` (naive UTC; ``now`` if open)."""
    if window is None:
        return now
    return window.next_opening(now, zone)


def window_open(
    window: SendWindow | None,
    now: datetime,
    zones: Iterable[str],
    *,
    default_zone: str = DEFAULT_ZONE,
) -> sa.ColumnElement[bool]:
    """A condition on ``merchants``: the window is open at ``now`` in the merchant's time zone."""
    if window is None:
        return sa.true()
    zones = sorted(set(zones))
    open_zones = [z for z in zones if is_open_in(window, now, valid_zone(z, default_zone))]
    if not open_zones:
        return sa.false()
    return merchants.c.timezone.in_(open_zones)


def next_opening(
    window: SendWindow | None,
    now: datetime,
    zones: Iterable[str],
    *,
    default_zone: str = DEFAULT_ZONE,
) -> sa.ColumnElement[datetime]:
    """A ``CASE`` on ``merchants.timezone``: when the window next opens for the merchant (UTC)."""
    if window is None:
        return sa.literal(now, sa.DateTime())
    zones = sorted(set(zones))
    fallback = opening_in(window, now, valid_zone(default_zone))
    if not zones:
        return sa.literal(fallback, sa.DateTime())
    whens = [
        (merchants.c.timezone == z, opening_in(window, now, valid_zone(z, default_zone)))
        for z in zones
    ]
    return sa.case(*whens, else_=sa.literal(fallback, sa.DateTime()))
