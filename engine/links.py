"""Click tracking: signed ``/c/TOKEN`` links and the rewriting of a message's links.

A click token carries the message's idempotency key and the original URL,
signed with the unsubscribe key (``engine.unsubscribe.Signer``) under a label of
its own, so that a click token can never pass for an unsubscribe token or the
other way round. The redirect needs no lookup to know where to go, and nobody
can make it go anywhere else: a changed byte breaks the signature (no open
redirect).

``track_links`` is a pure function: rendered HTML and text in, rewritten out.
Only ``http(s)`` links are rewritten; ``mailto:``, anchors and the
unsubscribe link never are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
from dataclasses import dataclass, replace
from typing import TypeVar

from engine.errors import TokenError
from engine.unsubscribe import Signer

_TOKEN = re.compile(r"^(\d{1,4})\.([A-Za-z0-9_-]{4,12000})\.([A-Za-z0-9_-]{43})$")
# href="..." or href='...' inside an <a> or <area> tag.
_HREF = re.compile(r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.I | re.S)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'`]+""")
_TRAILING = ".,;:!?*_'\""


@dataclass(frozen=True)
class Click:
    message_key: str
    url: str


def _signature(key: str, version: int, payload: str) -> str:
    message = f"click\x00{version}\x00{payload}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def click_token(signer: Signer, message_key: str, url: str) -> str:
    """``1.<key and URL, base64url>.<HMAC>``."""
    raw = f"{message_key}\n{url}".encode()
    payload = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    version = signer.current
    return f"{version}.{payload}.{_signature(signer.keys[version], version, payload)}"


def verify_click(signer: Signer, token: str) -> Click:
    """The click a token carries. Raises ``TokenError`` if it is not one of ours."""
    match = _TOKEN.match(token or "")
    if not match:
        raise TokenError("this link is malformed")
    version, payload, signature = int(match.group(1)), match.group(2), match.group(3)
    key = signer.keys.get(version)
    if key is None:
        raise TokenError("this link was signed with a key that is no longer known")
    if not hmac.compare_digest(_signature(key, version, payload).encode(), signature.encode()):
        raise TokenError("this link is not valid (its signature does not match)")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise TokenError("this link is malformed") from None
    message_key, _, url = raw.partition("\n")
    if not message_key or not is_trackable(url):
        raise TokenError("this link is malformed")
    return Click(message_key, url)


def click_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/c/{token}"


def is_trackable(url: str) -> bool:
    """Only absolute http(s) URLs without spaces or control characters are rewritten."""
    lowered = url[:8].lower()
    return (
        lowered.startswith(("http://", "https://"))
        and len(url) > len("https://")
        and not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)
    )


def _split_trailing(url: str) -> tuple[str, str]:
    """A URL at the end of a sentence: ``https://a.id/x).`` → (``https://a.id/x``, ``).``)."""
    end = len(url)
    while end > 0:
        char = url[end - 1]
        if char in _TRAILING or (char == ")" and url[:end].count("(") < url[:end].count(")")):
            end -= 1
            continue
        break
    return url[:end], url[end:]


def track_links(
    html_text: str, text: str, *, base_url: str, message_key: str, signer: Signer
) -> tuple[str, str]:
    """The HTML and text parts with every http(s) link sent through ``/c/TOKEN``."""
    base = base_url.rstrip("/")
    own = (f"{base}/u/", f"{base}/c/")  # the unsubscribe link, and links already tracked

    def wrap(url: str) -> str | None:
        if not is_trackable(url) or url.startswith(own):
            return None
        return click_url(base, click_token(signer, message_key, url))

    def in_html(match: re.Match) -> str:
        url = html.unescape(match.group(3)).strip()
        tracked = wrap(url)
        if tracked is None:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{html.escape(tracked)}{match.group(2)}"

    def in_text(match: re.Match) -> str:
        url, tail = _split_trailing(match.group(0))
        tracked = wrap(url)
        return match.group(0) if tracked is None else tracked + tail

    return _HREF.sub(in_html, html_text), _TEXT_URL.sub(in_text, text)


R = TypeVar("R")


def with_tracked_links(rendered: R, *, base_url: str, message_key: str, signer: Signer) -> R:
    """A rendered template (``html`` and ``text`` fields) with its links tracked."""
    new_html, new_text = track_links(
        rendered.html, rendered.text, base_url=base_url, message_key=message_key, signer=signer
    )
    return replace(rendered, html=new_html, text=new_text)
