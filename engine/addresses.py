"""Email addresses: the one parser used by the importer, campaign files, message headers and SMTP.

``split_address`` takes ``Name <addr>``, ``"Name" <addr>`` or a bare ``addr`` apart;
``normalize_email`` checks a plain ``local@domain.tld`` and returns it in its stored
form: lower-cased, an internationalised domain (``tökö.id``) in its ASCII form
(IDNA, ``xn--tk-qiaa.id``), so that headers and SMTP stay plain ASCII.
"""

from __future__ import annotations

import re

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,63}}$")
# (Name) <address>, "Name" <address>, or address alone; no commas (one address only).
_NAMED = re.compile(r'^\s*(?:"([^"\\]*)"|([^"<>,;]*?))\s*<([^<>\s]+)>\s*$')


def split_address(text: str) -> tuple[str, str] | None:
    """``'Name <a@b.id>'``, ``'"Name" <a@b.id>'`` or ``'a@b.id'`` → (name, address as written).

    None when the text is not one address of those forms.
    """
    match = _NAMED.match(text)
    if match:
        name = match.group(1) if match.group(1) is not None else (match.group(2) or "")
        return name.strip(), match.group(3)
    bare = text.strip()
    if not bare or any(c in bare for c in '<>",; '):
        return None
    return "", bare


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"the domain {domain!r} is not a valid internationalised name") from None


def normalize_email(text: str) -> str:
    """Check a plain ``local@domain.tld`` address and return its stored form (see the module).

    Raises ``ValueError`` with a reason. Quoted local parts, IP literals and
    non-ASCII local parts are refused on purpose: they are almost always typos
    in a merchant list, and they are where header-injection tricks hide.
    """
    value = text.strip() if isinstance(text, str) else text
    if not isinstance(value, str) or not value:
        raise ValueError("email is empty")
    local, at, domain = value.rpartition("@")
    if at and not domain.isascii() and local.isascii():
        value = f"{local}@{_ascii_domain(domain)}"
    if len(value) > 254 or not EMAIL_PATTERN.match(value) or len(value.split("@", 1)[0]) > 64:
        raise ValueError(f"{text.strip()!r} is not a valid email address")
    return value.lower()


def parse_address(text: str) -> tuple[str, str]:
    """``'Name <a@b.id>'`` or ``'a@b.id'`` → (name, stored address); ``ValueError`` if not one."""
    parts = split_address(text)
    if parts is None:
        raise ValueError(f"{text.strip()!r} is not one address (e.g. Name <name@example.id>)")
    return parts[0], normalize_email(parts[1])
