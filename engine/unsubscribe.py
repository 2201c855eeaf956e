"""Signed one-click unsubscribe tokens: an HMAC over (merchant, topic, key version).

A token reads ``42.retention.1.<signature>``: the merchant id, the topic, the
key version and an HMAC-SHA256 (base64url) made with ``CAMPAIGN_SECRET_KEY``.
Whoever receives the click (``{base_url}/u/{token}``, or the mailto with the
token in its subject) calls ``verify_token``, which compares in constant time.
The version lets the key be rotated: old tokens keep working as long as their
version's key is still given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from engine.config import Settings
from engine.errors import DeliveryError, TokenError

KEY_VERSION = 1
# Used only to render and dry-run without CAMPAIGN_SECRET_KEY; a real send refuses it.
DEVELOPMENT_KEY = "campaign-development-key-NOT-FOR-SENDING"
_TOPIC = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_TOKEN = re.compile(r"^(\d{1,18})\.([a-z0-9][a-z0-9-]{0,63})\.(\d{1,4})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Unsubscribe:
    merchant_id: int
    topic: str
    version: int


def _signature(key: str, merchant_id: int, topic: str, version: int) -> str:
    message = f"unsubscribe\x00{merchant_id}\x00{topic}\x00{version}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Signer:
    """Makes and checks tokens; ``keys`` maps a key version to its secret."""

    def __init__(self, keys: Mapping[int, str], current: int | None = None) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self.keys = dict(keys)
        self.current = current if current is not None else max(self.keys)
        self.development = self.keys.get(self.current) == DEVELOPMENT_KEY

    def token(self, merchant_id: int, topic: str) -> str:
        if not _TOPIC.match(topic):
            raise ValueError(f"{topic!r} is not a topic name")
        merchant_id = int(merchant_id)
        signature = _signature(self.keys[self.current], merchant_id, topic, self.current)
        return f"{merchant_id}.{topic}.{self.current}.{signature}"

    def verify(self, token: str) -> Unsubscribe:
        """The request a token carries. Raises ``TokenError`` if it is not one of ours."""
        match = _TOKEN.match(token or "")
        if not match:
            raise TokenError("this unsubscribe link is malformed")
        merchant_id, topic, version = int(match.group(1)), match.group(2), int(match.group(3))
        key = self.keys.get(version)
        if key is None:
            raise TokenError("this unsubscribe link was signed with a key that is no longer known")
        expected = _signature(key, merchant_id, topic, version)
        if not hmac.compare_digest(expected.encode(), match.group(4).encode()):
            raise TokenError("this unsubscribe link is not valid (its signature does not match)")
        return Unsubscribe(merchant_id, topic, version)


def signer_for(settings: Settings, *, sending: bool = False) -> Signer:
    """The project's signer. Without ``CAMPAIGN_SECRET_KEY``: a development key, refused when sending."""
    if settings.secret_key is None:
        if sending:
            raise DeliveryError(
                "CAMPAIGN_SECRET_KEY is not set: unsubscribe links cannot be signed for a real send"
            )
        return Signer({KEY_VERSION: DEVELOPMENT_KEY})
    return Signer({KEY_VERSION: settings.secret_key.reveal()})


def verify_token(settings: Settings, token: str) -> Unsubscribe:
    """Check a token from an unsubscribe link or mail. Needs the real key, never the development one."""
    if settings.secret_key is None:
        # The development key is public (it is in this file): accepting it would let anyone
        # forge an unsubscribe for any merchant.
        raise TokenError("CAMPAIGN_SECRET_KEY is not set: unsubscribe tokens cannot be checked")
    return signer_for(settings).verify(token)


def unsubscribe_url(base_url: str, token: str) -> str:
    """``https://crm.example.id/u/42.retention.1.AbC...`` (the one-click endpoint)."""
    return f"{base_url.rstrip('/')}/u/{token}"


def unsubscribe_mailto(address: str, token: str) -> str:
    """``mailto:unsubscribe@example.id?subject=unsubscribe%2042.retention.1.AbC...``."""
    return f"mailto:{address}?subject={quote('unsubscribe ' + token)}"
