"""The suppression list: addresses never to email, for one topic or for all (``*``).

Honoured twice: when the audience is computed and again when a message is
claimed for sending (``engine.outbox.claim``), so a late unsubscribe still wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.addresses import normalize_email
from engine.config import TOPICS
from engine.db import dialect_insert, write_transaction
from engine.errors import SuppressionError
from engine.models import suppressions

ALL_TOPICS = "*"
REASONS = ("unsubscribe", "hard_bounce", "soft_bounce", "complaint", "manual")


def check_topic(topic: str | None) -> str:
    """``None``/``all``/``*`` → ``*``; a known topic as is; anything else is a user mistake."""
    if topic in (None, "", "all", ALL_TOPICS):
        return ALL_TOPICS
    if topic not in TOPICS:
        raise SuppressionError(f"unknown topic {topic!r} (use one of: {', '.join(TOPICS)}, or all)")
    return topic


def stored_address(email: str) -> str:
    """The form an address has on the list (checked, lower-cased); ``SuppressionError`` if bad."""
    return _email(email)


def _email(email: str) -> str:
    try:
        return normalize_email(email)
    except ValueError as exc:
        raise SuppressionError(str(exc)) from None


def suppress_in(
    conn: Connection,
    email: str,
    *,
    topic: str = ALL_TOPICS,
    reason: str = "manual",
    source: str | None = None,
    now: datetime,
) -> bool:
    """Add a suppression inside an open transaction; False when it was already there."""
    statement = (
        dialect_insert(conn)(suppressions)
        .values(
            email=email.strip().lower(),
            topic=topic,
            reason=reason,
            source=source,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["email", "topic"])
        .returning(suppressions.c.id)
    )
    return conn.execute(statement).first() is not None


def add_suppression(
    engine: Engine,
    email: str,
    *,
    topic: str | None = None,
    reason: str = "manual",
    source: str | None = None,
    now: datetime,
) -> bool:
    """Suppress ``email`` for ``topic`` (``None`` = all topics); False if it already was."""
    address, scope = _email(email), check_topic(topic)
    with write_transaction(engine) as conn:
        return suppress_in(conn, address, topic=scope, reason=reason, source=source, now=now)


def remove_suppression(engine: Engine, email: str, *, topic: str | None = None) -> int:
    """Lift suppressions of ``email``: for one topic, or every entry when ``topic`` is None.

    Returns how many entries went; ``SuppressionError`` when there was none to lift.
    """
    address = _email(email)
    query = suppressions.delete().where(suppressions.c.email == address)
    if topic is not None:
        query = query.where(suppressions.c.topic == check_topic(topic))
    with write_transaction(engine) as conn:
        removed = conn.execute(query).rowcount
    if not removed:
        scope = f" for topic {topic}" if topic else ""
        raise SuppressionError(f"{address} is not on the suppression list{scope}")
    return removed


def list_suppressions(
    engine: Engine, *, email: str | None = None, topic: str | None = None
) -> list[dict[str, Any]]:
    """Entries as ``{"email", "reason", "topic", "created_at", "source"}``, oldest first."""
    query = sa.select(
        suppressions.c.email,
        suppressions.c.reason,
        suppressions.c.topic,
        suppressions.c.created_at,
        suppressions.c.source,
    ).order_by(suppressions.c.created_at, suppressions.c.id)
    if email is not None:
        query = query.where(suppressions.c.email == _email(email))
    if topic is not None:
        query = query.where(suppressions.c.topic == check_topic(topic))
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def suppression_reasons(conn: Connection, emails: Iterable[str], topic: str) -> dict[str, str]:
    """``{email: reason}`` for those of ``emails`` suppressed for ``topic`` or for all topics.

    The reason reads ``unsubscribe (promo)`` or ``hard_bounce (all topics)``; a
    topic's own entry is named before the all-topics one.
    """
    wanted = sorted({e.lower() for e in emails})
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            sa.select(suppressions.c.email, suppressions.c.topic, suppressions.c.reason)
            .where(
                suppressions.c.email.in_(wanted[start : start + 500]),
                suppressions.c.topic.in_([topic, ALL_TOPICS]),
            )
            .order_by(suppressions.c.email, suppressions.c.topic)
        )
        for address, scope, reason in rows:
            found.setdefault(
                address, f"{reason} ({'all topics' if scope == ALL_TOPICS else scope})"
            )
    return found


def suppressed_among(conn: Connection, emails: Iterable[str], topic: str) -> set[str]:
    """The addresses of ``emails`` suppressed for ``topic`` or for all topics."""
    return set(suppression_reasons(conn, emails, topic))


def is_suppressed(engine: Engine, email: str, topic: str) -> bool:
    with engine.connect() as conn:
        return bool(suppressed_among(conn, [email], topic))
