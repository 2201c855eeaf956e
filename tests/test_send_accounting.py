"""`campaign send`: every audience member is accounted for, and a send delivers its own run.

Review regressions: a run held back by a server-wide backoff, the ``limit``,
``exited``, ``step_condition`` and ``failed_before`` skip reasons, suppressed
members recorded in the outbox, the dry run's ``step``. SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import write_files
from smtp_server import SmtpTestServer
from test_send import COUNT, shop, use  # noqa: F401 - ``shop`` is a fixture

from engine.cli import cli
from engine.models import merchants, messages
from engine.reports import campaign_report
from engine.sending import SKIP_REASONS, SendReport, dry_run_campaign, send_campaign
from engine.suppressions import add_suppression
from engine.times import utcnow

NOW = datetime(2026, 12, 1, 9, 0)  # the clock of suppression entries here


def balanced(report: SendReport) -> SendReport:
    """Nothing is dropped without a reason: the counts add up to the audience."""
    assert set(report.skipped) <= set(SKIP_REASONS)
    assert report.audience == report.would_send + report.pending + sum(report.skipped.values()), (
        report.audience,
        report.would_send,
        report.pending,
        dict(report.skipped),
    )
    return report


def fix_merchant_5(project) -> None:
    with project.engine.begin() as conn:
        conn.execute(
            merchants.update().where(merchants.c.id == 5).values(attributes={"greeting": "halo"})
        )


def slow_retries(project) -> None:
    """A backoff far longer than the test: nothing becomes due by waiting."""
    delivery = dataclasses.replace(project.settings.delivery, retry_backoff=timedelta(hours=1))
    project.settings = dataclasses.replace(project.settings, delivery=delivery)


def down(project) -> None:
    """Point the project at a port where nothing listens (connection refused)."""
    dead = SmtpTestServer().start()
    project.settings = dataclasses.replace(project.settings, smtp=dead.settings())
    dead.stop()


def run_states(project, campaign: str, run: str) -> dict[str, int]:
    with project.engine.connect() as conn:
        return dict(
            conn.execute(
                sa.select(messages.c.state, sa.func.count())
                .where(messages.c.campaign == campaign, messages.c.run == run)
                .group_by(messages.c.state)
            ).all()
        )


def test_a_send_delivers_its_run_held_by_a_server_backoff_and_only_its_run(shop, smtp_server):  # noqa: F811
    fix_merchant_5(shop)
    slow_retries(shop)
    use(shop, smtp_server)
    smtp_server.reply("rcpt", "450 4.2.1 Mailbox busy", recipient="m3@example.id", times=1)
    first = balanced(send_campaign(shop, "news", run="a", limit=3))
    assert run_states(shop, "news", "a") == {"sent": 2, "deferred": 1}
    assert first.waiting == 1 and not first.failed  # a 4xx alone: exit 0, with a note
    assert any("deferred by the server" in note for note in first.notes)

    down(shop)
    stalled = balanced(send_campaign(shop, "news", run="a", server_patience=0))
    assert stalled.server_down and stalled.failed  # waiting because the server is down
    assert stalled.waiting == COUNT - 2 and stalled.next_due is not None
    assert any(f"{COUNT - 2} message(s) of run 'a' wait" in note for note in stalled.notes)
    balanced(send_campaign(shop, "news", run="b", server_patience=0))
    balanced(send_campaign(shop, "tips", server_patience=0))
    with shop.engine.connect() as conn:  # held back an hour by the server-wide backoff
        due = conn.execute(
            sa.select(sa.func.max(messages.c.next_attempt_at)).where(
                messages.c.state.in_(["queued", "deferred"])
            )
        ).scalar()
    assert due > utcnow() + timedelta(minutes=30)

    use(shop, smtp_server)
    resumed = balanced(send_campaign(shop, "news", run="a"))
    assert resumed.server_down is None and not resumed.failed
    assert resumed.pending == COUNT - 2
    # m3 keeps the backoff of its own 450; every other message of run a went now.
    assert run_states(shop, "news", "a") == {"sent": COUNT - 1, "deferred": 1}
    assert resumed.waiting == 1 and resumed.next_due > utcnow() + timedelta(minutes=30)
    expected = sorted(f"m{i}@example.id" for i in range(1, COUNT + 1) if i != 3)
    assert sorted(smtp_server.recipients()) == expected  # nothing of run b, nothing of tips
    assert set(run_states(shop, "news", "b")) <= {"queued", "deferred"}
    with shop.engine.connect() as conn:
        tips = set(
            conn.execute(sa.select(messages.c.state).where(messages.c.campaign == "tips")).scalars()
        )
    assert tips <= {"queued", "deferred", "holdout"}


def test_the_counts_add_up_with_and_without_limit(shop, smtp_server):  # noqa: F811
    fix_merchant_5(shop)
    add_suppression(shop.engine, "m1@example.id", topic="retention", reason="unsubscribe", now=NOW)
    with shop.engine.begin() as conn:
        conn.execute(merchants.update().where(merchants.c.id == 4).values(email="not an address"))
    dry = balanced(dry_run_campaign(shop, "tips"))
    assert dry.skipped["limit"] == 0 and dry.skipped["suppressed"] == 1
    limited = balanced(dry_run_campaign(shop, "tips", limit=2))
    assert limited.would_send == 2 and limited.audience == COUNT and limited.skipped["limit"] > 0
    assert len(limited.messages) == 2

    down(shop)
    balanced(send_campaign(shop, "tips", limit=3, server_patience=0))  # 3 wait in the outbox
    waiting = balanced(dry_run_campaign(shop, "tips", limit=2))
    assert waiting.pending == 3 and waiting.would_send == 2
    use(shop, smtp_server)
    real = balanced(send_campaign(shop, "tips", limit=2))
    assert real.pending == 3 and real.would_send == 2 and real.skipped["limit"] > 0
    rest = balanced(send_campaign(shop, "tips"))
    assert rest.skipped["limit"] == 0 and rest.skipped["already_sent"] == 5
    assert rest.audience == COUNT


def test_the_cli_json_counts_the_members_beyond_the_limit(shop, project_dir, project_env):  # noqa: F811
    base = ["--project", str(project_dir)]
    result = CliRunner().invoke(
        cli,
        ["send", "news", "--dry-run", "--limit", "2", "--format", "json", *base],
        env=project_env,
    )
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert data["would_send"] == 2 and data["skipped"]["limit"] == COUNT - 2
    assert data["audience"] == data["would_send"] + data["pending"] + sum(data["skipped"].values())
    assert [m["step"] for m in data["messages"]] == [None, None]  # a broadcast has no step
    assert data["step"] is None


DRIPS = {
    "campaigns/leave.yaml": (
        "kind: drip\ntopic: onboarding\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\nexit:\n  segment: everyone\n'
        "steps:\n  - template: news/hello\n    delay: 0d\n"
    ),
    "campaigns/picky.yaml": (
        "kind: drip\ntopic: onboarding\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\nexit:\n  field: city\n  eq: Medan\n'
        "steps:\n  - template: news/hello\n    delay: 0d\n"
        "    when: {field: city, eq: Bandung}\n"
    ),
}


def test_a_drip_counts_the_exited_and_the_step_condition(shop, project_dir, smtp_server):  # noqa: F811
    write_files(project_dir, DRIPS)
    fix_merchant_5(shop)
    with shop.engine.begin() as conn:
        conn.execute(merchants.update().where(merchants.c.id <= 3).values(city="Bandung"))
        conn.execute(merchants.update().where(merchants.c.id == 12).values(city="Medan"))
    gone = balanced(dry_run_campaign(shop, "leave"))
    assert gone.audience == COUNT and gone.skipped["exited"] == COUNT and gone.would_send == 0
    picky = balanced(dry_run_campaign(shop, "picky"))
    assert picky.skipped["exited"] == 1 and picky.skipped["step_condition"] == COUNT - 4
    assert picky.would_send == 3 and [m["step"] for m in picky.messages] == [1, 1, 1]
    use(shop, smtp_server)
    sent = balanced(send_campaign(shop, "picky"))
    assert sent.states == {"sent": 3}
    assert sorted(smtp_server.recipients()) == [f"m{i}@example.id" for i in (1, 2, 3)]


def test_a_failed_message_is_failed_before_not_already_sent(shop, smtp_server):  # noqa: F811
    use(shop, smtp_server)
    smtp_server.reply("rcpt", "554 5.7.1 Rejected", recipient="m3@example.id")
    first = balanced(send_campaign(shop, "news"))
    assert first.states == {"sent": COUNT - 2, "failed": 2}  # m3 (554) and m5 (render error)
    again = balanced(send_campaign(shop, "news"))
    assert again.skipped["failed_before"] == 2
    assert again.skipped["already_sent"] == COUNT - 2


def test_suppressed_members_are_recorded_for_the_report(shop, smtp_server):  # noqa: F811
    use(shop, smtp_server)
    add_suppression(shop.engine, "m1@example.id", topic="promo", reason="unsubscribe", now=NOW)
    add_suppression(shop.engine, "m2@example.id", reason="hard_bounce", now=NOW)
    before = dry_run_campaign(shop, "news")
    assert before.skipped["suppressed"] == 2
    with shop.engine.connect() as conn:  # the dry run wrote nothing
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 0
    report = balanced(send_campaign(shop, "news"))
    assert report.skipped["suppressed"] == 2 and report.states["suppressed"] == 2
    with shop.engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.select(messages.c.email, messages.c.last_error).where(
                    messages.c.state == "suppressed"
                )
            ).all()
        )
    assert "unsubscribe" in rows["m1@example.id"] and "hard_bounce" in rows["m2@example.id"]
    assert not {"m1@example.id", "m2@example.id"} & set(smtp_server.recipients())
    (row,) = campaign_report(shop, "news")
    assert row["suppressed"] == 2 and row["sent"] == COUNT - 3
    again = balanced(send_campaign(shop, "news"))  # recorded once: the key stays unique
    assert again.skipped["suppressed"] == 2 and again.enqueued == 0
    (row,) = campaign_report(shop, "news")
    assert row["suppressed"] == 2


class _FailsOnThird:
    """The real SMTP transport, except that the third send raises (a bug in a sender thread)."""

    def __init__(self, inner, counter: list[int]) -> None:
        self.inner, self.counter = inner, counter

    def send(self, sender, recipient, data, *, on_commit=None):
        self.counter[0] += 1
        if self.counter[0] == 3:
            raise RuntimeError("a bug in the sender thread")
        return self.inner.send(sender, recipient, data, on_commit=on_commit)

    def close(self) -> None:
        self.inner.close()


def test_an_error_in_a_sender_gives_back_its_claims_and_records_its_success(shop, smtp_server):  # noqa: F811
    from engine.delivery import default_transport_factory

    fix_merchant_5(shop)
    use(shop, smtp_server)
    one = dataclasses.replace(shop.settings.delivery, connections=1)
    shop.settings = dataclasses.replace(shop.settings, delivery=one)
    real, counter = default_transport_factory(shop.settings), [0]
    with pytest.raises(RuntimeError, match="a bug"):
        send_campaign(shop, "news", transport_factory=lambda: _FailsOnThird(real(), counter))
    # The second 250 was still held (recorded with the next committing mark): it is
    # recorded now, not left in `committing`; the untried claims are back in the queue.
    assert run_states(shop, "news", "manual") == {"sent": 2, "queued": COUNT - 2}
    assert len(smtp_server.recipients()) == 2
    resumed = balanced(send_campaign(shop, "news"))
    assert resumed.states == {"sent": COUNT}
    assert len(set(smtp_server.recipients())) == len(smtp_server.recipients()) == COUNT
