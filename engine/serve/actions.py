"""What the HTTP endpoints do to the database; no HTTP here, so each is testable alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import dialect_insert, write_transaction
from engine.links import Click
from engine.models import clicks, merchants, messages, suppressions
from engine.suppressions import ALL_TOPICS, suppress_in
from engine.unsubscribe import Unsubscribe

WEB_REASON = "unsubscribe"  # the only reason a web page may lift again (never a bounce)


@dataclass(frozen=True)
class Recipient:
    """The merchant an unsubscribe token names, as the page shows them."""

    merchant_id: int
    email: str
    store_name: str | None
    name: str | None
    locale: str


def recipient(engine: Engine, merchant_id: int) -> Recipient | None:
    """The merchant of a token, or None when there is no such merchant (any more)."""
    query = sa.select(
        merchants.c.id,
        merchants.c.email,
        merchants.c.store_name,
        merchants.c.name,
        merchants.c.locale,
    ).where(merchants.c.id == merchant_id)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return Recipient(row.id, row.email.strip().lower(), row.store_name, row.name, row.locale)


def scopes(request: Unsubscribe, everything: bool) -> list[str]:
    """The suppression topics a choice covers: the token's topic, and ``*`` for "all emails"."""
    return [request.topic, ALL_TOPICS] if everything else [request.topic]


def unsubscribe(
    engine: Engine,
    who: Recipient,
    request: Unsubscribe,
    *,
    everything: bool,
    source: str,
    now: datetime,
) -> bool:
    """Suppress the merchant for the token's topic (or everything); False when it already was."""
    topic = ALL_TOPICS if everything else request.topic
    with write_transaction(engine) as conn:
        return suppress_in(conn, who.email, topic=topic, reason=WEB_REASON, source=source, now=now)


def resubscribe(engine: Engine, who: Recipient, request: Unsubscribe, *, everything: bool) -> int:
    """Undo a web unsubscribe; suppressions for any other reason (bounces, manual) stay."""
    query = suppressions.delete().where(
        suppressions.c.email == who.email,
        suppressions.c.topic.in_(scopes(request, everything)),
        suppressions.c.reason == WEB_REASON,
    )
    with write_transaction(engine) as conn:
        return conn.execute(query).rowcount


def is_unsubscribed(engine: Engine, who: Recipient, topic: str) -> bool:
    query = sa.select(sa.func.count()).where(
        suppressions.c.email == who.email, suppressions.c.topic.in_([topic, ALL_TOPICS])
    )
    with engine.connect() as conn:
        return bool(conn.execute(query).scalar())


def record_click(engine: Engine, click: Click, *, now: datetime) -> bool:
    """Store one click on a tracked link; False when the token's message is not in the outbox."""
    message = sa.select(messages.c.id).where(messages.c.key == click.message_key)
    with write_transaction(engine) as conn:
        message_id = conn.execute(message).scalar()
        if message_id is None:
            return False
        conn.execute(
            dialect_insert(conn)(clicks).values(
                message_id=message_id, url=click.url, clicked_at=now
            )
        )
    return True


def database_ok(engine: Engine) -> bool:
    """True when the database answers (``/healthz``)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).scalar()
    except sa.exc.SQLAlchemyError:
        return False
    return True
