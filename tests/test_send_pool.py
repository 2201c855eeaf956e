"""Large sends render in a child process, and in this one while the child starts.

Whichever process renders a batch, every merchant gets one message, the same
bytes, and the report lists the messages in audience order.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import write_files
from test_send import FILES, add_merchants

from engine.config import DeliverySettings
from engine.sending import send_campaign
from engine.times import parse_rate, utcnow

MERCHANTS = 260  # six batches of 50 (the smallest batch): several while the child starts


@pytest.fixture
def crowd(project, project_dir):
    write_files(project_dir, FILES)
    add_merchants(project, MERCHANTS)
    delivery = DeliverySettings(
        connections=3, rate=parse_rate("5000/s"), retry_backoff=timedelta(seconds=1), batch_size=50
    )
    project.settings = dataclasses.replace(project.settings, delivery=delivery)
    return project


def test_a_pool_send_renders_the_same_messages_and_sends_each_once(crowd, smtp_server, tmp_path):
    crowd.settings = dataclasses.replace(crowd.settings, smtp=smtp_server.settings())
    now = utcnow()
    here = send_campaign(
        crowd, "news", now=now, dry_run=True, render_workers=0, out_dir=tmp_path / "a"
    )
    there = send_campaign(
        crowd, "news", now=now, dry_run=True, render_workers=1, out_dir=tmp_path / "b"
    )
    assert there.messages == here.messages
    assert [m["merchant_id"] for m in there.messages] == list(range(1, MERCHANTS + 1))
    for eml in (tmp_path / "a").glob("*.eml"):
        assert (tmp_path / "b" / eml.name).read_bytes() == eml.read_bytes()
    assert len(list((tmp_path / "b").glob("*.eml"))) == MERCHANTS

    # A real send: the child renders and writes the outbox rows itself (and the .eml files).
    report = send_campaign(crowd, "news", now=now, render_workers=1, out_dir=tmp_path / "c")
    assert report.states == {"sent": MERCHANTS}
    assert report.enqueued == report.would_send == MERCHANTS
    for eml in (tmp_path / "c").glob("*.eml"):
        assert (tmp_path / "b" / eml.name).read_bytes() == eml.read_bytes()
    assert len(list((tmp_path / "c").glob("*.eml"))) == MERCHANTS
    assert [m["merchant_id"] for m in report.messages] == list(range(1, MERCHANTS + 1))
    recipients = smtp_server.recipients()
    assert sorted(recipients) == sorted(f"m{i}@example.id" for i in range(1, MERCHANTS + 1))


def test_a_tick_s_pool_renders_several_sends_each_with_its_own_campaign(project, project_dir):
    from drip_fixtures import MONDAY, make_project
    from drip_fixtures import add_merchants as add_drip_merchants

    from engine.models import messages
    from engine.rendering import RenderPool

    make_project(project, project_dir)
    add_drip_merchants(project, 120)
    pool = RenderPool(project.settings, 1)
    try:
        # Two sends through the same child: each batch names its send, and the
        # child prepares each (campaign, step) once, so no message gets the
        # other step's template.
        for step in (1, 2):
            report = send_campaign(
                project, "welcome", now=MONDAY, step=step, deliver=False,
                render_workers=1, render_pool=pool,
            )  # fmt: skip
            assert report.enqueued == 120
        assert pool.started  # the send left the shared pool open for the next one
    finally:
        pool.close()
    assert not pool.started
    with project.engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.step, messages.c.merchant_id, messages.c.subject)
        ).all()
    assert sorted(rows) == sorted(
        [(1, i, f"One Toko {i}") for i in range(1, 121)] + [(2, i, "Two") for i in range(1, 121)]
    )


def test_a_large_tick_queues_every_due_message_once_through_its_shared_pool(project, project_dir):
    """From POOL_THRESHOLD members a tick's steps render in its children (two cores or more)."""
    from drip_fixtures import MONDAY, make_project
    from drip_fixtures import add_merchants as add_drip_merchants

    from engine.clock import FixedClock
    from engine.drips import tick
    from engine.models import messages
    from engine.rendering import POOL_THRESHOLD

    make_project(project, project_dir)
    add_drip_merchants(project, POOL_THRESHOLD)
    first = tick(project, clock=FixedClock(MONDAY), deliver=False)
    again = tick(project, clock=FixedClock(MONDAY), deliver=False)
    assert first.enrolled == POOL_THRESHOLD and first.queued == POOL_THRESHOLD
    assert again.enrolled == 0 and again.queued == 0
    with project.engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.merchant_id, messages.c.step, messages.c.subject)
        ).all()
    assert len(rows) == POOL_THRESHOLD
    assert {(m, s, subject) for m, s, subject in rows} == {
        (i, 1, f"One Toko {i}") for i in range(1, POOL_THRESHOLD + 1)
    }
