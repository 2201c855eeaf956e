"""Send windows on broadcasts sent by hand (SPEC 6): a message due outside the window is
queued for the next opening in the merchant's own time zone, and goes then.

On SQLite and PostgreSQL, on a fixed clock.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest
import sqlalchemy as sa
from conftest import write_files

from engine.config import DeliverySettings
from engine.models import merchants, messages
from engine.sending import send_campaign
from engine.times import parse_rate

FILES = {
    "segments/everyone.yaml": "description: everyone\nrules:\n  field: status\n  eq: active\n",
    "campaigns/promo.yaml": (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: news/hello\n'
        'send_window: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00"}\n'
    ),
    "templates/news/hello.html": (
        '---\nsubject: "Halo {{ merchant.store_name }}"\n---\n'
        '<p>Halo</p><a href="{{ unsubscribe_url }}">berhenti</a>\n'
    ),
}
ZONES = {1: "Asia/Jakarta", 2: "Asia/Makassar", 3: "Asia/Jayapura"}  # WIB, WITA, WIT
# Sunday 6 December 2026, 20:00 UTC: Monday 03:00 WIB, 04:00 WITA, 05:00 WIT.
SUNDAY_NIGHT = datetime(2026, 12, 6, 20, 0)
# Monday 09:00 local, in UTC.
OPENS = {
    1: datetime(2026, 12, 7, 2, 0),
    2: datetime(2026, 12, 7, 1, 0),
    3: datetime(2026, 12, 7, 0, 0),
}


@pytest.fixture
def windowed(project, project_dir, smtp_server):
    write_files(project_dir, FILES)
    with project.engine.begin() as conn:
        conn.execute(
            merchants.insert(),
            [
                {"id": i, "external_id": f"m{i}", "email": f"m{i}@example.id",
                 "store_name": f"Toko {i}", "timezone": zone}
                for i, zone in ZONES.items()
            ],
        )  # fmt: skip
    project.settings = dataclasses.replace(
        project.settings,
        smtp=smtp_server.settings(),
        delivery=DeliverySettings(connections=2, rate=parse_rate("2000/s")),
    )
    return project


def due_times(project) -> dict[int, datetime]:
    with project.engine.connect() as conn:
        rows = conn.execute(sa.select(messages.c.merchant_id, messages.c.next_attempt_at))
        return dict(rows.all())


def test_outside_the_window_messages_wait_for_each_merchants_opening(windowed, smtp_server):
    dry = send_campaign(windowed, "promo", now=SUNDAY_NIGHT, dry_run=True)
    assert dry.would_send == 3 and dry.window_waiting == 3
    assert (dry.window_opens, dry.window_last) == (OPENS[3], OPENS[1])
    assert any("wait for the send window" in note for note in dry.notes)

    report = send_campaign(windowed, "promo", now=SUNDAY_NIGHT)
    assert smtp_server.messages == []  # nothing at 03:00 on a Monday morning
    assert report.window_waiting == 3 and report.waiting == 3
    assert report.states == {"queued": 3} and not report.failed
    assert due_times(windowed) == OPENS
    assert any(
        "wait for the send window" in n and "2026-12-07T02:00:00Z" in n for n in report.notes
    )

    # Monday 01:30 UTC: 10:30 WIT and 09:30 WITA are open, 08:30 WIB is not yet.
    send_campaign(windowed, "promo", now=datetime(2026, 12, 7, 1, 30))
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == ["m2@example.id", "m3@example.id"]
    assert due_times(windowed)[1] == OPENS[1]

    # 02:00 UTC, 09:00 WIB: the last one goes, and nothing goes twice.
    final = send_campaign(windowed, "promo", now=OPENS[1])
    assert final.states == {"sent": 3}
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "m1@example.id", "m2@example.id", "m3@example.id",
    ]  # fmt: skip


def test_inside_the_window_messages_go_at_once(windowed, smtp_server):
    tuesday_noon_wib = datetime(2026, 12, 8, 5, 0)  # 12:00 WIB, 13:00 WITA, 14:00 WIT
    report = send_campaign(windowed, "promo", now=tuesday_noon_wib)
    assert report.window_waiting == 0 and report.states == {"sent": 3}
    assert not [n for n in report.notes if "send window" in n]


def test_friday_evening_waits_for_monday(windowed, smtp_server):
    friday_evening = datetime(2026, 12, 11, 11, 0)  # 18:00 WIB, 19:00 WITA, 20:00 WIT
    report = send_campaign(windowed, "promo", now=friday_evening)
    assert report.window_waiting == 3 and smtp_server.messages == []
    assert due_times(windowed) == {
        1: datetime(2026, 12, 14, 2, 0), 2: datetime(2026, 12, 14, 1, 0), 3: datetime(2026, 12, 14, 0, 0),
    }  # fmt: skip
