"""Click tracking: link rewriting (pure), signed tokens, the campaign key, and the real redirect."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import REPO, write_files
from hypothesis import given
from hypothesis import strategies as st
from serve_server import add_merchant, add_message, running_server, table_rows
from template_fixtures import NOW, make_templates, merchant, stats

from engine.campaigns import Campaign, Step, load_campaigns
from engine.clock import FixedClock
from engine.config import load_settings
from engine.errors import ProblemList, TokenError
from engine.links import click_token, track_links, verify_click
from engine.messages import MessageBuilder
from engine.models import clicks
from engine.segments import load_segments
from engine.templates import TemplateSet
from engine.unsubscribe import Signer

SECRET = "test-secret-key"
SIGNER = Signer({1: SECRET})
BASE = "https://crm.example.id"
KEY = "winback/step-1/m-42"
CLICKED = datetime(2026, 12, 2, 5, 30)


def _track(html: str, text: str = "") -> tuple[str, str]:
    return track_links(html, text, base_url=BASE, message_key=KEY, signer=SIGNER)


def _targets(urls: list[str]) -> list[str]:
    return [verify_click(SIGNER, u.rsplit("/c/", 1)[1]).url for u in urls]


def test_html_links_are_rewritten_and_unsubscribe_mailto_and_anchors_are_not():
    unsubscribe = f"{BASE}/u/{SIGNER.token(42, 'retention')}"
    html = (
        '<p><a class="btn" href="https://toko.id/admin?a=1&amp;b=2">Buka</a> '
        "<a href='http://example.id/x'>x</a> "
        f'<a href="{unsubscribe}">Berhenti</a> '
        '<a href="mailto:bantuan@example.id">mail</a> <a href="#top">top</a> '
        '<a href="tel:+62123">tel</a> <img src="https://cdn.example.id/logo.png"></p>'
    )
    out, _ = _track(html)
    tracked = re.findall(r"""href=["']([^"']+/c/[^"']+)["']""", out)
    assert _targets(tracked) == ["https://toko.id/admin?a=1&b=2", "http://example.id/x"]
    for kept in (unsubscribe, "mailto:bantuan@example.id", "#top", "tel:+62123", "cdn.example.id"):
        assert kept in out


def test_text_urls_are_rewritten_without_their_trailing_punctuation():
    unsubscribe = f"{BASE}/u/{SIGNER.token(42, 'retention')}"
    text = (
        "Buka https://toko.id/admin?a=1&b=2. Lihat (https://id.wikipedia.org/wiki/Batik_(kain)), "
        f"atau mailto:bantuan@example.id.\nBerhenti: {unsubscribe}\n"
    )
    _, out = _track("", text)
    tracked = re.findall(r"https://crm\.example\.id/c/\d+\.[\w-]+\.[\w-]{43}", out)
    assert _targets(tracked) == [
        "https://toko.id/admin?a=1&b=2",
        "https://id.wikipedia.org/wiki/Batik_(kain)",
    ]
    assert re.search(r"/c/\d+\.[\w-]+\.[\w-]{43}\. Lihat \(", out)
    assert re.search(r"/c/\d+\.[\w-]+\.[\w-]{43}\), atau mailto:bantuan@example.id\.", out)
    assert out.endswith(f"Berhenti: {unsubscribe}\n")


