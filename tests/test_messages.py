"""Complete messages: headers and parts parsed back, header safety, failures per merchant, DKIM."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from template_fixtures import NOW, make_templates, merchant, stats

from engine.campaigns import Campaign, Step
from engine.config import load_settings
from engine.errors import CampaignError, DeliveryError, HeaderError
from engine.messages import (
    MessageBuilder,
    RenderedMessage,
    RenderFailure,
    check_header_value,
    encode_body,
    header_address,
    message_id,
)
from engine.templates import TemplateSet
from engine.unsubscribe import Signer

SECRET = "test-secret-key"


def _campaign(**overrides) -> Campaign:
    values = dict(
        name="winback", path=Path("campaigns/winback.yaml"), kind="drip", topic="retention",
        segment="dormant", sender="Tim User Success <success@tokoku.id>", reply_to="bantuan@tokoku.id",
        steps=(Step(1, "hello", timedelta(0), None), Step(2, "lists/loops", timedelta(days=3), None)),
    )  # fmt: skip
    values.update(overrides)
    return Campaign(**values)


@pytest.fixture
def builder(tmp_path) -> MessageBuilder:
    make_templates(tmp_path)
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})
    return MessageBuilder(settings, _campaign(), TemplateSet(settings.templates_dir, "id"))


def _render(builder, row=None, data=None, **kw) -> RenderedMessage | RenderFailure:
    kw.setdefault("template", "hello")
    kw.setdefault("step", 1)
    return builder.render_one(row or merchant(), data or stats(), now=NOW, **kw)


def _parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_message_parses_back_to_exactly_the_intended_headers_and_parts(builder):
    result = _render(builder)
    assert isinstance(result, RenderedMessage)
    message = _parse(result.data)
    assert message.keys() == [
        "From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
        "List-Unsubscribe-Post", "List-Id", "MIME-Version", "Content-Type",
    ]  # fmt: skip
    assert message["From"] == "Tim User Success <success@tokoku.id>"
    assert message["To"] == "Budi Santoso <budi@contoh.id>"
    assert message["Reply-To"] == "bantuan@tokoku.id"
    assert message["Subject"] == "Halo Kopi Budi" == result.subject
    assert parsedate_to_datetime(message["Date"]).replace(tzinfo=None) == NOW
    assert message["Message-ID"] == result.message_id
    assert result.message_id.endswith("@tokoku.id>") and "winback.step-1.m-42" in result.message_id
    token = Signer({1: SECRET}).token(42, "retention")
    assert message["List-Unsubscribe"] == (
        f"<https://crm.example.id/u/{token}>, <mailto:unsubscribe@example.id?subject=unsubscribe%20{token}>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "Retention <retention.tokoku.id>"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    assert not message.defects
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part, expected, cte in zip(
        parts, (result.text, result.html), ("quoted-printable", "base64"), strict=True
    ):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == cte
        assert part.get_content().replace("\r\n", "\n") == expected
        assert not part.defects
    assert f"https://crm.example.id/u/{token}" in result.html and token in result.text
    # Every line within the SMTP limit, CRLF everywhere.
    assert all(len(line) <= 998 for line in result.data.split(b"\r\n"))
    assert b"\n" not in result.data.replace(b"\r\n", b"")


def test_compat32_parser_agrees(builder):
    result = _render(builder)
    message = email.message_from_bytes(result.data)
    assert message.is_multipart() and len(message.get_payload()) == 2
    text = message.get_payload()[0].get_payload(decode=True).decode("utf-8")
    assert text.replace("\r\n", "\n") == result.text


def test_non_ascii_names_and_long_subjects_round_trip(tmp_path):
    long_subject = "Toko {{ merchant.store_name }}: " + "penawaran spesial minggu ini " * 4
    make_templates(
        tmp_path,
        {
            "templates/long.id.html": f'---\nsubject: "{long_subject}"\n---\n<p>Ünïcödé ✓ {{{{ merchant.name }}}}</p>\n'
        },
    )
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})
    campaign = _campaign(sender="Tim Sukses Penjual — Tokoku <success@tokoku.id>")
    builder = MessageBuilder(settings, campaign, TemplateSet(settings.templates_dir, "id"))
    row = merchant(name="Śri Wahyuni 王", store_name="Warung Ñoño ☕")
    result = _render(builder, row, template="long")
    message = _parse(result.data)
    assert message["Subject"] == result.subject and result.subject.startswith(
        "Toko Warung Ñoño ☕: penawaran"
    )
    assert message["To"].addresses[0].display_name == "Śri Wahyuni 王"
    assert message["To"].addresses[0].addr_spec == "budi@contoh.id"
    assert message["From"].addresses[0].display_name == "Tim Sukses Penjual — Tokoku"
    assert "Ünïcödé ✓ Śri Wahyuni 王" in message.get_body(("html",)).get_content()
    # Folded to 78 (URLs in List-Unsubscribe cannot be broken; they stay far below 998).
    head = result.data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(
        len(line) <= 78 for line in head if b"<https://" not in line and b"<mailto:" not in line
    )


def test_locale_of_the_merchant_picks_the_variant(builder):
    result = _render(builder, merchant(locale="en"))
    assert result.subject == "Hello Kopi Budi" and "December 5, 2026" in result.html


def test_message_id_is_stable_and_unique_per_key(builder):
    first, again = _render(builder), _render(builder)
    assert first.message_id == again.message_id and first.data == again.data
    other = _render(builder, merchant(id=43))
    step2 = _render(builder, template="lists/loops", step=2)
    assert len({first.message_id, other.message_id, step2.message_id}) == 3
    assert first.key == "winback/step-1/m-42" and step2.key == "winback/step-2/m-42"
    assert message_id("promo/run-2026-12-12T02:00/m-4", "x.id") != message_id(
        "promo/run-2026-12-12T02.00/m-4", "x.id"
    )


def test_broadcast_key_uses_the_run(tmp_path):
    make_templates(tmp_path)
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})
    campaign = _campaign(
        kind="broadcast", name="promo-1212", topic="promo", steps=(), template="hello"
    )
    builder = MessageBuilder(settings, campaign, TemplateSet(settings.templates_dir, "id"))
    result = builder.render_one(
        merchant(), stats(), now=NOW, template="hello", run="2026-12-12T02:00"
    )
    assert result.key == "promo-1212/run-2026-12-12T02:00/m-42"
    assert _parse(result.data)["List-Id"] == "Promo <promo.tokoku.id>"


# --- header safety -------------------------------------------------------------------


INJECTIONS = [
    "Budi\r\nBcc: victim@example.com",
    "Budi\x85Bcc: victim@example.com",
    "Budi\u2028Bcc: victim@example.com",
    "Budi\nBcc: victim@example.com",
    "Budi\rX-Evil: 1",
    "Budi\x00",
    "=?utf-8?q?Budi=0D=0ABcc:_victim@example.com?=",
    "Budi =?UTF-8?B?QmNjOiB2aWN0aW0=?= Santoso",
    "Budi\x0bSantoso",
]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injection_in_the_name_is_refused_for_that_merchant(builder, bad):
    result = _render(builder, merchant(name=bad))
    assert isinstance(result, RenderFailure)
    assert result.reason.startswith("merchant 42: name contains")


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injection_through_the_subject_is_refused(builder, bad):
    result = _render(builder, merchant(store_name=bad))
    assert isinstance(result, RenderFailure)
    assert "merchant 42: subject contains" in result.reason


def test_injection_in_the_campaign_sender_is_refused(tmp_path):
    make_templates(tmp_path)
    settings = load_settings(tmp_path, env={})
    templates = TemplateSet(settings.templates_dir, "id")
    for sender in (
        "Evil\r\nBcc: x@y.id <a@b.id>",
        "=?utf-8?q?x?= <a@b.id>",
        "a@b.id\nBcc: c@d.id",
        "not an address",
    ):
        with pytest.raises(HeaderError, match="campaign winback: from"):
            MessageBuilder(settings, _campaign(sender=sender), templates)


def test_address_parsing_is_strict():
    assert header_address("Tim <Success@Tokoku.id>", "from") == ("Tim", "success@tokoku.id")
    assert header_address('"Tim, Sukses" <a@b.id>', "from") == ("Tim, Sukses", "a@b.id")
    assert header_address("a@b.id", "from") == (None, "a@b.id")
    for bad in ("a@b", "<a@b.id> <c@d.id>", "a@b.id, c@d.id", '"x" <"q"@b.id>', "a@[1.2.3.4]"):
        with pytest.raises(HeaderError):
            header_address(bad, "from")


def test_check_header_value_accepts_ordinary_text():
    assert check_header_value("Toko Budi & Co — 12.12 = hemat? ya!", "subject")
    with pytest.raises(HeaderError, match="line feed"):
        check_header_value("a\nb", "subject")


def test_qp_body_encoding_round_trips():
    text = "baris = satu  \nÜnïcödé ✓\n" + "x" * 200 + "\n.\nFrom here\n"
    encoded = encode_body(text)
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    import quopri

    assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")).decode() == text


# --- failures per merchant ------------------------------------------------------------


def test_one_bad_merchant_does_not_stop_the_batch(tmp_path):
    make_templates(
        tmp_path,
        {
            "templates/coupon.id.html": '---\nsubject: "Kupon"\n---\n<p>Kode:\n{{ merchant.attributes.coupon }}</p>\n'
        },
    )
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})
    builder = MessageBuilder(settings, _campaign(), TemplateSet(settings.templates_dir, "id"))
    rows = [
        merchant(id=1, attributes={"coupon": "HEMAT1"}),
        merchant(id=2, attributes={}),
        merchant(id=3, email="not-an-address"),
        merchant(id=4, name="x\r\nBcc: y@z.id", attributes={"coupon": "HEMAT4"}),
        merchant(id=5, attributes={"coupon": "HEMAT5"}),
    ]
    results = [builder.render_one(r, stats(), now=NOW, template="coupon", step=1) for r in rows]
    assert [type(r).__name__ for r in results] == [
        "RenderedMessage", "RenderFailure", "RenderFailure", "RenderFailure", "RenderedMessage",
    ]  # fmt: skip
    assert "coupon.id.html:5" in results[1].reason and "coupon" in results[1].reason
    assert results[2].reason.startswith("invalid address")
    assert "name contains a carriage return" in results[3].reason
    assert results[1].key == "winback/step-1/m-2"


def test_missing_secret_key_uses_the_development_key_for_rendering(tmp_path):
    make_templates(tmp_path)
    settings = load_settings(tmp_path, env={})
    builder = MessageBuilder(settings, _campaign(), TemplateSet(settings.templates_dir, "id"))
    assert builder.signer.development
    from engine.errors import DeliveryError

    with pytest.raises(DeliveryError):
        MessageBuilder(
            settings, _campaign(), TemplateSet(settings.templates_dir, "id"), sending=True
        )


# --- DKIM ----------------------------------------------------------------------------


def test_dkim_signature_covers_list_unsubscribe_and_verifies(tmp_path):
    dkim = pytest.importorskip("dkim")
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    make_templates(tmp_path)
    (tmp_path / "campaign.toml").write_text('[dkim]\ndomain = "tokoku.id"\nselector = "mail"\n')
    settings = load_settings(
        tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET, "CAMPAIGN_DKIM_KEY_FILE": str(key)}
    )
    builder = MessageBuilder(settings, _campaign(), TemplateSet(settings.templates_dir, "id"))
    result = _render(builder)
    assert result.data.startswith(b"DKIM-Signature:")
    message = _parse(result.data)
    signed = message["DKIM-Signature"].replace(" ", "")
    assert "list-unsubscribe:list-unsubscribe-post" in signed.lower()

    def dns(name, timeout=5):
        return record if name == b"mail._domainkey.tokoku.id." else None

    assert dkim.verify(result.data, dnsfunc=dns)
    tampered = result.data.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nothing"
    )
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_dkim_key_that_is_not_a_key_is_one_sentence_before_any_message(tmp_path):
    pytest.importorskip("dkim")
    key = tmp_path / "dkim.pem"
    key.write_text("this is not a key\n")
    make_templates(tmp_path)
    (tmp_path / "campaign.toml").write_text('[dkim]\ndomain = "tokoku.id"\nselector = "mail"\n')
    settings = load_settings(
        tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET, "CAMPAIGN_DKIM_KEY_FILE": str(key)}
    )
    with pytest.raises(CampaignError) as info:
        MessageBuilder(settings, _campaign(), TemplateSet(settings.templates_dir, "id"))
    assert str(info.value).startswith(f"CAMPAIGN_DKIM_KEY_FILE: {key} is not a PEM private key (")
    assert "\n" not in str(info.value)


def test_dates_are_rendered_in_the_merchants_zone(builder):
    row = merchant(timezone="Asia/Jayapura")
    late = datetime(2026, 12, 4, 20, 0)  # already 5 December in Jayapura
    result = builder.render_one(row, stats(), now=late, template="hello", step=1)
    assert "per 5 Desember 2026." in result.html


# --- any name, any store name: either refused, or exactly what the parser reads back ---------


_HEADER_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFF),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=_HEADER_TEXT, store=_HEADER_TEXT)
def test_header_values_round_trip_or_are_refused(builder, name, store):
    result = _render(builder, merchant(name=name, store_name=store))

    def unsafe(value: str) -> bool:
        controls = any(
            (c != "\t" and (ord(c) < 32 or 0x7F <= ord(c) <= 0x9F)) or c in "\u2028\u2029"
            for c in value
        )
        return controls or bool(re.search(r"=\?.*\?=", value))

    if unsafe(name) or unsafe(f"Halo {store}".strip()):
        assert isinstance(result, RenderFailure)
        return
    if isinstance(result, RenderFailure):
        # Only a name that is blank after stripping, or one the address syntax cannot carry, may fail.
        pytest.fail(result.reason)
    message = _parse(result.data)
    assert message["Subject"] == result.subject == f"Halo {store}".strip()
    address = message["To"].addresses[0]
    assert address.addr_spec == "budi@contoh.id"
    # Python's own parser keeps the folding space between two encoded-words of a
    # display name (RFC 2047 says to drop it), so compare word by word.
    assert address.display_name.split() == name.split()
    assert len(message.keys()) == 11 and not message.defects


def test_half_a_dkim_set_up_refuses_a_real_send_but_not_a_preview(tmp_path):
    make_templates(tmp_path)
    (tmp_path / "campaign.toml").write_text('[dkim]\ndomain = "tokoku.id"\nselector = "mail"\n')
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": SECRET})  # no key file
    templates = TemplateSet(settings.templates_dir, "id")
    with pytest.raises(DeliveryError, match=r"DKIM is configured .* but incomplete"):
        MessageBuilder(settings, _campaign(), templates, sending=True)
    preview = MessageBuilder(settings, _campaign(), templates)
    assert not _render(preview).data.startswith(b"DKIM-Signature:")
