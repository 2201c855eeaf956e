"""The outbox: one row per message, claimed with leases, finished only by its claimant.

States (SPEC 9)::

    queued ──claim──▶ sending ──on_commit──▶ committing ──250──▶ sent
                        │                        │
                        ├─▶ deferred (4xx, drop before the body; backoff) ─▶ … ─▶ failed
                        ├─▶ failed (5xx)         └─▶ deferred/failed (refused at DATA)
                        └─▶ suppressed (checked at claim time)
    lease expired in sending    → queued/deferred (nothing reached the server's queue)
    lease expired in committing → unknown (the server may have it: never resent by itself)

Every state change after the claim checks the claim's lease token, so a worker
that stalled past its lease cannot overwrite the result of the worker that
took the message over. Claims are short transactions that commit before any
network traffic: no lock is held while talking to SMTP.

On PostgreSQL claims use ``FOR UPDATE SKIP LOCKED`` (any number of processes);
on SQLite every write transaction starts with ``BEGIN IMMEDIATE`` so that two
connections (or processes) serialise instead of failing to upgrade a read lock.
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from engine.models import message_bodies, messages, suppressions
from engine.times import utcnow


class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    COMMITTING = "committing"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    UNKNOWN = "unknown"
    # Not a message to send: a holdout member, recorded once per run for the lift report.
    HOLDOUT = "holdout"


PENDING = (State.QUEUED, State.DEFERRED)
IN_FLIGHT = (State.SENDING, State.COMMITTING)
FINAL = (State.SENT, State.FAILED, State.SUPPRESSED, State.UNKNOWN, State.HOLDOUT)


# Without an explicit lease, a committing mark keeps the message this long.
LEASE_FOR_DATA = timedelta(minutes=5)


class LeaseLost(Exception):
    """Raised from ``on_commit`` when the claim is no longer ours: do not send the body."""


@dataclass(frozen=True)
class NewMessage:
    """A rendered message ready for the outbox."""

    key: str
    campaign: str
    topic: str
    merchant_id: int
    email: str
    sender: str
    subject: str | None
    message_id: str | None
    data: bytes | None
    step: int | None = None
    run: str | None = None
    state: State = State.QUEUED
    last_error: str | None = None


@dataclass(frozen=True)
class Claim:
    """A message claimed by one worker, valid while ``token`` still matches the row."""

    id: int
    key: str
    campaign: str
    email: str
    sender: str
    data: bytes
    attempts: int
    token: str
    worker: str


# --- transactions --------------------------------------------------------------


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


_WRITER_LOCKS: dict[str, threading.RLock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _sqlite_writer_lock(engine: Engine) -> threading.RLock:
    """One lock per SQLite file in this process (re-entrant: a writer may nest)."""
    key = str(engine.url.database)
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(key, threading.RLock())


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A short write transaction; ``BEGIN IMMEDIATE`` on SQLite.

    pysqlite normally opens transactions itself (lazily, DEFERRED), so a
    SELECT-then-UPDATE in WAL mode can fail with "database is locked" instead of
    waiting. The SQLAlchemy-documented recipe: put the DBAPI connection in
    autocommit mode (``isolation_level = None``) and emit BEGIN ourselves.
    """
    if not is_sqlite(engine):
        with engine.begin() as conn:
            yield conn
        return
    # Threads of this process queue on a mutex rather than in SQLite's busy
    # handler, which sleeps in steps of milliseconds: with several sender threads
    # that sleeping, not the writes, was most of the time per message. Other
    # processes still wait in the busy handler (busy_timeout).
    with _sqlite_writer_lock(engine), engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        previous = dbapi.isolation_level
        dbapi.isolation_level = None
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            dbapi.isolation_level = previous


def _insert(engine_or_conn: Engine | Connection):
    dialect = engine_or_conn.dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert


# --- enqueue ---------------------------------------------------------------------


def enqueue(engine: Engine, batch: Sequence[NewMessage], *, now: datetime | None = None) -> int:
    """Insert messages; an existing key is left alone (enqueueing twice is harmless).

    Returns how many rows were new.
    """
    if not batch:
        return 0
    now = now or utcnow()
    rows = [
        {
            "key": m.key,
            "campaign": m.campaign,
            "step": m.step,
            "run": m.run,
            "topic": m.topic,
            "merchant_id": m.merchant_id,
            "email": m.email,
            "sender": m.sender,
            "subject": m.subject,
            "state": str(m.state),
            "attempts": 0,
            "next_attempt_at": now if m.state == State.QUEUED else None,
            "message_id": m.message_id,
            "last_error": m.last_error,
            "created_at": now,
            "updated_at": now,
        }
        for m in batch
    ]
    statement = (
        _insert(engine)(messages)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(messages.c.id, messages.c.key)
    )
    bodies = {m.key: m.data for m in batch if m.data is not None}
    with write_transaction(engine) as conn:
        new = conn.execute(statement, rows).all()
        body_rows = [{"message_id": i, "data": bodies[key]} for i, key in new if key in bodies]
        if body_rows:
            conn.execute(message_bodies.insert(), body_rows)
        return len(new)


