"""Reading one returned mail: a bounce (hard or soft), a delay, an auto-reply, or neither.

Standard delivery status notifications (RFC 3464, ``multipart/report``) are
read with the ``email`` package, status codes included. Other formats (Exim's
and qmail's plain-text bounces, old Exchange...) go to flufl.bounce, which
finds the failed addresses (as bytes, without a status code): the code is then
looked for in the text. Pure functions; no database here.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime

from flufl.bounce import all_failures

BOUNCE = "bounce"
DELAYED = "delayed"
AUTO_REPLY = "auto_reply"
OTHER = "other"

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<!\d)([245])\d\d(?!\d)")
_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.I | re.M)
_MSGID = re.compile(r"<[^<>\s]+>")
_AUTO_SUBJECT = re.compile(
    r"\b(out of (the )?office|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|"
    r"autorespond|balasan otomatis|di luar kantor|sedang cuti|abwesenheit|réponse automatique|"
    r"respuesta automática|vacation)\b",
    re.I,
)
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)$|mail delivery", re.I)
# Where a bounce's own recipient (our VERP return path) can be read.
_RECIPIENT_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")


@dataclass(frozen=True)
class Failure:
    address: str
    kind: str  # "hard" (5.x.x) or "soft" (4.x.x)
    status: str | None  # the enhanced status code, when the mail gives one
    diagnostic: str | None


@dataclass(frozen=True)
class Returned:
    """What one returned mail says, and how to find the message it is about."""

    kind: str  # BOUNCE, DELAYED, AUTO_REPLY or OTHER
    failures: tuple[Failure, ...]
    message_ids: tuple[str, ...]  # Message-IDs of the original, as far as the mail shows them
    recipients: tuple[str, ...]  # addresses the bounce went to (a VERP return path)
    fingerprint: str  # the same returned mail always gives the same fingerprint
    date: datetime | None  # when it was written (naive UTC), if it says

    def worst(self) -> Failure | None:
        """The failure that decides: a hard one before a soft one."""
        return next((f for f in self.failures if f.kind == "hard"), None) or next(
            iter(self.failures), None
        )


def _unfold(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _status(text: str) -> str | None:
    match = _STATUS.search(text or "")
    return ".".join(match.groups()) if match else None


def _address(value: object) -> str:
    """``rfc822; <a@b.id>`` → ``a@b.id``."""
    text = _unfold(value)
    text = text.split(";", 1)[1] if ";" in text else text
    return text.strip().strip("<>").strip().lower()


def _kind_of(status: str | None, diagnostic: str) -> str:
    if status:
        return "soft" if status.startswith("4") else "hard"
    code = _SMTP_CODE.search(diagnostic)
    return "soft" if code and code.group(1) == "4" else "hard"


def _dsn(message: Message) -> tuple[list[Failure], bool, list[str]] | None:
    """(failures, any delayed, original Message-IDs) of an RFC 3464 report; None if it is not one."""
    reports = [p for p in message.walk() if p.get_content_type() == "message/delivery-status"]
    if not reports:
        return None
    failures: list[Failure] = []
    delayed = False
    ids: list[str] = []
    for report in reports:
        blocks = report.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if block.get("X-Original-Message-ID"):
                ids.append(_unfold(block["X-Original-Message-ID"]))
            action = _unfold(block.get("Action")).lower()
            recipient = block.get("Final-Recipient") or block.get("Original-Recipient")
            if not recipient:
                continue
            if action == "delayed":
                delayed = True
            elif action == "failed":
                diagnostic = _unfold(block.get("Diagnostic-Code"))
                status = _status(_unfold(block.get("Status"))) or _status(diagnostic)
                failures.append(
                    Failure(
                        _address(recipient),
                        _kind_of(status, diagnostic),
                        status,
                        diagnostic or None,
                    )
                )
    return failures, delayed, ids


def _text_of(message: Message) -> str:
    """The human-readable text parts, for a status code and copied headers."""
    out = []
    for part in message.walk():
        if part.get_content_maintype() == "text" and part.get_content_type() != "text/html":
            payload = part.get_payload(decode=True) or b""
            out.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(out)


def _flufl(message: Message, text: str) -> list[Failure]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # flufl.bounce's detectors can trip over odd mail; then it found nothing
        return []
    failures = []
    for kind, found in (("hard", permanent), ("soft", temporary)):
        for raw in sorted(found):
            address = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            status = next(
                (s for s in (".".join(m.groups()) for m in _STATUS.finditer(text))
                 if s.startswith("5" if kind == "hard" else "4")),
                None,
            )  # fmt: skip
            failures.append(Failure(address.strip().strip("<>").lower(), kind, status, None))
    return failures


def is_auto_reply(message: Message) -> bool:
    """An out-of-office or other automatic answer (RFC 3834 headers, or a telling subject)."""
    sender = " ".join(a for pair in getaddresses([_unfold(message.get("From"))]) for a in pair)
    local = sender.split("@", 1)[0].split()[-1] if sender.strip() else ""
    if _DAEMON.search(local) or _DAEMON.search(sender):
        return False  # a mail server's own notice, however it labels itself
    auto = _unfold(message.get("Auto-Submitted")).lower()
    precedence = _unfold(message.get("Precedence")).lower()
    return bool(
        (auto and auto != "no")
        or message.get("X-Autoreply")
        or message.get("X-Autorespond")
        or precedence in ("auto_reply", "auto-reply")
        or _AUTO_SUBJECT.search(_unfold(message.get("Subject")))
    )


def _original_headers(message: Message) -> list[Message]:
    found: list[Message] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                found.append(inner[0])
        elif kind == "text/rfc822-headers":
            found.append(BytesHeaderParser().parsebytes(part.get_payload(decode=True) or b""))
    return found


def _date(message: Message) -> datetime | None:
    try:
        when = parsedate_to_datetime(_unfold(message.get("Date")))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def classify(data: bytes) -> Returned:
    """Read one returned mail (its raw bytes)."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    own_id = _unfold(message.get("Message-ID"))
    fingerprint = hashlib.sha256(own_id.encode() if own_id else data).hexdigest()
    originals = _original_headers(message)
    text = _text_of(message)

    ids = [_unfold(h.get("Message-ID")) for h in originals if h.get("Message-ID")]
    recipients = [_unfold(message.get(name)) for name in _RECIPIENT_HEADERS if message.get(name)]
    recipients += [_unfold(h.get("Return-Path")) for h in originals if h.get("Return-Path")]
    kind, failures = OTHER, []
    report = _dsn(message)
    if report is not None:
        failures, delayed, more_ids = report
        ids += more_ids
        kind = BOUNCE if failures else DELAYED if delayed else OTHER
    elif is_auto_reply(message):
        kind = AUTO_REPLY
    else:
        failures = _flufl(message, text)
        kind = BOUNCE if failures else OTHER
    if kind == BOUNCE:
        # Copied headers in the text (Exim, qmail), then the bounce's own references.
        ids += _MESSAGE_ID.findall(text)
        for name in ("In-Reply-To", "References"):
            ids += _MSGID.findall(_unfold(message.get(name)))
        recipients += re.findall(r"^\s*Return-Path:\s*(<[^>]*>)", text, re.I | re.M)
    unique_ids = tuple(dict.fromkeys(i for i in ids if i and i != own_id))
    return Returned(
        kind,
        tuple(failures),
        unique_ids,
        tuple(dict.fromkeys(recipients)),
        fingerprint,
        _date(message),
    )
