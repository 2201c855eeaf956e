"""Parsing what strangers send: settings of the HTTP side, links to rewrite, returned mail (property tests)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.bounces.parse import classify
from engine.config import load_settings
from engine.errors import SettingsError
from engine.links import track_links, verify_click
from engine.unsubscribe import Signer

SIGNER = Signer({1: "test-secret-key"})
BASE = "https://crm.example.id"


def test_serve_delivery_and_limits_settings_have_defaults(tmp_path):
    found = load_settings(tmp_path, env={})
    assert found.serve.max_body == 1024 * 1024 and found.serve.trusted_proxies == ()
    assert found.delivery.return_path is None and found.limits.soft_bounce_limit == 3
    assert found.api_token is None
    with_token = load_settings(tmp_path, env={"CAMPAIGN_API_TOKEN": "t0ken"})
    assert with_token.api_token.reveal() == "t0ken" and "t0ken" not in repr(with_token)


def test_serve_settings_are_read(tmp_path):
    (tmp_path / "campaign.toml").write_text(
        '[serve]\nmax_body = "512KiB"\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n'
        '[delivery]\nreturn_path = "Bounces@Tokoku.ID"\n[limits]\nsoft_bounce_limit = 5\n'
    )
    found = load_settings(tmp_path, env={})
    assert found.serve.max_body == 512 * 1024
    assert found.serve.trusted_proxies == ("10.0.0.0/8", "::1")
    assert found.delivery.return_path == "bounces@tokoku.id"
    assert found.limits.soft_bounce_limit == 5


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[serve]\nmax_body = "lots"\n', 2, "serve.max_body: 'lots' is not a size"),
        ("[serve]\nmax_body = 0\n", 2, "serve.max_body: 0 is not a whole number above zero"),
        ('[serve]\ntrusted_proxies = ["proxy.local"]\n', 2, "'proxy.local' is not an IP address"),
        ('[serve]\nport = 80\n', 2, "serve.port: unknown key"),
        ('[delivery]\nreturn_path = "not an address"\n', 2, "delivery.return_path"),
        ("[limits]\nsoft_bounce_limit = -1\n", 2, "limits.soft_bounce_limit"),
    ],
)  # fmt: skip
def test_bad_serve_settings_name_file_line_and_key(tmp_path, text, line, words):
    (tmp_path / "campaign.toml").write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path, env={})
    assert str(caught.value).startswith(f"{tmp_path / 'campaign.toml'}:{line}: ")
    assert words in str(caught.value)


_URL_CHARS = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"'<>`"),
    min_size=1, max_size=40,
)  # fmt: skip


@given(
    st.sampled_from(["http", "https", "HTTPS"]),
    st.from_regex(r"[a-z0-9-]{1,20}\.id", fullmatch=True),
    _URL_CHARS,
)
def test_any_html_link_is_tracked_and_leads_back_to_itself(scheme, host, rest):
    url = f"{scheme}://{host}/{rest}"
    html = f'<p><a href="{url.replace("&", "&amp;")}">x</a></p>'
    out, _ = track_links(html, "", base_url=BASE, message_key="k/step-1/m-1", signer=SIGNER)
    [tracked] = re.findall(r'href="([^"]+)"', out)
    assert tracked.startswith(f"{BASE}/c/")
    assert verify_click(SIGNER, tracked.rsplit("/c/", 1)[1]).url == url


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.builds(
            lambda headers, body: (headers + "\n\n" + body).encode("utf-8", "surrogatepass"),
            st.sampled_from([
                "Content-Type: multipart/report; report-type=delivery-status; boundary=b",
                "Content-Type: message/delivery-status",
                "Auto-Submitted: auto-replied\nFrom: MAILER-DAEMON@x.id",
                "X-Failed-Recipients: a@b.id\nSubject: Mail delivery failed",
                "Date: not a date\nMessage-ID: <x@y>",
            ]),
            st.text(max_size=500),
        ),
    )
)  # fmt: skip
def test_classify_reads_anything_without_raising(data):
    returned = classify(data)
    assert returned.kind in ("bounce", "delayed", "auto_reply", "other")
    assert len(returned.fingerprint) == 64
