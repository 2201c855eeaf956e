"""What the HTTP endpoints do to the database; no HTTP here, so each is testable alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import dialect_insert, is_sqlite, write_transaction
from engine.import_columns import sqlite_datetime
from engine.links import Click
from engine.models import clicks, merchants, messages, suppressions
from engine.suppressions import ALL_TOPICS
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


class Prepared:
    """A statement compiled once for the engine's dialect, run through the driver directly.

    The unsubscribe page and the one-click POST are the hot path of ``campaign
    serve``: building and caching a SQLAlchemy statement per request cost more
    than the query itself.
    """

    def __init__(self, engine: Engine, statement: sa.sql.ClauseElement) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup) if compiled.positional else None

    def run(self, conn: Connection, **params: Any):
        if self.names is None:
            return conn.exec_driver_sql(self.sql, params)
        return conn.exec_driver_sql(self.sql, tuple(params[n] for n in self.names))


class Statements:
    """The prepared statements of the hot path, for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.recipient = Prepared(
            engine,
            sa.select(
                merchants.c.id,
                merchants.c.email,
                merchants.c.store_name,
                merchants.c.name,
                merchants.c.locale,
            ).where(merchants.c.id == sa.bindparam("merchant_id")),
        )
        # The same row as engine.suppressions.suppress_in writes.
        self.suppress = Prepared(
            engine,
            dialect_insert(engine)(suppressions)
            .values(
                email=sa.bindparam("email"),
                topic=sa.bindparam("topic"),
                reason=sa.bindparam("reason"),
                source=sa.bindparam("source"),
                created_at=sa.bindparam("created_at", type_=sa.DateTime()),
            )
            .on_conflict_do_nothing(index_elements=["email", "topic"])
            .returning(suppressions.c.id),
        )
        self.sqlite = is_sqlite(engine)


_STATEMENTS: dict[int, Statements] = {}


def statements(engine: Engine) -> Statements:
    found = _STATEMENTS.get(id(engine))
    if found is None:
        found = _STATEMENTS[id(engine)] = Statements(engine)
    return found


def recipient(engine: Engine, merchant_id: int) -> Recipient | None:
    """The merchant of a token, or None when there is no such merchant (any more)."""
    with engine.connect() as conn:
        row = statements(engine).recipient.run(conn, merchant_id=merchant_id).first()
    if row is None:
        return None
    return Recipient(row[0], row[1].strip().lower(), row[2], row[3], row[4])


def scopes(request: Unsubscribe, everything: bool) -> list[str]:
    """The suppression topics a choice covers: the token's topic, and ``*`` for "all emails"."""
    return [request.topic, ALL_TOPICS] if everything else [request.topic]


def unsubscribe(
    engine: Engine,
    request: Unsubscribe,
    *,
    everything: bool,
    source: str,
    now: datetime,
) -> Recipient | None:
    """Suppress the token's merchant for its topic (or everything): who it was, None if nobody.

    One connection and one transaction for the look-up and the write: this is
    the request every mail client's one-click button sends.
    """
    prepared = statements(engine)
    # The driver gets what SQLAlchemy's DateTime would give it: ISO text on SQLite.
    created_at = sqlite_datetime(now) if prepared.sqlite else now
    with write_transaction(engine) as conn:
        row = prepared.recipient.run(conn, merchant_id=request.merchant_id).first()
        if row is None:
            return None
        who = Recipient(row[0], row[1].strip().lower(), row[2], row[3], row[4])
        values = {"email": who.email, "topic": ALL_TOPICS if everything else request.topic,
                  "reason": WEB_REASON, "source": source[:200], "created_at": created_at}  # fmt: skip
        prepared.suppress.run(conn, **values)  # on conflict nothing: repeating it is harmless
    return who


def resubscribe(engine: Engine, request: Unsubscribe, *, everything: bool) -> Recipient | None:
    """Undo a web unsubscribe (who it was, None if nobody); other suppressions (bounces, manual) stay."""
    who = recipient(engine, request.merchant_id)
    if who is None:
        return None
    query = suppressions.delete().where(
        suppressions.c.email == who.email,
        suppressions.c.topic.in_(scopes(request, everything)),
        suppressions.c.reason == WEB_REASON,
    )
    with write_transaction(engine) as conn:
        conn.execute(query)
    return who


def record_click(engine: Engine, click: Click, *, now: datetime, record: bool = True) -> bool:
    """Store one click on a tracked link; False when the token's message is not in the outbox.

    ``record=False`` (a HEAD request: link checkers, not people) only checks.
    """
    message = sa.select(messages.c.id).where(messages.c.key == click.message_key)
    if not record:
        with engine.connect() as conn:
            return conn.execute(message).scalar() is not None
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
