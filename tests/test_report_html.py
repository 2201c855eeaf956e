"""The HTML report: self-contained, in both languages, and clean in a real browser."""

from __future__ import annotations

import re

import pytest
from browser import CHROMIUM, open_page
from click.testing import CliRunner
from conftest import write_files
from test_report import FILES, T0, hand_made

from engine.cli import cli
from engine.project import open_project
from engine.reports import write_html_report

NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}  # names, not fetched


def add_bounce(engine) -> None:
    """The failed message of merchant 9 was refused: one attempt with the server's reply."""
    import sqlalchemy as sa

    from engine.models import attempts, messages

    with engine.begin() as conn:
        failed = conn.execute(sa.select(messages.c.id).where(messages.c.state == "failed")).scalar()
        conn.execute(
            attempts.insert(),
            {
                "message_id": failed,
                "at": T0,
                "smtp_code": 550,
                "enhanced_status": "5.1.1",
                "reply": "5.1.1 <m9@toko.id>: Recipient address rejected",
                "outcome": "bounced",
            },
        )


@pytest.fixture
def shop(project, project_dir):
    write_files(project_dir, FILES)
    hand_made(project.engine)
    add_bounce(project.engine)
    return project


def assert_self_contained(html: str) -> None:
    # url(#id) is the SVG's own clip path, in the file; any other url( would fetch.
    for pattern in (
        r"<script",
        r"<link",
        r"<img",
        r"<iframe",
        r"@import",
        r"url\((?!#)",
        r"\bsrc=",
    ):
        assert not re.search(pattern, html, re.I), pattern
    assert set(re.findall(r"(?:https?|wss?|ftp)://[^\s\"'<>)]+", html)) <= NAMESPACES


def test_html_report_in_english_and_indonesian(shop, project_dir, project_env, tmp_path):
    runner = CliRunner()
    base = ["--project", str(project_dir)]
    out = tmp_path / "report.html"
    result = runner.invoke(
        cli, ["report", "--html", str(out), "--locale", "en", *base], env=project_env
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stderr
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert len(html.encode()) < 300_000
    assert html.count("<svg") == 5  # promo: funnel, per day; winback: funnel, lift, per day
    # Step 1: 3 of 6 written to converted, 1 of 2 in the control group (figures of test_report).
    assert (
        "winback (step 1): 50.0% of merchants written to sold again within 7 days, against "
        "50.0% of the control group: +0.0 points (95% CI"
    ) in html
    assert "too few to conclude" in html
    assert "there is no control group, so no lift can be measured" in html  # promo
    assert "winback (step 3): nothing sent yet" in html
    assert "550 5.1.1 no such user" in html  # the failure reason of merchant 9
    assert "5.1.1 &lt;m9@toko.id&gt;: Recipient address rejected" in html  # and the reply

    result = runner.invoke(
        cli, ["report", "--html", str(out), "--locale", "id", *base], env=project_env
    )
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert '<html lang="id">' in html and "Laporan kampanye" in html
    assert "winback (langkah 1): 50,0% merchant yang dikirimi email kembali berjualan" in html
    assert_self_contained(html)


def test_names_from_the_outbox_are_escaped(shop, tmp_path):
    from engine.models import messages

    with shop.engine.begin() as conn:
        conn.execute(
            messages.update()
            .where(messages.c.state == "failed")
            .values(last_error="<b>550</b> & co")
        )
    report = write_html_report(shop, tmp_path / "r.html", locale="en")
    html = report.path.read_text(encoding="utf-8")
    assert "&lt;b&gt;550&lt;/b&gt; &amp; co" in html and "<b>550</b>" not in html


@pytest.fixture
def sqlite_shop(tmp_path):
    folder = tmp_path / "shop"
    write_files(folder, FILES)
    project = open_project(folder, env={"CAMPAIGN_DATABASE_URL": f"sqlite:///{folder / 'c.db'}"})
    hand_made(project.database())
    yield project
    project.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_report_opens_in_chromium_without_errors_or_requests(sqlite_shop, tmp_path):
    report = write_html_report(sqlite_shop, tmp_path / "report.html", locale="en")
    page = open_page(report.path.as_uri())
    assert page.loaded
    assert page.errors == []
    assert page.requests == [report.path.as_uri()]  # the file itself, nothing else


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_browser_check_sees_requests_and_errors(tmp_path):
    """The check above can fail: a page that fetches an image and throws is caught."""
    page_file = tmp_path / "bad.html"
    page_file.write_text(
        '<!doctype html><img src="http://192.0.2.1/x.png"><script>console.error("boom");'
        "missing();</script>",
        encoding="utf-8",
    )
    page = open_page(page_file.as_uri())
    assert "http://192.0.2.1/x.png" in page.requests
    assert "boom" in page.errors
    assert any("missing is not defined" in e for e in page.errors)
