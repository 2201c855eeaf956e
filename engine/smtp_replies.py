"""SMTP replies: the enhanced status code, the queue id, and how a reply is sorted (``classify_reply``):

==========================================  ==============  =======================================
Reply                                       Outcome         What the outbox does
==========================================  ==============  =======================================
250 after the body                          ``sent``        done; the queue id is kept
4xx; connection dropped before the body     ``deferred``    retry with exponential backoff
552 at RCPT (RFC 5321 4.5.3.1.10)           ``deferred``    (treated as 452 "mailbox full")
421 anywhere; connect, TLS, AUTH failures   ``server_down`` pause the whole server, no attempt charged
5xx                                         ``failed``      permanent
5xx with 5.1.x at RCPT/DATA (bad mailbox)   ``bounced``     failed, and the address is suppressed
drop/timeout after the body, before reply   ``unknown``     the server may have it: never resent
==========================================  ==============  =======================================

5.1.7 and 5.1.8 name the *sender's* address and a 5.1.x reply to MAIL FROM is
about the sender too, so those fail without suppressing the recipient.
"""

from __future__ import annotations

import re

from engine.outcomes import STAGES, Outcome

_SETUP_STAGES = ("connect", "tls", "auth")
_SENDER_BOUNCES = (
    "5.1.7",
    "5.1.8",
)  # bad sender mailbox / sender system: not the recipient's fault

ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_QUEUE_ID = (
    re.compile(r"queued as\s+<?([\w.@-]+)>?", re.IGNORECASE),  # Postfix, aiosmtpd tests
    re.compile(r"\bid=([\w.-]+)"),  # Exim
    re.compile(r"^([\w]{6,})\s+Message accepted", re.IGNORECASE),  # Sendmail
    re.compile(r"^OK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.IGNORECASE),  # Gmail
    re.compile(r"^Ok\s+<?([0-9a-f][0-9a-f-]{15,})>?\s*$", re.IGNORECASE),  # SES and the like
)


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text (``"5.1.1"``), if any."""
    match = ENHANCED.match(text.strip())
    return ".".join(match.groups()) if match else None


def parse_queue_id(text: str) -> str | None:
    """The server's queue id from a 250 reply (``"Ok: queued as ABC123"`` → ``"ABC123"``)."""
    for pattern in _QUEUE_ID:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def classify_reply(code: int | None, text: str, *, stage: str) -> Outcome:
    """Sort the reply that ended an attempt at ``stage`` (see the module's table).

    ``code`` None means no reply at all (refused, dropped, timed out). A positive
    reply classifies as SENT: callers classify only the reply that ended the attempt.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown SMTP stage {stage!r} (one of {', '.join(STAGES)})")
    if code is None or code < 100:  # no reply, or a garbled one (smtplib's -1)
        if stage == "body":
            return Outcome.UNKNOWN
        return Outcome.SERVER_DOWN if stage in _SETUP_STAGES else Outcome.DEFERRED
    if 200 <= code < 400:
        return Outcome.SENT
    if code == 421 or stage in _SETUP_STAGES:
        return Outcome.SERVER_DOWN
    if 400 <= code < 500:
        return Outcome.DEFERRED
    if 500 <= code < 600:
        if stage == "rcpt" and code == 552:
            return Outcome.DEFERRED
        enhanced = parse_enhanced(text)
        if (
            stage != "mail"
            and enhanced
            and enhanced.startswith("5.1.")
            and enhanced not in _SENDER_BOUNCES
        ):
            return Outcome.BOUNCED
        return Outcome.FAILED
    return Outcome.UNKNOWN if stage == "body" else Outcome.DEFERRED
