"""Email address syntax: one strict check used by the importer and by message headers."""

from __future__ import annotations

import re

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,63}}$")


def normalize_email(text: str) -> str:
    """Check a plain ``local@domain.tld`` address and return it lower-cased.

    Raises ``ValueError`` with a reason. Quoted local parts, IP literals and
    non-ASCII addresses are refused on purpose: they are almost always typos in a
    merchant list, and they are where header-injection tricks hide.
    """
    value = text.strip() if isinstance(text, str) else text
    if not isinstance(value, str) or not value:
        raise ValueError("email is empty")
    if len(value) > 254 or not EMAIL_PATTERN.match(value) or len(value.split("@", 1)[0]) > 64:
        raise ValueError(f"{value!r} is not a valid email address")
    return value.lower()
