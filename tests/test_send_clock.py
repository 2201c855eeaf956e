"""One clock: every rule and every timestamp of a send comes from the clock it was given.

Run on SQLite and PostgreSQL, with the clock a year before the real time.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import write_files
from test_send import add_merchants

from engine.cli import cli
from engine.config import DeliverySettings
from engine.models import attempts, messages
from engine.project import open_project
from engine.sending import send_campaign
from engine.times import parse_rate, utcnow

T = (utcnow() - timedelta(days=365)).replace(microsecond=0)
FILES = {
    "campaign.toml": '[limits]\nfrequency_cap = "1/7d"\nfrequency_cap_exempt = []\n',
    "segments/everyone.yaml": "description: everyone\nrules:\n  field: status\n  eq: active\n",
    "campaigns/first.yaml": (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: news/hello\n'
    ),
    "campaigns/second.yaml": (
        "kind: broadcast\ntopic: retention\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: news/hello\n'
    ),
    "templates/news/hello.html": (
        '---\nsubject: "Halo {{ merchant.store_name }}"\n---\n'
        '<p>Halo {{ merchant.name }}</p><a href="{{ unsubscribe_url }}">berhenti</a>\n'
    ),
}
COUNT = 6


@pytest.fixture
def capped(project, project_dir, project_env, smtp_server):
    """A project whose frequency cap (campaign.toml) is 1 email per 7 days, for every topic."""
    write_files(project_dir, FILES)
    project = open_project(project_dir, env=project_env)
    add_merchants(project, COUNT)
    project.settings = dataclasses.replace(
        project.settings,
        smtp=smtp_server.settings(),
        delivery=DeliverySettings(connections=2, rate=parse_rate("2000/s")),
    )
    assert project.settings.limits.frequency_cap == parse_rate("1/7d", "smhdw")
    yield project
    project.close()


def test_the_frequency_cap_counts_on_the_commands_clock(capped, smtp_server):
    first = send_campaign(capped, "first", now=T)
    assert first.states == {"sent": COUNT}
    # An hour later on the same clock: everyone already had their one email this week.
    later = send_campaign(capped, "second", now=T + timedelta(hours=1))
    assert later.skipped["frequency_cap"] == COUNT and later.would_send == 0
    # Eight days later the window has moved on: they may be written to again.
    week = send_campaign(capped, "second", now=T + timedelta(days=8), run="next-week")
    assert week.states == {"sent": COUNT} and week.skipped["frequency_cap"] == 0
    assert len(smtp_server.messages) == 2 * COUNT


def test_created_sent_and_attempt_times_are_the_clocks(capped):
    send_campaign(capped, "first", now=T)
    with capped.engine.connect() as conn:
        stamps = conn.execute(
            sa.select(messages.c.created_at, messages.c.sent_at, attempts.c.at).join(attempts)
        ).all()
    assert len(stamps) == COUNT
    assert {tuple(row) for row in stamps} == {(T, T, T)}


def test_send_now_on_the_command_line_uses_that_clock(capped, project_env):
    result = CliRunner().invoke(
        cli,
        ["send", "first", "--now", T.isoformat(), "--project", str(capped.root)],
        env={**project_env, "CAMPAIGN_SMTP_URL": capped.settings.smtp.describe()},
    )
    assert result.exit_code == 0, result.output
    with capped.engine.connect() as conn:
        assert set(conn.execute(sa.select(messages.c.sent_at)).scalars()) == {T}
    again = CliRunner().invoke(
        cli,
        ["send", "second", "--now", (T + timedelta(hours=2)).isoformat(), "--format", "json",
         "--project", str(capped.root)],
        env={**project_env, "CAMPAIGN_SMTP_URL": capped.settings.smtp.describe()},
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert f'"frequency_cap": {COUNT}' in again.output


def test_no_engine_module_reads_the_real_clock_on_its_own():
    """Only the clock module makes the real time (leases read it through real_now)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "engine"
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name not in ("clock.py", "times.py")
        and ("utcnow(" in path.read_text() or "datetime.now(" in path.read_text())
    ]
    # The CLI makes the command's clock (engine.cli.main.command_clock) from engine.clock.
    assert offenders == [], offenders
