"""Stats for a batch in one query, render_batch over a real database, and the commands."""

from __future__ import annotations

import email
import email.policy
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import REPO
from template_fixtures import NOW, make_templates
from test_messages import SECRET, _campaign

from engine.cli import cli
from engine.config import load_settings
from engine.messages import MessageBuilder, RenderedMessage
from engine.models import merchants, orders
from engine.stats import batch_stats
from engine.templates import TemplateSet


def _merchant_row(number: int, **overrides):
    row = {
        "id": number, "external_id": f"m-{number}", "email": f"toko{number}@contoh.id",
        "name": f"Pemilik {number}", "store_name": f"Toko {number}", "store_url": f"https://toko{number}.tokoku.id",
        "plan": "basic", "category": "food", "city": "Jakarta", "locale": "id" if number % 3 else "en",
        "timezone": "Asia/Jakarta", "status": "active", "created_at": NOW - timedelta(days=400),
        "last_login_at": None, "attributes": {"tier": "gold"},
    }  # fmt: skip
    row.update(overrides)
    return row


def _order(merchant_id: int, ref: str, amount: int, at: datetime, status: str = "paid"):
    return {
        "merchant_id": merchant_id,
        "order_ref": ref,
        "amount": amount,
        "status": status,
        "placed_at": at,
    }


@pytest.fixture
def seeded(engine):
    with engine.begin() as conn:
        conn.execute(sa.insert(merchants), [_merchant_row(i) for i in range(1, 31)])
        conn.execute(
            sa.insert(orders),
            [
                # merchant 1: 2 orders in the last 30 days, 1 before, a cancelled and a refunded one
                _order(1, "a", 100_000, NOW - timedelta(days=1)),
                _order(1, "b", 50_000, NOW - timedelta(days=29)),
                _order(1, "c", 300_000, NOW - timedelta(days=45)),
                _order(1, "d", 999_000, NOW - timedelta(days=2), "cancelled"),
                _order(1, "e", 999_000, NOW - timedelta(days=3), "refunded"),
                # merchant 2: exactly on the edges, plus one in the future and one long ago
                _order(2, "a", 10_000, NOW),
                _order(2, "b", 20_000, NOW - timedelta(days=30)),
                _order(2, "c", 40_000, NOW - timedelta(days=60)),
                _order(2, "d", 80_000, NOW + timedelta(seconds=1)),
                _order(2, "e", 5_000, NOW - timedelta(days=300)),
                # merchant 3: only old orders -> last_order_at, zeros in both windows
                _order(3, "a", 70_000, NOW - timedelta(days=200)),
            ],
        )
    return engine


def test_stats_follow_the_window_rules(seeded):
    with seeded.connect() as conn:
        stats = batch_stats(conn, [1, 2, 3, 4], now=NOW)
    assert stats[1] == {
        "revenue_30d": 150_000, "revenue_prev_30d": 300_000, "revenue_change_30d": -0.5,
        "orders_30d": 2, "orders_prev_30d": 1, "last_order_at": NOW - timedelta(days=1),
    }  # fmt: skip
    # [now-30d, now] includes both ends; the earlier window [now-60d, now-30d) excludes its upper end.
    assert stats[2]["revenue_30d"] == 30_000 and stats[2]["orders_30d"] == 2
    assert stats[2]["revenue_prev_30d"] == 40_000 and stats[2]["orders_prev_30d"] == 1
    assert stats[2]["revenue_change_30d"] == pytest.approx(-0.25)
    assert stats[2]["last_order_at"] == NOW
    assert stats[3] == {
        "revenue_30d": 0, "revenue_prev_30d": 0, "revenue_change_30d": None,
        "orders_30d": 0, "orders_prev_30d": 0, "last_order_at": NOW - timedelta(days=200),
    }  # fmt: skip
    assert stats[4]["last_order_at"] is None and stats[4]["revenue_30d"] == 0


def _count_queries(engine):
    seen: list[str] = []

    def listener(conn, cursor, statement, *args):
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", listener)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", listener)


def test_render_batch_uses_one_stats_query_for_the_whole_batch(seeded, tmp_path):
    make_templates(tmp_path)
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})
    builder = MessageBuilder(settings, _campaign(), TemplateSet(settings.templates_dir, "id"))
    with seeded.connect() as conn:
        rows = [
            dict(r) for r in conn.execute(sa.select(merchants).order_by(merchants.c.id)).mappings()
        ]
        seen, stop = _count_queries(seeded)
        try:
            results = builder.render_batch(conn, rows, now=NOW, template="hello", step=1)
        finally:
            stop()
    assert len(seen) == 1 and "orders" in seen[0]
    assert len(results) == 30 and all(isinstance(r, RenderedMessage) for r in results)
    first = email.message_from_bytes(results[0].data, policy=email.policy.default)
    assert "Omzet Rp150.000 (-50%)" in first.get_body(("html",)).get_content()
    english = next(r for r in results if r.merchant_id == 3)
    assert english.subject == "Hello Toko 3"


