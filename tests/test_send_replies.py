"""Outbox → sender threads → a real, misbehaving SMTP server (aiosmtpd): every reply handled.

The reply matrix runs on SQLite only (the database does not change how a reply
is sorted); the database-specific paths are in test_outbox.py and test_send.py.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from smtp_server import SmtpTestServer
from test_outbox import add_merchants, new

from engine.clock import SystemClock
from engine.delivery import Delivery, deliver
from engine.models import attempts, messages
from engine.outbox import enqueue
from engine.project import open_project
from engine.suppressions import is_suppressed

# These tests wait for real retries and server pauses: delivery runs on the real clock.
CLOCK = SystemClock()

BAD = "m2@example.id"  # the recipient the server misbehaves for (merchant 2)

TOML = """
[delivery]
connections = 2
rate = "1000/s"
max_attempts = 3
retry_backoff = "1s"
lease = "1m"
timeout = "{timeout}"
"""


@pytest.fixture
def outbox(tmp_path):
    """A SQLite project whose outbox holds messages to m1..m4 (campaign promo)."""

    def make(count: int = 4, timeout: str = "5s"):
        folder = tmp_path / "p"
        folder.mkdir(exist_ok=True)
        (folder / "campaign.toml").write_text(TOML.format(timeout=timeout))
        project = open_project(
            folder, env={"CAMPAIGN_DATABASE_URL": f"sqlite:///{folder / 'c.db'}"}
        )
        engine = project.database()
        add_merchants(engine, count)
        enqueue(engine, [new(i) for i in range(1, count + 1)], now=CLOCK.now())
        return project

    projects = []

    def factory(*args, **kwargs):
        project = make(*args, **kwargs)
        projects.append(project)
        return project

    yield factory
    for project in projects:
        project.close()


def run(project, server: SmtpTestServer, **kwargs):
    settings = dataclasses.replace(project.settings, smtp=server.settings())
    return deliver(project.engine, settings, clock=CLOCK, **kwargs)


def row(project, email: str = BAD) -> dict:
    with project.engine.connect() as conn:
        return dict(
            conn.execute(sa.select(messages).where(messages.c.email == email)).mappings().one()
        )


def logged(project, email: str = BAD) -> list[tuple]:
    with project.engine.connect() as conn:
        return conn.execute(
            sa.select(attempts.c.smtp_code, attempts.c.enhanced_status, attempts.c.outcome)
            .join(messages, messages.c.id == attempts.c.message_id)
            .where(messages.c.email == email)
            .order_by(attempts.c.id)
        ).all()


def delivered(server: SmtpTestServer) -> list[str]:
    return sorted(server.recipients())


# (stage, reply) → (state, attempts charged, suppressed?)
MATRIX = [
    ("rcpt", "450 4.2.1 Mailbox busy", "deferred", 1, False),
    ("rcpt", "451 4.3.0 Local error", "deferred", 1, False),
    ("rcpt", "452 4.2.2 Mailbox full", "deferred", 1, False),
    ("rcpt", "552 5.2.2 Mailbox full", "deferred", 1, False),  # RFC 5321: 552 at RCPT is temporary
    ("rcpt", "550 5.1.1 No such user", "failed", 1, True),
    ("rcpt", "554 5.7.1 Rejected", "failed", 1, False),
    ("data", "451 4.3.0 Try later", "deferred", 1, False),
    ("data", "452 4.3.1 Insufficient storage", "deferred", 1, False),
    ("data", "554 5.5.1 No valid recipients", "failed", 1, False),
    ("body", "450 4.7.0 Try later", "deferred", 1, False),
    ("body", "451 4.7.1 Spam check failed, try later", "deferred", 1, False),
    ("body", "452 4.3.1 Insufficient storage", "deferred", 1, False),
    ("body", "550 5.1.1 No such user", "failed", 1, True),
    ("body", "552 5.3.4 Message too big", "failed", 1, False),
    ("body", "554 5.7.1 Message rejected as spam", "failed", 1, False),
]


@pytest.mark.parametrize(("stage", "reply", "state", "charged", "suppressed"), MATRIX)
def test_reply_matrix(outbox, smtp_server, stage, reply, state, charged, suppressed):
    project = outbox()
    smtp_server.reply(stage, reply, recipient=BAD)
    stats = run(project, smtp_server)
    message = row(project)
    assert (message["state"], message["attempts"]) == (state, charged)
    code = int(reply[:3])
    assert logged(project) == [(code, reply.split()[1], "bounced" if suppressed else state)]
    assert reply.split(" ", 2)[2] in message["last_error"]
    assert is_suppressed(project.engine, BAD, "promo") is suppressed
    # The other messages went through on the same (reused) connections.
    assert delivered(smtp_server) == ["m1@example.id", "m3@example.id", "m4@example.id"]
    assert smtp_server.connections <= 2
    assert stats.states["sent"] == 3


@pytest.mark.parametrize("stage", ["rcpt", "data", "body"])
def test_421_backs_off_the_server_without_charging_the_message(outbox, smtp_server, stage):
    project = outbox()
    smtp_server.reply(stage, "421 4.3.2 Service shutting down", recipient=BAD, times=1)
    stats = run(project, smtp_server)
    message = row(project)
    assert message["state"] == "sent"
    assert message["attempts"] == 1  # the 421 was not charged
    assert [o for _, _, o in logged(project)] == ["server_down", "sent"]
    assert delivered(smtp_server) == [f"m{i}@example.id" for i in range(1, 5)]
    assert stats.server_down is None


def test_a_server_that_stays_down_ends_the_pass_and_keeps_the_messages(outbox, smtp_server):
    project = outbox()
    smtp_server.reply("mail", "421 4.3.2 Too busy")
    stats = run(project, smtp_server, server_patience=0)
    assert stats.server_down and "421" in stats.server_down
    with project.engine.connect() as conn:
        rows = conn.execute(sa.select(messages.c.state, messages.c.attempts)).all()
    assert {s for s, _ in rows} <= {"queued", "deferred"}
    assert all(a == 0 for _, a in rows)
    assert smtp_server.recipients() == []


def test_connection_refused_is_server_down(outbox):
    project = outbox()
    dead = SmtpTestServer().start()
    settings = dataclasses.replace(project.settings, smtp=dead.settings())
    dead.stop()
    stats = deliver(project.engine, settings, clock=CLOCK, server_patience=0)
    assert "refused" in stats.server_down
    with project.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(messages.c.attempts))).scalar() == 0


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_a_drop_before_the_body_defers(outbox, smtp_server, stage):
    project = outbox()
    smtp_server.drop(stage, recipient=BAD, times=1)
    run(project, smtp_server)
    message = row(project)
    assert (message["state"], message["attempts"]) == ("deferred", 1)
    assert "connection dropped" in message["last_error"]
    assert delivered(smtp_server) == ["m1@example.id", "m3@example.id", "m4@example.id"]


def test_a_drop_after_the_body_is_unknown_and_never_resent(outbox, smtp_server):
    project = outbox()
    smtp_server.drop("body", recipient=BAD, times=1)
    run(project, smtp_server)
    assert row(project)["state"] == "unknown"
    assert [r.rcpt_tos for r in smtp_server.dropped_after_body] == [(BAD,)]
    run(project, smtp_server)  # a second pass leaves it alone
    assert row(project)["state"] == "unknown"
    assert BAD not in smtp_server.recipients()


def test_greylisting_is_retried_until_accepted(outbox, smtp_server):
    project = outbox()
    smtp_server.greylist()
    stats = run(project, smtp_server, wait_retries=timedelta(seconds=5))
    assert stats.states["sent"] == 4
    assert delivered(smtp_server) == [f"m{i}@example.id" for i in range(1, 5)]
    assert row(project)["attempts"] == 2
    assert [o for _, _, o in logged(project)] == ["deferred", "sent"]


def test_deferred_until_max_attempts_then_failed(outbox, smtp_server):
    project = outbox()
    smtp_server.reply("rcpt", "451 4.7.1 Not now", recipient=BAD)
    run(project, smtp_server, wait_retries=timedelta(seconds=10))
    message = row(project)
    assert (message["state"], message["attempts"]) == ("failed", 3)
    assert [o for _, _, o in logged(project)] == ["deferred", "deferred", "deferred"]


def test_a_slow_server_past_the_timeout(outbox, smtp_server):
    project = outbox(timeout="1s")
    smtp_server.delay("rcpt", 2.0, recipient=BAD, times=1)
    smtp_server.delay("body", 0.2)  # slow but within the timeout: fine
    run(project, smtp_server)
    message = row(project)
    assert (message["state"], message["attempts"]) == ("deferred", 1)
    assert "no reply within 1s" in message["last_error"]
    assert delivered(smtp_server) == ["m1@example.id", "m3@example.id", "m4@example.id"]


def test_a_timeout_after_the_body_is_unknown(outbox, smtp_server):
    project = outbox(timeout="1s")
    smtp_server.delay("body", 2.0, recipient=BAD, times=1)
    run(project, smtp_server)
    assert row(project)["state"] == "unknown"


def test_starttls_with_a_trusted_certificate(outbox, starttls_smtp_server):
    project = outbox()
    run(project, starttls_smtp_server)
    assert len(starttls_smtp_server.recipients()) == 4


def test_a_self_signed_certificate_is_refused_unless_trusted(outbox, tls_smtp_server):
    project = outbox()
    settings = dataclasses.replace(project.settings, smtp=tls_smtp_server.settings(cafile=None))
    stats = deliver(project.engine, settings, clock=CLOCK, server_patience=0)
    assert "certificate" in stats.server_down
    assert tls_smtp_server.recipients() == []
    settings = dataclasses.replace(project.settings, smtp=tls_smtp_server.settings())
    deliver(project.engine, settings, clock=CLOCK, wait_retries=timedelta(seconds=3))
    assert len(tls_smtp_server.recipients()) == 4


def test_stop_finishes_in_flight_and_gives_back_the_rest(outbox, smtp_server):
    project = outbox(count=30)
    smtp_server.delay("body", 0.05)
    settings = dataclasses.replace(project.settings, smtp=smtp_server.settings())
    delivery = Delivery(project.engine, settings, clock=CLOCK).start()
    smtp_server.wait_for(3)
    delivery.stop()
    delivery.join()
    with project.engine.connect() as conn:
        found = dict(
            conn.execute(
                sa.select(messages.c.state, sa.func.count()).group_by(messages.c.state)
            ).all()
        )
    assert set(found) <= {"sent", "queued"}
    assert found["sent"] == len(smtp_server.recipients())
