"""Send windows per merchant time zone: Python per zone, SQL per merchant (engine.windows)."""

from __future__ import annotations

from datetime import datetime, time

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.campaigns import SendWindow
from engine.db import write_transaction
from engine.models import merchants
from engine.windows import is_open_in, next_opening, opening_in, present_zones, window_open

WEEKDAYS_9_17 = SendWindow(days=frozenset(range(5)), start=time(9), end=time(17))
ZONES = {"Asia/Jakarta": 7, "Asia/Makassar": 8, "Asia/Jayapura": 9}  # WIB, WITA, WIT


def _add(engine, zones: list[str]) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            merchants.insert(),
            [
                {"external_id": f"m{i}", "email": f"m{i}@example.id", "timezone": z}
                for i, z in enumerate(zones, 1)
            ],
        )


def _open_by_zone(engine, window, now) -> dict[str, bool]:
    with engine.connect() as conn:
        zones = present_zones(conn)
        rows = conn.execute(
            sa.select(merchants.c.timezone, sa.case((window_open(window, now, zones), 1), else_=0))
        ).all()
    return {z: bool(o) for z, o in rows}


def test_each_indonesian_zone_opens_at_its_own_nine(engine):
    _add(engine, list(ZONES))
    # Monday 2026-12-07 01:30 UTC = 08:30 WIB, 09:30 WITA, 10:30 WIT.
    now = datetime(2026, 12, 7, 1, 30)
    assert _open_by_zone(engine, WEEKDAYS_9_17, now) == {
        "Asia/Jakarta": False,
        "Asia/Makassar": True,
        "Asia/Jayapura": True,
    }
    # 08:30 UTC = 15:30 WIB, 16:30 WITA, 17:30 WIT (closed: the end is exclusive).
    assert _open_by_zone(engine, WEEKDAYS_9_17, datetime(2026, 12, 7, 8, 30)) == {
        "Asia/Jakarta": True,
        "Asia/Makassar": True,
        "Asia/Jayapura": False,
    }


def test_next_opening_per_zone_in_sql(engine):
    _add(engine, [*ZONES, "Not/AZone"])
    now = datetime(2026, 12, 7, 1, 30)  # Monday 08:30 WIB
    with engine.connect() as conn:
        zones = present_zones(conn)
        got = dict(
            conn.execute(
                sa.select(merchants.c.timezone, next_opening(WEEKDAYS_9_17, now, zones))
            ).all()
        )
    assert got["Asia/Jakarta"] == datetime(2026, 12, 7, 2, 0)  # 09:00 WIB
    assert got["Asia/Makassar"] == now  # open now
    assert got["Asia/Jayapura"] == now
    assert got["Not/AZone"] == datetime(2026, 12, 7, 2, 0)  # read as the project's zone


def test_weekend_waits_for_monday_in_each_zone(engine):
    _add(engine, list(ZONES))
    saturday_noon_wib = datetime(2026, 12, 12, 5, 0)
    assert not any(_open_by_zone(engine, WEEKDAYS_9_17, saturday_noon_wib).values())
    for zone, offset in ZONES.items():
        assert opening_in(WEEKDAYS_9_17, saturday_noon_wib, zone) == datetime(
            2026, 12, 14, 9 - offset, 0
        )


def test_after_hours_waits_for_the_next_morning():
    # Tuesday 18:00 WITA → Wednesday 09:00 WITA (01:00 UTC).
    assert opening_in(WEEKDAYS_9_17, datetime(2026, 12, 8, 10, 0), "Asia/Makassar") == datetime(
        2026, 12, 9, 1, 0
    )
    # Friday 17:00 WIT → Monday 09:00 WIT.
    assert opening_in(WEEKDAYS_9_17, datetime(2026, 12, 11, 8, 0), "Asia/Jayapura") == datetime(
        2026, 12, 14, 0, 0
    )


def test_no_window_is_always_open(engine):
    _add(engine, ["Asia/Jakarta"])
    assert _open_by_zone(engine, None, datetime(2026, 12, 12, 20, 0)) == {"Asia/Jakarta": True}


@settings(max_examples=200, deadline=None)
@given(
    at=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31)),
    zone=st.sampled_from(list(ZONES)),
    days=st.frozensets(st.integers(0, 6), min_size=1),
    hours=st.tuples(st.integers(0, 22), st.integers(1, 23)).filter(lambda h: h[0] < h[1]),
)
def test_next_opening_is_open_and_nothing_earlier_is(at, zone, days, hours):
    window = SendWindow(days=days, start=time(hours[0]), end=time(hours[1]))
    opening = opening_in(window, at, zone)
    assert opening >= at
    assert is_open_in(window, opening, zone)
    # Closed one minute before it (unless it is ``at`` itself, open already).
    if opening > at:
        from datetime import timedelta

        before = max(at, opening - timedelta(minutes=1))
        assert before == at or not is_open_in(window, before, zone)
