"""SMTP's DATA form of a message (RFC 5321 4.5.2): CRLF line ends, dot-stuffing, the end mark.

A message rendered by ``engine.messages`` is checked once (``is_smtp_ready``) and
stored with that flag, so that the sending threads do not scan it again.
"""

from __future__ import annotations

import re

from engine.addresses import split_address

_EOL = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def angle_address(address: str) -> str:
    """``a@b`` or ``Name <a@b>`` → ``<a@b>`` for MAIL FROM / RCPT TO (``<>``: the null sender)."""
    parts = split_address(address) if address else None
    return f"<{parts[1] if parts else address}>"


class SmtpReady(bytes):
    """Message bytes known to be in SMTP's DATA form already (see ``is_smtp_ready``)."""

    __slots__ = ()


def is_smtp_ready(data: bytes) -> bool:
    """True when ``data`` needs no change to go after DATA: CRLF line ends only, no line
    starting with a dot, a final CRLF. (Cheap scans, but scans of the whole message.)"""
    crlf = data.count(b"\r\n")
    return (
        data.endswith(b"\r\n")
        and data.count(b"\n") == crlf
        and data.count(b"\r") == crlf
        and not data.startswith(b".")
        and b"\n." not in data
    )


def data_payload(data: bytes) -> bytes:
    """CRLF line ends, dot-stuffing and the end-of-data mark (RFC 5321 4.5.2)."""
    if data.__class__ is SmtpReady:  # checked when it was rendered
        return data + b".\r\n"
    crlf = data.count(b"\r\n")
    body = data
    # The checks are cheap scans; the regexes only run on bodies that need them.
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        body = _EOL.sub(b"\r\n", body)
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"
