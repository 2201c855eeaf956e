"""Returned mail: real-world bounce formats, matching, suppression, soft limits, idempotent imports."""

from __future__ import annotations

import json
import mailbox
from dataclasses import replace
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_server import add_merchant, add_message, table_rows

from engine.bounces import envelope_sender, import_bounces
from engine.bounces.parse import AUTO_REPLY, BOUNCE, DELAYED, classify
from engine.cli import cli
from engine.engagement import engagement_counts
from engine.errors import BounceError
from engine.models import bounces, suppressions
from engine.project import open_project
from engine.return_path import message_from_verp

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
NOW = datetime(2026, 12, 2, 6, 0)
SECRET = "test-secret-key"

# fixture: (kind, address, hard or soft, status)
FORMATS = {
    "postfix-hard.eml": (BOUNCE, "seller1@contoh.id", "hard", "5.1.1"),
    "exim-hard.eml": (BOUNCE, "seller2@hostingku.id", "hard", "5.1.1"),
    "exchange-hard.eml": (BOUNCE, "seller3@perusahaan.co.id", "hard", "5.1.10"),
    "gmail-hard.eml": (BOUNCE, "seller4@gmail.com", "hard", "5.1.1"),
    "qmail-verp.eml": (BOUNCE, "seller5@qmailhost.id", "hard", "5.1.1"),
    "soft-mailbox-full.eml": (BOUNCE, "seller7@penuh.id", "soft", "4.2.2"),
    "unknown-message.eml": (BOUNCE, "someone@lain.id", "hard", "5.1.1"),
    "postfix-delayed.eml": (DELAYED, None, None, None),
    "autoreply-out-of-office.eml": (AUTO_REPLY, None, None, None),
    "autoreply-x-autoreply.eml": (AUTO_REPLY, None, None, None),
    "autoreply-subject.eml": (AUTO_REPLY, None, None, None),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_real_world_format_is_read(name):
    kind, address, severity, status = FORMATS[name]
    returned = classify((FIXTURES / name).read_bytes())
    assert returned.kind == kind
    if kind == BOUNCE:
        worst = returned.worst()
        assert (worst.address, worst.kind, worst.status) == (address, severity, status)
    else:
        assert returned.failures == ()


def _soft(message_id: str, date: datetime, number: int) -> bytes:
    """The soft-bounce fixture for another message, written at ``date``."""
    text = (FIXTURES / "soft-mailbox-full.eml").read_text()
    text = text.replace("<ORIGINAL-MESSAGE-ID>", message_id)
    text = text.replace("<SOFT-BOUNCE-ID@relay.penuh.id>", f"<soft-{number}@relay.penuh.id>")
    text = text.replace("Wed, 25 Nov 2026 08:00:00 +0000", format_datetime(date))
    return text.encode()


@pytest.fixture
def outbox(project_dir, project_env):
    """The sent messages the fixtures are about (row ids and Message-IDs as in the mail)."""
    (project_dir / "campaign.toml").write_text(
        '[delivery]\nreturn_path = "bounces@tokoku.id"\n[limits]\nsoft_bounce_limit = 3\n'
    )
    project = open_project(project_dir, env=project_env)
    engine = project.database()
    emails = {1: "seller1@contoh.id", 2: "seller2@hostingku.id", 3: "seller3@perusahaan.co.id",
              4: "seller4@gmail.com", 5: "seller5@qmailhost.id", 6: "seller6@lambat.id",
              7: "seller7@penuh.id", 8: "seller8@kantor.id", 9: "seller9@yahoo.co.id",
              10: "seller10@perusahaan.co.id"}  # fmt: skip
    for mid, address in emails.items():
        add_merchant(engine, mid, email=address)
    add_message(
        engine,
        1,
        key="winback/step-1/m-1",
        message_id="<winback.step-1.m-1.5d41402abc4b@tokoku.id>",
        row_id=1,
    )
    add_message(
        engine,
        2,
        key="winback/step-1/m-2",
        message_id="<winback.step-1.m-2.7e8f9a0b1c2d@tokoku.id>",
        row_id=2,
    )
    add_message(
        engine,
        3,
        key="promo-1212/run-2026-12-01T03:00/m-3",
        campaign="promo-1212",
        step=None,
        run="2026-12-01T03:00",
        topic="promo",
        message_id="<promo-1212.run-2026-12-01T03.00.m-3.0c1d2e3f4a5b@tokoku.id>",
        row_id=3,
    )
    add_message(
        engine,
        4,
        key="onboarding-welcome/step-2/m-4",
        campaign="onboarding-welcome",
        step=2,
        message_id="<onboarding-welcome.step-2.m-4.9a8b7c6d5e4f@tokoku.id>",
        row_id=4,
    )
    add_message(engine, 5, key="winback/step-1/m-5", message_id=None, row_id=5)  # VERP only
    add_message(
        engine,
        6,
        key="winback/step-1/m-6",
        message_id="<winback.step-1.m-6.3c4d5e6f7a8b@tokoku.id>",
        row_id=6,
    )
    for step in (1, 2, 3, 4):
        add_message(engine, 7, key=f"winback/step-{step}/m-7", step=step,
                    message_id=f"<winback.step-{step}.m-7@tokoku.id>", row_id=70 + step)  # fmt: skip
    yield project
    project.close()


def _mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(path, create=True)
    for data in messages:
        box.add(data)
    box.close()
    return path


def _all_fixtures() -> list[bytes]:
    items = [(FIXTURES / n).read_bytes() for n in sorted(FORMATS) if n != "soft-mailbox-full.eml"]
    return [*items, _soft("<winback.step-1.m-7@tokoku.id>", datetime(2026, 11, 25, 8), 1)]


def _state(project) -> tuple[list, list]:
    engine = project.engine
    marks = [(r["email"], r["topic"], r["reason"]) for r in table_rows(engine, suppressions)]
    rows = [
        (r["message_id"], r["email"], r["kind"], r["status"]) for r in table_rows(engine, bounces)
    ]
    return sorted(marks), sorted(rows)


HARD = ["seller1@contoh.id", "seller2@hostingku.id", "seller3@perusahaan.co.id",
        "seller4@gmail.com", "seller5@qmailhost.id"]  # fmt: skip
EXPECTED = {"read": 11, "hard": 5, "soft": 1, "delayed": 1, "auto_replies": 3, "unmatched": 1,
            "not_bounces": 0, "already_imported": 0, "suppressed": 5}  # fmt: skip


def test_an_mbox_of_every_format_imported_twice_changes_nothing_the_second_time(outbox, tmp_path):
    path = _mbox(tmp_path / "bounces.mbox", _all_fixtures())
    report = import_bounces(outbox.engine, outbox.settings, path, now=NOW)
    assert report.as_dict() == EXPECTED
    marks, rows = _state(outbox)
    assert marks == sorted((e, "*", "hard_bounce") for e in HARD)  # not 6 (delayed) nor 7 (soft)
    assert rows == sorted(
        [(i, e, "hard", s) for i, e, s in zip(range(1, 6), HARD, ["5.1.1", "5.1.1", "5.1.10", "5.1.1", "5.1.1"], strict=True)]
        + [(71, "seller7@penuh.id", "soft", "4.2.2")]
    )  # fmt: skip
    again = import_bounces(outbox.engine, outbox.settings, path, now=NOW + timedelta(hours=1))
    assert again.as_dict() == {
        **EXPECTED,
        "hard": 0,
        "soft": 0,
        "suppressed": 0,
        "already_imported": 6,
    }
    assert _state(outbox) == (marks, rows)


def test_a_maildir_is_read_too(outbox, tmp_path):
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for data in _all_fixtures():
        box.add(data)
    box.close()
    report = import_bounces(outbox.engine, outbox.settings, tmp_path / "Maildir", now=NOW)
    assert report.as_dict() == EXPECTED


def test_soft_bounces_suppress_at_the_limit_within_30_days(outbox, tmp_path):
    spread = [datetime(2026, 10, 1), datetime(2026, 11, 5), datetime(2026, 11, 20)]  # 50 days apart
    path = _mbox(tmp_path / "spread.mbox", [
        _soft(f"<winback.step-{n}.m-7@tokoku.id>", at, n) for n, at in enumerate(spread, start=1)
    ])  # fmt: skip
    report = import_bounces(outbox.engine, outbox.settings, path, now=NOW)
    assert (report.soft, report.suppressed) == (3, [])
    later = _mbox(
        tmp_path / "later.mbox", [_soft("<winback.step-4.m-7@tokoku.id>", datetime(2026, 12, 1), 4)]
    )
    report = import_bounces(outbox.engine, outbox.settings, later, now=NOW)
    # 5 Nov, 20 Nov and 1 Dec: three within 30 days, the limit.
    assert (report.soft, report.suppressed) == (1, ["seller7@penuh.id"])
    [mark] = table_rows(outbox.engine, suppressions)
    assert (mark["email"], mark["topic"], mark["reason"]) == (
        "seller7@penuh.id",
        "*",
        "soft_bounce",
    )


def test_verp_return_paths_are_signed(outbox):
    settings = outbox.settings
    assert envelope_sender(settings, 5) == "bounces+5-e809057098@tokoku.id"  # as in qmail-verp.eml
    assert message_from_verp(settings, ["Bounces+5-E809057098@tokoku.id"]) == 5
    assert message_from_verp(settings, ["bounces+6-e809057098@tokoku.id"]) is None  # forged
    assert message_from_verp(settings, ["bounces+5-e809057099@tokoku.id"]) is None
    plain = replace(settings, delivery=replace(settings.delivery, return_path=None))
    assert envelope_sender(plain, 5) is None  # no return_path: the delivery layer uses From
    assert message_from_verp(plain, ["bounces+5-e809057098@tokoku.id"]) is None


def test_report_counts_clicks_and_bounces_per_campaign_step(outbox, tmp_path):
    import_bounces(
        outbox.engine, outbox.settings, _mbox(tmp_path / "b.mbox", _all_fixtures()), now=NOW
    )
    counts = engagement_counts(outbox.engine)
    assert counts[("winback", 1, None)] == {
        "clicks": 0,
        "unique_clicks": 0,
        "bounced": 3,
        "soft_bounces": 1,
    }
    assert counts[("promo-1212", None, "2026-12-01T03:00")]["bounced"] == 1
    assert counts[("onboarding-welcome", 2, None)]["bounced"] == 1
    assert engagement_counts(outbox.engine, since=datetime(2026, 12, 1)).get(("winback", 1, None)) == {
        "clicks": 0, "unique_clicks": 0, "bounced": 3, "soft_bounces": 0}  # fmt: skip
    assert engagement_counts(outbox.engine, until=datetime(2026, 11, 1)) == {}
    assert set(engagement_counts(outbox.engine, campaign="promo-1212")) == {
        ("promo-1212", None, "2026-12-01T03:00")
    }


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: (p.write_text("hello, this is not mail\n"), p)[1], "not an mbox file"),
        (lambda p: p.mkdir() or p, "not a Maildir"),
        (lambda p: p, "no such file or folder"),
    ],
)
def test_a_bad_file_is_one_clear_error(outbox, tmp_path, make, words):
    path = make(tmp_path / "thing")
    with pytest.raises(BounceError, match=words):
        import_bounces(outbox.engine, outbox.settings, path, now=NOW)
    result = CliRunner().invoke(cli, ["bounces", "import", str(path), "--project", str(outbox.root)],
                                env={"CAMPAIGN_DATABASE_URL": outbox.settings.database_url})  # fmt: skip
    assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output


def test_the_command_prints_what_it_did(outbox, tmp_path):
    path = _mbox(tmp_path / "b.mbox", _all_fixtures())
    env = {"CAMPAIGN_DATABASE_URL": outbox.settings.database_url, "CAMPAIGN_SECRET_KEY": SECRET}
    args = ["bounces", "import", str(path), "--project", str(outbox.root), "--now", NOW.isoformat()]
    result = CliRunner().invoke(cli, [*args, "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == EXPECTED
    table = CliRunner().invoke(cli, args, env=env)
    assert table.exit_code == 0 and "already_imported" in table.output and "11" in table.output