def test_a_message_with_track_clicks_carries_tracked_links_in_both_parts(tmp_path):
    make_templates(tmp_path)
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})
    campaign = Campaign(
        name="winback", path=Path("campaigns/winback.yaml"), kind="drip", topic="retention",
        segment="dormant", sender="Tim <success@tokoku.id>",
        steps=(Step(1, "hello", timedelta(0), None),), track_clicks=True,
    )  # fmt: skip
    builder = MessageBuilder(settings, campaign, TemplateSet(settings.templates_dir, "id"))
    result = builder.render_one(merchant(), stats(), now=NOW, template="hello", step=1)
    message = email.message_from_bytes(result.data, policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    [button] = re.findall(r'class="btn"[^>]*href="([^"]+)"|href="([^"]+)"[^>]*class="btn"', html)[
        0:1
    ]
    link = next(part for part in button if part)
    assert link.startswith(f"{BASE}/c/")
    assert verify_click(SIGNER, link.rsplit("/c/", 1)[1]) == verify_click(
        SIGNER, click_token(SIGNER, KEY, "https://kopibudi.tokoku.id/admin?a=1&b=42")
    )
    assert f"{BASE}/u/{SIGNER.token(42, 'retention')}" in html  # unsubscribe left alone
    assert f"{BASE}/c/" in text
    untracked = MessageBuilder(
        settings, Campaign(**{**campaign.__dict__, "track_clicks": False}), builder.templates
    ).render_one(merchant(), stats(), now=NOW, template="hello", step=1)
    assert "/c/" not in untracked.html and "/c/" not in untracked.text


def test_track_clicks_in_a_campaign_file_is_a_flag(project_dir):
    shutil.copytree(REPO / "segments", project_dir / "segments")
    base = (
        "kind: broadcast\ntopic: promo\nsegment: high-potential\n"
        'from: "Promo <promo@example.id>"\ntemplate: promo/sale\n'
    )
    write_files(
        project_dir,
        {
            "templates/promo/sale.html": "---\nsubject: Sale\n---\n<p>Sale</p>\n",
            "campaigns/on.yaml": base + "track_clicks: true\n",
            "campaigns/off.yaml": base,
        },
    )
    settings = load_settings(project_dir, env={})
    found = load_campaigns(settings, load_segments(settings.segments_dir))
    assert (found["on"].track_clicks, found["off"].track_clicks) == (True, False)
    write_files(project_dir, {"campaigns/bad.yaml": base + "track_clicks: yes please\n"})
    with pytest.raises(ProblemList, match=r"bad.yaml:6: .*track_clicks must be true or false"):
        load_campaigns(settings, load_segments(settings.segments_dir))


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_changed_byte_of_a_click_token_is_refused(position, value):
    token = click_token(SIGNER, KEY, "https://toko.id/p?x=1")
    at = position % len(token)
    if token[at] == chr(value):
        return
    forged = token[:at] + chr(value) + token[at + 1 :]
    with pytest.raises(TokenError):
        verify_click(SIGNER, forged)


def test_click_and_unsubscribe_tokens_are_not_interchangeable():
    with pytest.raises(TokenError):
        verify_click(SIGNER, SIGNER.token(42, "retention"))
    with pytest.raises(TokenError):
        SIGNER.verify(click_token(SIGNER, KEY, "https://toko.id/"))
    with pytest.raises(TokenError):
        verify_click(Signer({1: "other"}), click_token(SIGNER, KEY, "https://toko.id/"))


@pytest.fixture
def served(project):
    add_merchant(project.engine, 42)
    add_message(project.engine, 42, key=KEY)
    with (
        running_server(project, FixedClock(CLICKED)) as base,
        httpx.Client(base_url=base) as client,
    ):
        yield client


def test_click_redirects_with_302_and_records_message_link_and_time(project, served):
    token = click_token(SIGNER, KEY, "https://toko.id/admin?a=1&b=2")
    answer = served.get(f"/c/{token}")
    assert answer.status_code == 302
    assert answer.headers["location"] == "https://toko.id/admin?a=1&b=2"
    assert "set-cookie" not in answer.headers
    served.get(f"/c/{token}")
    assert served.head(f"/c/{token}").status_code == 302  # a link checker: not a click
    rows = table_rows(project.engine, clicks)
    assert [(r["url"], r["clicked_at"]) for r in rows] == [
        ("https://toko.id/admin?a=1&b=2", CLICKED)
    ] * 2


@pytest.mark.parametrize(
    "token",
    [
        click_token(SIGNER, KEY, "https://toko.id/")[:-1] + "A",  # altered signature
        click_token(Signer({1: "attacker"}), KEY, "https://evil.example/"),  # forged
        "1." + click_token(SIGNER, KEY, "https://evil.example/").split(".")[1] + "." + "A" * 43,
        click_token(SIGNER, "promo/run-x/m-42", "https://toko.id/"),  # a message not in the outbox
        click_token(SIGNER, KEY, "javascript:alert(1)"),  # never a redirect to anything but http(s)
        "not-a-token",
        "",
    ],
)
def test_bad_click_tokens_get_4xx_and_never_redirect(project, served, token):
    answer = served.get(f"/c/{token}")
    assert 400 <= answer.status_code < 500
    assert "location" not in answer.headers
    assert table_rows(project.engine, clicks) == []
