"""VERP return paths: ``bounces+KEY@domain`` names the message a bounce belongs to.

With ``[delivery] return_path = "bounces@tokoku.id"``, each message goes out
with the envelope sender ``bounces+<message row id>-<signature>@tokoku.id``.
A bounce comes back to that address even when the remote server returns none
of the original headers, and the short HMAC keeps anyone from making a bounce
that names someone else's message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from engine.config import Settings
from engine.unsubscribe import signer_for

_SIGNATURE_LENGTH = 10


def _signature(settings: Settings, message_row_id: int) -> str:
    signer = signer_for(settings)
    key = signer.keys[signer.current].encode()
    # Lower-case hex: MTAs may change the case of a local part, never its letters.
    digest = hmac.new(key, f"verp\x00{message_row_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:_SIGNATURE_LENGTH]


def envelope_sender(settings: Settings, message_row_id: int) -> str | None:
    """The SMTP ``MAIL FROM`` for the outbox row ``message_row_id``; None without ``return_path``.

    The delivery layer calls this for each message when it opens the SMTP
    transaction (and falls back to the From address when it gives None).
    """
    base = settings.delivery.return_path
    if base is None:
        return None
    local, domain = base.rsplit("@", 1)
    return f"{local}+{int(message_row_id)}-{_signature(settings, message_row_id)}@{domain}"


def message_from_verp(settings: Settings, addresses: Iterable[str]) -> int | None:
    """The outbox row id that one of ``addresses`` (a bounce's recipients) carries, if signed by us."""
    base = settings.delivery.return_path
    if base is None:
        return None
    local, domain = base.rsplit("@", 1)
    pattern = re.compile(
        rf"{re.escape(local)}\+(\d{{1,18}})-([0-9a-f]{{{_SIGNATURE_LENGTH}}})@{re.escape(domain)}",
        re.I,
    )
    for text in addresses:
        for match in pattern.finditer(text or ""):
            row_id = int(match.group(1))
            if hmac.compare_digest(match.group(2).lower(), _signature(settings, row_id)):
                return row_id
    return None
