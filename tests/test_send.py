"""`campaign send` end to end: segment → skips → render → outbox → a real SMTP server.

Every test here runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from datetime import datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import write_files

from engine.cli import cli
from engine.config import DeliverySettings
from engine.errors import DeliveryError
from engine.models import (
    attempts,
    campaign_runs,
    merchants,
    message_bodies,
    messages,
    suppressions,
)
from engine.reports import COLUMNS, campaign_report
from engine.sending import dry_run_campaign, send_campaign
from engine.suppressions import add_suppression
from engine.times import parse_rate, utcnow

NOW = datetime(2026, 12, 1, 9, 0)  # the clock of suppression entries here

FILES = {
    "segments/everyone.yaml": "description: every active merchant\nrules:\n  field: status\n  eq: active\n",
    "campaigns/news.yaml": (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: news/hello\n'
    ),
    "campaigns/tips.yaml": (
        "kind: broadcast\ntopic: retention\nsegment: everyone\n"
        'from: "Tokoku <tips@tokoku.id>"\ntemplate: news/hello\nholdout: 20%\n'
    ),
    "campaigns/welcome.yaml": (
        "kind: drip\ntopic: onboarding\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\nsteps:\n  - template: news/hello\n    delay: 0d\n'
        "  - template: news/hello\n    delay: 3d\n"
    ),
    "templates/news/hello.html": (
        '---\nsubject: "Halo {{ merchant.store_name }}"\n---\n'
        "<html><body><p>Halo {{ merchant.name }}, {{ merchant.attributes.greeting }}</p>"
        '<a href="{{ unsubscribe_url }}">berhenti</a></body></html>\n'
    ),
}
COUNT = 12


def add_merchants(project, count: int, *, without_greeting: tuple[int, ...] = ()) -> None:
    """Merchants 1..count, each with a `greeting` attribute unless listed."""
    with project.engine.begin() as conn:
        conn.execute(
            merchants.insert(),
            [
                {
                    "id": i,
                    "external_id": f"m{i}",
                    "email": f"m{i}@example.id",
                    "name": f"Merchant {i}",
                    "store_name": f"Toko {i}",
                    "attributes": {} if i in without_greeting else {"greeting": "apa kabar"},
                }
                for i in range(1, count + 1)
            ],
        )


@pytest.fixture
def shop(project, project_dir):
    """The project with the files above and COUNT active merchants (merchant 5 lacks `greeting`)."""
    write_files(project_dir, FILES)
    add_merchants(project, COUNT, without_greeting=(5,))
    fast = DeliverySettings(
        connections=2, rate=parse_rate("2000/s"), retry_backoff=timedelta(seconds=1), max_attempts=3
    )
    project.settings = dataclasses.replace(project.settings, delivery=fast)
    return project


def use(project, server):
    project.settings = dataclasses.replace(project.settings, smtp=server.settings())
    return project


def outbox_states(project, campaign: str | None = None) -> dict[str, int]:
    query = sa.select(messages.c.state, sa.func.count()).group_by(messages.c.state)
    if campaign:
        query = query.where(messages.c.campaign == campaign)
    with project.engine.connect() as conn:
        return dict(conn.execute(query).all())


def table_counts(project) -> dict[str, int]:
    with project.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            for t in (merchants, messages, attempts, suppressions, campaign_runs)
        }


def test_send_delivers_once_and_a_second_send_sends_nothing(shop, smtp_server):
    use(shop, smtp_server)
    report = send_campaign(shop, "news")
    # Merchant 5's template needs an attribute it lacks: that one message fails, the rest go.
    assert report.skipped["render_error"] == 1 and report.failed
    assert report.would_send == COUNT - 1
    assert report.states == {"sent": COUNT - 1, "failed": 1}
    received = smtp_server.messages
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(
        f"m{i}@example.id" for i in range(1, COUNT + 1) if i != 5
    )
    first = message_from_bytes(received[0].data)
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with shop.engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(messages, message_bodies.c.data)
                .join(message_bodies)
                .where(messages.c.email == received[0].rcpt_tos[0])
            )
            .mappings()
            .one()
        )
        failure = conn.execute(
            sa.select(messages.c.last_error).where(messages.c.merchant_id == 5)
        ).scalar()
    assert row["queue_id"] == received[0].queue_id
    assert row["message_id"] == first["Message-ID"]
    assert bytes(row["data"]).replace(b"\r\n", b"\n") == received[0].data.replace(b"\r\n", b"\n")
    assert "render error" in failure and "greeting" in failure

    again = send_campaign(shop, "news")
    assert again.enqueued == 0 and again.would_send == 0
    assert again.skipped["already_sent"] == COUNT - 1
    assert again.skipped["failed_before"] == 1  # the failed one is not re-rendered either
    assert len(smtp_server.messages) == COUNT - 1

    # A new, deliberate run sends again.
    third = send_campaign(shop, "news", run="second")
    assert third.states["sent"] == COUNT - 1
    assert len(smtp_server.messages) == 2 * (COUNT - 1)
    with shop.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(campaign_runs.c.run)).scalars()) == [
            "manual",
            "second",
        ]


def test_skips_with_reasons(shop, smtp_server):
    use(shop, smtp_server)
    add_suppression(shop.engine, "m1@example.id", topic="promo", reason="unsubscribe", now=NOW)
    add_suppression(shop.engine, "m2@example.id", reason="hard_bounce", now=NOW)
    add_suppression(
        shop.engine, "m3@example.id", topic="retention", reason="unsubscribe", now=NOW
    )  # other topic
    with shop.engine.begin() as conn:  # an address the importer would have refused
        conn.execute(merchants.update().where(merchants.c.id == 4).values(email="not an address"))
    report = send_campaign(shop, "news")
    assert report.skipped["suppressed"] == 2
    assert report.skipped["invalid_address"] == 1
    assert "m3@example.id" in smtp_server.recipients()
    assert not {"m1@example.id", "m2@example.id"} & set(smtp_server.recipients())


def test_frequency_cap_skips_broadcasts_but_not_exempt_topics(shop, smtp_server):
    use(shop, smtp_server)
    limits = dataclasses.replace(shop.settings.limits, frequency_cap=parse_rate("2/7d", "smhdw"))
    shop.settings = dataclasses.replace(shop.settings, limits=limits)
    send_campaign(shop, "news")
    send_campaign(shop, "news", run="b")
    report = send_campaign(shop, "news", run="c")
    assert report.skipped["frequency_cap"] == COUNT - 1  # merchant 5 got nothing (render error)
    assert report.states == {"failed": 1}  # merchant 5 again: failures do not count
    drip = send_campaign(shop, "welcome")  # onboarding is exempt
    assert drip.skipped["frequency_cap"] == 0 and drip.step == 1
    assert drip.states["sent"] == COUNT - 1


def test_holdout_is_recorded_and_never_emailed(shop, smtp_server):
    from engine.campaigns import in_holdout

    use(shop, smtp_server)
    report = send_campaign(shop, "tips")
    held = {i for i in range(1, COUNT + 1) if in_holdout("tips", i, 0.2)}
    assert report.skipped["holdout"] == len(held) > 0
    assert not {f"m{i}@example.id" for i in held} & set(smtp_server.recipients())
    (row,) = campaign_report(shop, "tips")
    assert row["holdout"] == len(held)
    assert row["sent"] + row["failed"] == COUNT - len(held)


def test_limit_and_resume(shop, smtp_server):
    use(shop, smtp_server)
    first = send_campaign(shop, "news", limit=4)
    assert first.would_send == 4 and first.audience == COUNT
    assert len(smtp_server.messages) == 4
    rest = send_campaign(shop, "news")
    assert rest.skipped["already_sent"] == 4
    assert len(smtp_server.recipients()) == len(set(smtp_server.recipients())) == COUNT - 1


def test_an_unsubscribe_after_enqueue_wins(shop, smtp_server):
    """Messages queued earlier (server down) are suppressed at claim time if the merchant left."""
    use(shop, smtp_server)
    smtp_server.reply("mail", "421 4.3.2 Not now")
    report = send_campaign(shop, "news", server_patience=0)
    assert report.server_down and report.failed
    assert smtp_server.recipients() == []
    add_suppression(shop.engine, "m7@example.id", topic="promo", reason="unsubscribe", now=NOW)
    smtp_server.clear_rules()
    with shop.engine.begin() as conn:  # the server back-off has passed
        conn.execute(messages.update().values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    resumed = send_campaign(shop, "news")
    assert resumed.pending == COUNT - 1  # queued by the first send, resumed now
    assert resumed.states == {"sent": COUNT - 2, "suppressed": 1, "failed": 1}
    assert "m7@example.id" not in smtp_server.recipients()


def test_a_real_send_needs_the_secret_key_and_an_smtp_url(shop, smtp_server):
    shop.settings = dataclasses.replace(shop.settings, smtp=None)
    with pytest.raises(DeliveryError, match="CAMPAIGN_SMTP_URL"):
        send_campaign(shop, "news")
    use(shop, smtp_server)
    shop.settings = dataclasses.replace(shop.settings, secret_key=None)
    with pytest.raises(DeliveryError, match="CAMPAIGN_SECRET_KEY"):
        send_campaign(shop, "news")
    assert outbox_states(shop) == {}


def test_retry_unknown_resends_on_purpose(shop, smtp_server):
    from engine.sending import retry_unknown

    use(shop, smtp_server)
    smtp_server.drop("body", recipient="m3@example.id", times=1)
    report = send_campaign(shop, "news")
    assert report.states["unknown"] == 1
    assert send_campaign(shop, "news").states["unknown"] == 1  # never resent by itself
    retried = retry_unknown(shop, "news")
    assert retried.would_send == 1 and "unknown" not in retried.states
    assert smtp_server.recipients().count("m3@example.id") == 1
    assert outbox_states(shop, "news") == {"sent": COUNT - 1, "failed": 1}


class Listener:
    """A TCP port that counts connection attempts (a dry run must make none)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def accepted(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dry_run_changes_nothing_and_opens_no_connection(shop, smtp_server, project_dir, tmp_path):
    use(shop, smtp_server)
    send_campaign(shop, "news", limit=3)  # some history: already_sent must be computed
    add_suppression(shop.engine, "m9@example.id", topic="promo", now=NOW)
    listener = Listener()
    from engine.config import parse_smtp_url

    shop.settings = dataclasses.replace(
        shop.settings, smtp=parse_smtp_url(f"smtp://127.0.0.1:{listener.port}")
    )
    before_counts = table_counts(shop)
    shop.close()  # SQLite: checkpoint the WAL so the file holds everything
    database = Path(shop.settings.database_url.removeprefix("sqlite:///"))
    is_sqlite = shop.settings.database_url.startswith("sqlite")
    before = _digest(database) if is_sqlite else None
    connections_before = smtp_server.connections

    out = tmp_path / "eml"
    report = dry_run_campaign(shop, "news", out_dir=out)
    shop.close()

    assert listener.accepted() == 0 and smtp_server.connections == connections_before
    listener.close()
    if is_sqlite:
        assert _digest(database) == before
    assert table_counts(shop) == before_counts
    assert report.audience == COUNT
    assert report.skipped["already_sent"] == 3 and report.skipped["suppressed"] == 1
    assert report.skipped["render_error"] == (0 if 5 in _sent_ids(shop) else 1)
    assert report.would_send == len(report.messages) == len(list(out.glob("*.eml")))
    assert {m["email"] for m in report.messages}.isdisjoint({"m9@example.id"})
    data = report.to_json()
    assert set(data) >= {"campaign", "audience", "would_send", "skipped", "messages"}
    assert set(data["messages"][0]) >= {"merchant_id", "email", "step", "subject"}


def _sent_ids(project) -> set[int]:
    with project.engine.connect() as conn:
        return set(conn.execute(sa.select(messages.c.merchant_id)).scalars())


def test_cli_send_report_and_exit_codes(shop, project_dir, project_env, smtp_server):
    runner = CliRunner()
    env = {**project_env, "CAMPAIGN_SMTP_URL": smtp_server.url}
    write_files(project_dir, {"campaign.toml": '[delivery]\nconnections = 2\nrate = "1000/s"\n'})
    base = ["--project", str(project_dir)]
    result = runner.invoke(cli, ["send", "news", "--dry-run", "--format", "json", *base], env=env)
    assert result.exit_code == 1, result.output  # the render error is a failure
    data = json.loads(result.stdout)
    assert data["would_send"] == COUNT - 1 and data["skipped"]["render_error"] == 1
    assert smtp_server.recipients() == []

    with shop.engine.begin() as conn:  # fix merchant 5: now everything renders
        conn.execute(
            merchants.update().where(merchants.c.id == 5).values(attributes={"greeting": "halo"})
        )
    result = runner.invoke(cli, ["send", "news", *base], env=env)
    assert result.exit_code == 0, result.output
    assert "audience 12" in result.output
    assert len(smtp_server.recipients()) == COUNT

    result = runner.invoke(cli, ["report", "--format", "json", *base], env=env)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert tuple(row) == COLUMNS
    assert (row["campaign"], row["step"], row["sent"], row["failed"], row["lift"]) == (
        "news",
        None,
        COUNT,
        0,
        None,
    )
    result = runner.invoke(cli, ["report", "news", "--format", "csv", *base], env=env)
    assert result.stdout.splitlines()[0] == ",".join(COLUMNS)

    result = runner.invoke(cli, ["send", "nope", *base], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    result = runner.invoke(cli, ["send", "news", "--now", "yesterday", *base], env=env)
    assert result.exit_code != 0 and "ISO 8601" in result.output


def test_rendering_in_a_child_process_gives_the_same_messages(shop, smtp_server, tmp_path):
    use(shop, smtp_server)
    now = utcnow()  # the Date header comes from the clock: the same clock for both
    here = dry_run_campaign(shop, "news", now=now, out_dir=tmp_path / "here")
    there = send_campaign(
        shop, "news", now=now, dry_run=True, render_workers=1, out_dir=tmp_path / "there"
    )
    assert there.messages == here.messages and there.skipped == here.skipped
    for eml in (tmp_path / "here").glob("*.eml"):
        assert (tmp_path / "there" / eml.name).read_bytes() == eml.read_bytes()
    report = send_campaign(shop, "news", render_workers=1)
    assert report.states == {"sent": COUNT - 1, "failed": 1}
    assert len(smtp_server.recipients()) == COUNT - 1