def _example_project(tmp_path, engine_url):
    project = tmp_path / "example"
    for name in ("segments", "campaigns", "templates"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, project / name)
    if (REPO / "campaign.toml").exists():
        shutil.copy(REPO / "campaign.toml", project / "campaign.toml")
    return project


def test_render_command_writes_eml_and_html(seeded, tmp_path, db_url):
    project = _example_project(tmp_path, db_url)
    campaigns = sorted(p.stem for p in (project / "campaigns").glob("*.yaml"))
    if not campaigns:
        pytest.skip("no example campaigns yet")
    env = {"CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SECRET_KEY": SECRET}
    runner = CliRunner()
    out = tmp_path / "out"
    for name in campaigns:
        result = runner.invoke(
            cli,
            [
                "render",
                name,
                "--merchant",
                "1",
                "--out",
                str(out),
                "--now",
                NOW.isoformat(),
                "--project",
                str(project),
            ],
            env=env,
        )
        assert result.exit_code == 0, result.output
        eml, html = result.output.split()
        message = email.message_from_bytes(Path(eml).read_bytes(), policy=email.policy.default)
        assert message["To"] == "Pemilik 1 <toko1@contoh.id>"
        assert Path(html).read_text(encoding="utf-8").lower().startswith("<!doctype html>")
    summary = runner.invoke(
        cli,
        [
            "render",
            campaigns[0],
            "--merchant",
            "toko2@contoh.id",
            "--now",
            NOW.isoformat(),
            "--project",
            str(project),
        ],
        env=env,
    )
    assert summary.exit_code == 0, summary.output
    assert "To: Pemilik 2 <toko2@contoh.id>" in summary.output and "Subject: " in summary.output
    missing = runner.invoke(
        cli, ["render", campaigns[0], "--merchant", "999", "--project", str(project)], env=env
    )
    assert missing.exit_code == 1 and "no merchant '999'" in missing.output


def test_render_of_a_hostile_store_name_is_one_clear_sentence(seeded, tmp_path, db_url):
    """A line feed in merchant data refuses that message, naming the merchant once."""
    with seeded.begin() as conn:
        conn.execute(
            sa.update(merchants).where(merchants.c.id == 4).values(store_name="Toko\nBcc: x@y.id")
        )
    project = _example_project(tmp_path, db_url)
    env = {"CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SECRET_KEY": SECRET}
    result = CliRunner().invoke(
        cli,
        ["render", "promo-harbolnas-1212", "--merchant", "4", "--project", str(project)],
        env=env,
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip() == (
        "Error: merchant 4 (toko4@contoh.id): subject contains a line feed (LF)"
    )
    # The dry run of a campaign that reaches that merchant says the same, once.
    (project / "segments" / "only-four.yaml").write_text("rules: {field: id, eq: 4}\n")
    (project / "campaigns" / "to-four.yaml").write_text(
        "kind: broadcast\ntopic: promo\nsegment: only-four\nfrom: a@example.id\n"
        "template: promo/harbolnas-1212\n"
    )
    result = CliRunner().invoke(
        cli, ["send", "to-four", "--dry-run", "--project", str(project)], env=env
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "render error for merchant 4 (toko4@contoh.id): subject contains a line feed (LF)"
    )


def test_check_passes_on_the_example_project(tmp_path, db_url, seeded):
    project = _example_project(tmp_path, db_url)
    env = {"CAMPAIGN_DATABASE_URL": db_url}
    result = CliRunner().invoke(
        cli, ["check", "--now", NOW.isoformat(), "--project", str(project)], env=env
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK:")  # warnings (e.g. no activities yet) go to stderr


def test_check_reports_every_problem_with_file_and_line(tmp_path):
    project = tmp_path / "broken"
    make_templates(
        project,
        {
            "templates/bad-syntax.id.html": '---\nsubject: "x"\n---\n<p>{{ merchant.name </p>\n',
            "templates/bad-var.id.html": '---\nsubject: "x"\n---\n<p>ok</p>\n<p>{{ merchant.nick }}</p>\n',
            "templates/bad-front.id.html": '---\nsubjct: "x"\n---\n<p>x</p>\n',
            "templates/only-en.en.html": '---\nsubject: "x"\n---\n<p>x</p>\n',
        },
    )
    result = CliRunner().invoke(
        cli,
        ["check", "--project", str(project)],
        env={"CAMPAIGN_DATABASE_URL": f"sqlite:///{tmp_path}/none.db"},
    )
    assert result.exit_code == 1
    out = result.output
    assert "bad-syntax.id.html:4: template syntax" in out
    assert "bad-var.id.html:5: undefined" in out and "nick" in out
    assert "bad-front.id.html:2: unknown front matter key 'subjct'" in out
    assert "no template 'only-en'" in out
    assert "hello" not in out.replace("hello.", "")  # the good templates are not reported
