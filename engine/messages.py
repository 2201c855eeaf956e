"""Complete email messages for a batch of merchants: context, render, headers, MIME bytes.

The MIME bytes are assembled from parts that the standard library's own
encoders produce (``binascii.b2a_qp`` bodies, ``email.header.Header`` for
headers that need RFC 2047, ``email.utils.formataddr`` for addresses): the same
encodings the ``email`` package would write, at a tenth of the cost of building
an ``EmailMessage`` per merchant. The tests parse every message back with the
``email`` package.

Every value that reaches a header is checked first: CR, LF, NUL (any control
character) and RFC 2047 encoded-words are refused, because Python 3.11.7's
``email`` package can be tricked into header injection through encoded-words
(CVE-2024-6923). A problem with one merchant becomes a ``RenderFailure`` with its
reason; the rest of the batch goes on.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.charset import Charset
from email.header import Header
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.addresses import normalize_email, parse_address
from engine.errors import DeliveryError, HeaderError, SettingsError, TemplateError
from engine.keys import message_key
from engine.links import with_tracked_links
from engine.stats import batch_stats, empty_stats
from engine.unsubscribe import signer_for, unsubscribe_mailto, unsubscribe_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from engine.campaigns import Campaign
    from engine.config import Settings
    from engine.templates import TemplateSet

DRAFT_RUN = "draft"  # the run label of a broadcast rendered without one (render, check)
# C0 and C1 controls (but tab), and the Unicode line separators: str.splitlines() breaks on
# \x1c-\x1e, \x85, U+2028 and U+2029 too, and so can a header parser built on it.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.S)
_MESSAGE_ID_SAFE = re.compile(r"[^A-Za-z0-9.-]+")
# Headers a DKIM signature covers (the List-Unsubscribe pair must be signed for RFC 8058).
DKIM_HEADERS = (
    b"From", b"To", b"Reply-To", b"Subject", b"Date", b"Message-ID", b"List-Unsubscribe",
    b"List-Unsubscribe-Post", b"List-Id", b"MIME-Version", b"Content-Type",
)  # fmt: skip


@dataclass
class RenderedMessage:
    key: str
    merchant_id: int
    email: str
    subject: str
    message_id: str
    html: str
    text: str
    data: bytes  # the whole message, RFC 5322, CRLF line ends


@dataclass
class RenderFailure:
    key: str
    merchant_id: int
    email: str
    reason: str


# --- header safety --------------------------------------------------------------


def check_header_value(value: str, what: str) -> str:
    """Refuse what could inject or smuggle headers: control characters (CR, LF, NUL...) and ``=?...?=``."""
    if not isinstance(value, str):
        raise HeaderError(f"{what} is not text")
    bad = _CONTROL.search(value)
    if bad:
        names = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\x00": "a NUL byte",
                 "\x85": "a next-line character (NEL)", "\u2028": "a line separator",
                 "\u2029": "a paragraph separator"}  # fmt: skip
        char = bad.group(0)
        raise HeaderError(f"{what} contains {names.get(char, f'a control character {char!r}')}")
    if _ENCODED_WORD.search(value):
        raise HeaderError(
            f"{what} contains an encoded-word (=?...?=), which mail headers do not accept here"
        )
    return value


def header_address(text: str, what: str) -> tuple[str | None, str]:
    """An address that goes into a header, checked: (name or None, stored address)."""
    check_header_value(text, what)
    try:
        name, address = parse_address(text)
    except ValueError as exc:
        raise HeaderError(f"{what}: {exc}") from None
    return name or None, address


# --- encoders -------------------------------------------------------------------


def encode_header(name: str, value: str) -> str:
    """One header line (folded, CRLF-terminated); RFC 2047 only when the value is not ASCII."""
    if value.isascii() and len(name) + 2 + len(value) <= 78:
        return f"{name}: {value}\r\n"
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n"


_UTF8 = Charset("utf-8")


def _encoded_phrase(name: str) -> str:
    """A non-ASCII display name as RFC 2047 encoded-words, split only where the name has a space.

    Header() may split inside a word; decoders then disagree on whether the
    whitespace between the two halves counts. Splitting at spaces (kept inside
    the encoded-words) reads the same everywhere; a single word too long for one
    75-character encoded-word stays whole, which every decoder accepts.
    """
    whole = _UTF8.header_encode(name)
    if len(whole) <= 75:
        return whole
    groups: list[str] = []
    current = ""
    for word in name.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and len(_UTF8.header_encode(candidate + " ")) > 75:
            groups.append(current + " ")
            current = word
        else:
            current = candidate
    groups.append(current)
    return "\r\n ".join(_UTF8.header_encode(group) for group in groups)


def encode_address(name: str | None, address: str) -> str:
    if not name:
        return address
    if name.isascii():
        return formataddr((name, address))
    return f"{_encoded_phrase(name)} <{address}>"


def encode_body(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends (``binascii.b2a_qp``, what ``quopri`` uses)."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")


def encode_base64(text: str) -> bytes:
    """Base64 UTF-8 in 76-character lines with CRLF (``binascii``, as ``email.base64mime`` does)."""
    data = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return b"\r\n".join([data[i : i + 76] for i in range(0, len(data), 76)]) + b"\r\n"


def message_id(key: str, domain: str) -> str:
    """A stable Message-ID from the idempotency key: a retry carries the same id."""
    readable = _MESSAGE_ID_SAFE.sub(".", key).strip(".")[:120]
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"<{readable}.{digest}@{domain}>"


# --- the builder ----------------------------------------------------------------


class MessageBuilder:
    """Renders a campaign's messages; one per campaign, reused for every batch."""

    def __init__(
        self,
        settings: Settings,
        campaign: Campaign,
        templates: TemplateSet,
        *,
        sending: bool = False,
        cycle: int = 1,
    ) -> None:
        self.settings = settings
        self.cycle = cycle  # a drip entry after the first gets messages of its own
        self.campaign = campaign
        self.templates = templates
        self.sending = sending
        self.signer = signer_for(settings, sending=sending)
        sender_name, sender = header_address(campaign.sender, f"campaign {campaign.name}: from")
        self.sender = sender
        self.domain = sender.rsplit("@", 1)[1]
        reply_to = None
        if campaign.reply_to:
            reply_name, reply_address = header_address(
                campaign.reply_to, f"campaign {campaign.name}: reply_to"
            )
            reply_to = encode_address(reply_name, reply_address)
        self.mailto = header_address(settings.unsubscribe.mailto, "unsubscribe.mailto")[1]
        self.base_url = check_header_value(settings.unsubscribe.base_url, "unsubscribe.base_url")
        if " " in self.base_url or "<" in self.base_url or ">" in self.base_url:
            raise HeaderError(f"unsubscribe.base_url {self.base_url!r} cannot go into a header")
        topic = campaign.topic
        self._from = f"From: {encode_address(sender_name, sender)}\r\n"
        self._reply_to = f"Reply-To: {reply_to}\r\n" if reply_to else ""
        self._tail = (
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            + encode_header("List-Id", f"{topic.capitalize()} <{topic}.{self.domain}>")
            + "MIME-Version: 1.0\r\n"
        )
        self._dkim = self._load_dkim()

    def _load_dkim(self):
        dkim_settings = self.settings.dkim
        if not dkim_settings.enabled:
            if self.sending and (dkim_settings.domain or dkim_settings.selector):
                # Half a DKIM set-up would quietly send unsigned mail: refuse instead.
                raise DeliveryError(
                    "DKIM is configured ([dkim] in campaign.toml) but incomplete: "
                    "set domain, selector and CAMPAIGN_DKIM_KEY_FILE, or remove [dkim]"
                )
            return None
        try:
            import dkim  # an optional extra: campaign[dkim]
        except ImportError:
            raise SettingsError(
                "DKIM signing is configured but dkimpy is not installed (pip install 'campaign[dkim]')"
            ) from None
        try:
            key = Path(dkim_settings.key_file).read_bytes()
        except OSError as exc:
            raise SettingsError(
                f"CAMPAIGN_DKIM_KEY_FILE: cannot read the key ({exc.strerror})"
            ) from None
        try:
            # Checked once here: a bad key would otherwise fail inside every message's signing.
            from dkim.crypto import parse_pem_private_key

            parse_pem_private_key(key)
        except Exception as exc:  # dkimpy raises several types for unreadable keys
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(": ")
            raise SettingsError(
                f"CAMPAIGN_DKIM_KEY_FILE: {dkim_settings.key_file} is not a PEM private key ({reason})"
            ) from None
        selector = dkim_settings.selector.encode()
        domain = dkim_settings.domain.encode()

        def sign(data: bytes) -> bytes:
            return dkim.sign(
                data,
                selector,
                domain,
                key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(DKIM_HEADERS),
            )

        return sign

    def key_for(self, merchant_id: int, step: int | None, run: str | None) -> str:
        if self.campaign.kind == "broadcast":
            return message_key(self.campaign.name, merchant_id, run=run or DRAFT_RUN)
        return message_key(self.campaign.name, merchant_id, step=step or 1, cycle=self.cycle)

    def render_batch(
        self,
        conn: Connection,
        merchants: Sequence[Mapping[str, Any]],
        *,
        now: datetime,
        template: str,
        step: int | None = None,
        run: str | None = None,
    ) -> list[RenderedMessage | RenderFailure]:
        """Every merchant's message, or its failure; stats for the whole batch in one query.

        A template that cannot be loaded at all raises ``TemplateError``: that is
        the campaign's mistake, not one merchant's.
        """
        stats = batch_stats(conn, [m["id"] for m in merchants], now=now) if merchants else {}
        return [
            self.render_one(
                m,
                stats.get(m["id"]) or empty_stats(),
                now=now,
                template=template,
                step=step,
                run=run,
            )
            for m in merchants
        ]

    def render_one(
        self,
        merchant: Mapping[str, Any],
        stats: Mapping[str, Any],
        *,
        now: datetime,
        template: str,
        step: int | None = None,
        run: str | None = None,
    ) -> RenderedMessage | RenderFailure:
        merchant_id = int(merchant["id"])
        key = self.key_for(merchant_id, step, run)
        raw_email = merchant.get("email") or ""
        try:
            email = normalize_email(raw_email)
        except ValueError as exc:
            return RenderFailure(key, merchant_id, str(raw_email), f"invalid address: {exc}")
        locale = merchant.get("locale") or self.settings.project.default_locale
        chosen = self.templates.get(template, locale)  # TemplateError: the whole campaign's
        try:
            return self._build(merchant, merchant_id, email, key, stats, chosen, now, step)
        except (TemplateError, HeaderError) as exc:
            return RenderFailure(key, merchant_id, email, str(exc))

    def _build(
        self, merchant, merchant_id, email, key, stats, chosen, now, step
    ) -> RenderedMessage:
        who = f"merchant {merchant_id}"
        name = merchant.get("name")
        if name:
            name = " ".join(check_header_value(name, f"{who}: name").split())
        token = self.signer.token(merchant_id, self.campaign.topic)
        url = unsubscribe_url(self.base_url, token)
        context = {
            "merchant": {**merchant, "attributes": merchant.get("attributes") or {}},
            "stats": stats,
            "campaign": {"name": self.campaign.name, "topic": self.campaign.topic},
            "step": step or 1,
            "unsubscribe_url": url,
            "now": now,
            "locale": chosen.locale
            or merchant.get("locale")
            or self.settings.project.default_locale,
        }
        rendered = chosen.render(context)
        if self.campaign.track_clicks:
            rendered = with_tracked_links(
                rendered, base_url=self.base_url, message_key=key, signer=self.signer
            )
        subject = check_header_value(rendered.subject, f"{who}: subject")
        mid = message_id(key, self.domain)
        boundary = "=_" + hashlib.sha256(key.encode()).hexdigest()[:24]
        head = (
            self._from
            + "To: "
            + encode_address(name, email)
            + "\r\n"
            + self._reply_to
            + encode_header("Subject", subject)
            + "Date: "
            + format_datetime(now.replace(tzinfo=UTC))
            + "\r\n"
            + f"Message-ID: {mid}\r\n"
            # Folded by hand after the comma: Header() would fold before the first URL.
            + f"List-Unsubscribe: <{url}>,\r\n <{unsubscribe_mailto(self.mailto, token)}>\r\n"
            + self._tail
            + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        )
        part = f'\r\n--{boundary}\r\nContent-Type: text/{{}}; charset="utf-8"\r\nContent-Transfer-Encoding: {{}}\r\n\r\n'
        data = b"".join(
            (
                head.encode("ascii"),
                part.format("plain", "quoted-printable").encode("ascii")[2:],
                encode_body(rendered.text),
                # HTML in base64: three times cheaper to encode than quoted-printable here.
                part.format("html", "base64").encode("ascii"),
                encode_base64(rendered.html),
                f"\r\n--{boundary}--\r\n".encode("ascii"),
            )
        )
        if self._dkim is not None:
            data = self._dkim(data) + data
        return RenderedMessage(
            key, merchant_id, email, subject, mid, rendered.html, rendered.text, data
        )