def existing_keys(conn: Connection, keys: Iterable[str]) -> dict[str, str]:
    """``{key: state}`` for the keys already in the outbox."""
    keys = list(keys)
    if not keys:
        return {}
    rows = conn.execute(sa.select(messages.c.key, messages.c.state).where(messages.c.key.in_(keys)))
    return {key: state for key, state in rows}


# --- claiming -------------------------------------------------------------------


def _suppressed_clause():
    """True for an outbox row whose address is suppressed for its topic or for all."""
    return sa.exists().where(
        suppressions.c.email == messages.c.email,
        suppressions.c.topic.in_([messages.c.topic, "*"]),
    )


def claim(
    engine: Engine,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    now: datetime | None = None,
    campaign: str | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` due messages for ``worker``, in one short committed transaction.

    Messages whose address was suppressed after they were queued become
    ``suppressed`` here instead (an unsubscribe between enqueue and send wins).
    """
    now = now or utcnow()
    token = secrets.token_hex(16)

    # One ordered index range per state (ix_messages_state_next): no sort of the
    # whole backlog for each small claim. Retries first, they have waited longest.
    def due(state: State, room: int) -> sa.Select:
        query = sa.select(messages.c.id).where(
            messages.c.state == str(state), messages.c.next_attempt_at <= now
        )
        if campaign is not None:
            query = query.where(messages.c.campaign == campaign)
        query = query.order_by(messages.c.next_attempt_at, messages.c.id).limit(room)
        if not is_sqlite(engine):
            query = query.with_for_update(skip_locked=True, of=messages)
        return query

    with write_transaction(engine) as conn:
        ids = list(conn.execute(due(State.DEFERRED, limit)).scalars())
        if len(ids) < limit:
            ids += conn.execute(due(State.QUEUED, limit - len(ids))).scalars()
        if not ids:
            return []
        conn.execute(
            messages.update()
            .where(messages.c.id.in_(ids), _suppressed_clause())
            .values(
                state=str(State.SUPPRESSED),
                last_error="address suppressed before sending",
                next_attempt_at=None,
                updated_at=now,
            )
        )
        conn.execute(
            messages.update()
            .where(messages.c.id.in_(ids), messages.c.state.in_([str(s) for s in PENDING]))
            .values(
                state=str(State.SENDING),
                lease_token=token,
                lease_expires_at=now + lease,
                worker=worker,
                updated_at=now,
            )
        )
        rows = conn.execute(
            sa.select(
                messages.c.id,
                messages.c.key,
                messages.c.campaign,
                messages.c.email,
                messages.c.sender,
                message_bodies.c.data,
                messages.c.attempts,
            )
            .select_from(messages.outerjoin(message_bodies))
            .where(messages.c.id.in_(ids), messages.c.lease_token == token)
            .order_by(messages.c.id)
        ).all()
    return [
        Claim(
            r.id,
            r.key,
            r.campaign,
            r.email,
            r.sender,
            bytes(r.data or b""),
            r.attempts,
            token,
            worker,
        )
        for r in rows
    ]


def _owned(claim: Claim, *states: State):
    return sa.and_(
        messages.c.id == claim.id,
        messages.c.lease_token == claim.token,
        messages.c.state.in_([str(s) for s in states]),
    )


def mark_committing(
    engine: Engine, claim: Claim, *, lease: timedelta | None = None, now: datetime | None = None
) -> bool:
    """The durable mark written just before the body goes out; False if the claim was lost.

    ``lease`` renews the claim from now: it has to cover the DATA exchange only,
    not the time the message waited behind others of its batch.
    """
    with write_transaction(engine) as conn:
        return _commit_in(conn, claim, lease=lease, now=now or utcnow())


def _commit_in(conn: Connection, claim: Claim, *, lease: timedelta | None, now: datetime) -> bool:
    params = {
        "id": claim.id,
        "token": claim.token,
        "now": now,
        "expires": now + (lease or LEASE_FOR_DATA),
    }
    return _execute(conn, _COMMITTING, params) == 1


def release(
    engine: Engine,
    claims: Iterable[Claim],
    *,
    now: datetime | None = None,
    not_before: datetime | None = None,
) -> int:
    """Give back claimed messages that were never tried (shutdown, server down)."""
    now = now or utcnow()
    count = 0
    with write_transaction(engine) as conn:
        for c in claims:
            result = conn.execute(
                messages.update()
                .where(_owned(c, State.SENDING))
                .values(
                    state=sa.case(
                        (messages.c.attempts == 0, str(State.QUEUED)), else_=str(State.DEFERRED)
                    ),
                    lease_token=None,
                    lease_expires_at=None,
                    next_attempt_at=not_before or now,
                    updated_at=now,
                )
            )
            count += result.rowcount
    return count


# --- finishing ------------------------------------------------------------------


@dataclass(frozen=True)
class Finish:
    """What to record for one attempt (built from the transport's DeliveryResult)."""

    outcome: str  # sent | deferred | failed | bounced | unknown | server_down
    code: int | None = None
    enhanced: str | None = None
    text: str = ""
    queue_id: str | None = None
    at: datetime | None = None  # when the reply came (recorded later than that, sometimes)


def backoff_delay(first: timedelta, attempt: int) -> timedelta:
    """``first`` after the first attempt, doubling after each further one."""
    return first * (2 ** max(0, attempt - 1))


def finish(
    engine: Engine,
    claim: Claim,
    result: Finish,
    *,
    max_attempts: int,
    retry_backoff: timedelta,
    server_backoff: timedelta | None = None,
    now: datetime | None = None,
) -> State | None:
    """Record an attempt and move the message on; None when the claim was no longer ours.

    The attempt row is written either way: it happened, and the log must say so.
    """
    with write_transaction(engine) as conn:
        return _finish_in(
            conn,
            claim,
            result,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            server_backoff=server_backoff,
            now=now or utcnow(),
        )


def finish_and_commit(
    engine: Engine,
    done: tuple[Claim, Finish] | None,
    claim: Claim,
    *,
    max_attempts: int,
    retry_backoff: timedelta,
    lease: timedelta | None = None,
    now: datetime | None = None,
) -> tuple[State | None, bool]:
    """Record ``done`` (an earlier message's result) and mark ``claim`` committing, in one transaction.

    Each sender keeps at most one message in ``committing`` at any time either
    way; sharing the transaction halves the commits on the hot path. Returns
    (the state ``done`` reached, whether ``claim`` is still ours).
    """
    now = now or utcnow()
    with write_transaction(engine) as conn:
        state = None
        if done is not None:
            state = _finish_in(
                conn,
                done[0],
                done[1],
                max_attempts=max_attempts,
                retry_backoff=retry_backoff,
                server_backoff=None,
                now=now,
            )
        return state, _commit_in(conn, claim, lease=lease, now=now)


def _finish_in(
    conn: Connection,
    claim: Claim,
    result: Finish,
    *,
    max_attempts: int,
    retry_backoff: timedelta,
    server_backoff: timedelta | None,
    now: datetime,
) -> State | None:
    outcome = result.outcome
    error = _describe(result)
    charged = claim.attempts + 1
    now = result.at or now
    values: dict[str, Any] = {
        "id": claim.id,
        "token": claim.token,
        "now": now,
        "attempts": charged,
        "next_attempt_at": None,
        "last_error": error,
        "queue_id": None,
        "sent_at": None,
    }
    if outcome == "sent":
        state = State.SENT
        values.update(queue_id=result.queue_id, sent_at=now, last_error=None)
    elif outcome == "server_down":
        # The server, not the message, is the problem: no attempt is charged.
        state = State.DEFERRED
        values.update(
            attempts=claim.attempts, next_attempt_at=now + (server_backoff or retry_backoff)
        )
    elif outcome == "deferred":
        if charged >= max_attempts:
            state = State.FAILED
            values.update(last_error=f"gave up after {charged} attempts: {error}")
        else:
            state = State.DEFERRED
            values.update(next_attempt_at=now + backoff_delay(retry_backoff, charged))
    elif outcome in ("failed", "bounced"):
        state = State.FAILED
    elif outcome == "unknown":
        state = State.UNKNOWN
    else:  # pragma: no cover - a transport bug
        raise ValueError(f"unknown delivery outcome {outcome!r}")
    values["state"] = str(state)
    updated = _execute(conn, _FINISH, values)
    _execute(
        conn,
        _ATTEMPT,
        {
            "message_id": claim.id,
            "at": now,
            "worker": claim.worker,
            "smtp_code": result.code,
            "enhanced_status": result.enhanced,
            "reply": (result.text or "")[:2000],
            "outcome": outcome if updated else f"{outcome} (lease lost)"[:20],
        },
    )
    if outcome == "bounced":
        from engine.suppressions import suppress_in

        source = f"smtp {result.enhanced or result.code}"
        suppress_in(conn, claim.email, reason="hard_bounce", source=source, now=now)
    return state if updated else None


# The hot path (three statements per message) goes straight to the DBAPI cursor:
# building, cache-keying and compiling Core statements per message cost more
# than running them. Named ``:param`` placeholders (pysqlite), rewritten as
# ``%(param)s`` for psycopg; datetimes in SQLAlchemy's SQLite text format.
_FINISH = (
    "UPDATE messages SET state = :state, attempts = :attempts, next_attempt_at = :next_attempt_at,"
    " last_error = :last_error, queue_id = :queue_id, sent_at = :sent_at, updated_at = :now,"
    " lease_token = NULL, lease_expires_at = NULL"
    " WHERE id = :id AND lease_token = :token AND state IN ('sending', 'committing')"
)
_ATTEMPT = (
    "INSERT INTO attempts (message_id, at, worker, smtp_code, enhanced_status, reply, outcome)"
    " VALUES (:message_id, :at, :worker, :smtp_code, :enhanced_status, :reply, :outcome)"
)
_COMMITTING = (
    "UPDATE messages SET state = 'committing', updated_at = :now, lease_expires_at = :expires"
    " WHERE id = :id AND lease_token = :token AND state = 'sending'"
)
_PLACEHOLDER = re.compile(r":([a-z_]+)")
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # what sa.DateTime stores on SQLite


@functools.cache
def _for_psycopg(sql: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", sql)


def _execute(conn: Connection, sql: str, params: dict[str, Any]) -> int:
    """Run one hot-path statement on the connection's DBAPI cursor; returns the row count."""
    if conn.dialect.name == "sqlite":
        params = {
            k: v.strftime(_SQLITE_TIME) if isinstance(v, datetime) else v for k, v in params.items()
        }
    else:
        sql = _for_psycopg(sql)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.rowcount
    finally:
        cursor.close()


def _describe(result: Finish) -> str:
    parts = [
        str(result.code) if result.code else "",
        result.enhanced or "",
        (result.text or "").strip(),
    ]
    text = " ".join(p for p in parts if p)
    return text[:1000] or result.outcome


# --- recovery -------------------------------------------------------------------


def recover(engine: Engine, *, now: datetime | None = None) -> dict[str, int]:
    """Expired leases: ``sending`` goes back to the queue, ``committing`` becomes ``unknown``."""
    now = now or utcnow()
    expired = sa.and_(messages.c.lease_expires_at.is_not(None), messages.c.lease_expires_at < now)
    with write_transaction(engine) as conn:
        requeued = conn.execute(
            messages.update()
            .where(messages.c.state == str(State.SENDING), expired)
            .values(
                state=sa.case(
                    (messages.c.attempts == 0, str(State.QUEUED)), else_=str(State.DEFERRED)
                ),
                lease_token=None,
                lease_expires_at=None,
                next_attempt_at=now,
                last_error="lease expired before the body was sent (worker stopped)",
                updated_at=now,
            )
        ).rowcount
        unknown = conn.execute(
            messages.update()
            .where(messages.c.state == str(State.COMMITTING), expired)
            .values(
                state=str(State.UNKNOWN),
                lease_token=None,
                lease_expires_at=None,
                next_attempt_at=None,
                last_error="lease expired while the body was being sent: the server may have it",
                updated_at=now,
            )
        ).rowcount
    return {"requeued": requeued, "unknown": unknown}


def requeue_unknown(engine: Engine, campaign: str, *, now: datetime | None = None) -> int:
    """``campaign retry --unknown``: put a campaign's ``unknown`` messages back in the queue."""
    now = now or utcnow()
    with write_transaction(engine) as conn:
        return conn.execute(
            messages.update()
            .where(messages.c.campaign == campaign, messages.c.state == str(State.UNKNOWN))
            .values(
                state=str(State.DEFERRED),
                next_attempt_at=now,
                last_error="resent on purpose (campaign retry --unknown)",
                updated_at=now,
            )
        ).rowcount


# --- inspection -----------------------------------------------------------------


def state_counts(
    conn: Connection,
    *,
    campaign: str | None = None,
    step: int | None = None,
    run: str | None = None,
) -> dict[str, int]:
    query = sa.select(messages.c.state, sa.func.count()).group_by(messages.c.state)
    if campaign is not None:
        query = query.where(messages.c.campaign == campaign)
    if step is not None:
        query = query.where(messages.c.step == step)
    if run is not None:
        query = query.where(messages.c.run == run)
    return {state: count for state, count in conn.execute(query)}


def next_due(engine: Engine, *, campaign: str | None = None) -> datetime | None:
    """When the next queued or deferred message becomes due (None: nothing pending)."""
    query = sa.select(sa.func.min(messages.c.next_attempt_at)).where(
        messages.c.state.in_([str(s) for s in PENDING])
    )
    if campaign is not None:
        query = query.where(messages.c.campaign == campaign)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def in_flight(engine: Engine, *, campaign: str | None = None) -> int:
    query = sa.select(sa.func.count()).where(messages.c.state.in_([str(s) for s in IN_FLIGHT]))
    if campaign is not None:
        query = query.where(messages.c.campaign == campaign)
    with engine.connect() as conn:
        return conn.execute(query).scalar() or 0
