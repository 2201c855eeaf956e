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
connections (or processes) serialise instead of failing to upgrade a read lock,
and the sender threads of one process that wait for each other share one
transaction (``engine.db.WriteSession``): one commit for several senders' marks
and results, each sender going on only once its own are committed.

This module holds the state machine's values and its set-based operations
(enqueue, recovery, inspection); the per-message hot path (claim, committing
mark, result) is ``engine.outbox_session``. Timestamps that rules compare with
(``created_at``, ``next_attempt_at``, ``sent_at``) come from the command's clock
(``now``); lease expiry alone is real time (``lease_now``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import dialect_insert, is_sqlite, write_transaction
from engine.models import attempts as attempts_log
from engine.models import message_bodies, messages
from engine.outcomes import Outcome
from engine.retry import backoff_delay
from engine.states import FINAL, IN_FLIGHT, PENDING, State

__all__ = ["FINAL", "IN_FLIGHT", "PENDING", "State"]  # the states, for the outbox's users


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
    smtp_ready: bool = False  # ``data`` is known to be in SMTP's DATA form (transport)
    # When it may go: the next opening of the send window (None: at once, ``now``).
    due_at: datetime | None = None


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


@dataclass(frozen=True)
class Finish:
    """What to record for one attempt (built from the transport's DeliveryResult)."""

    outcome: Outcome
    code: int | None = None
    enhanced: str | None = None
    text: str = ""
    queue_id: str | None = None
    at: datetime | None = None  # when the reply came (recorded later than that, sometimes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))

    def describe(self) -> str:
        """The reply as ``last_error`` keeps it: code, enhanced status and text."""
        parts = [
            str(self.code) if self.code else "",
            self.enhanced or "",
            (self.text or "").strip(),
        ]
        return " ".join(p for p in parts if p)[:1000] or str(self.outcome)


# --- enqueue ---------------------------------------------------------------------


def enqueue(engine: Engine, batch: Sequence[NewMessage], *, now: datetime) -> int:
    """Insert messages; an existing key is left alone (enqueueing twice is harmless).

    Returns how many rows were new.
    """
    if not batch:
        return 0
    if is_sqlite(engine):
        with write_transaction(engine, checkpoint_after=True) as conn:
            return _enqueue_sqlite(conn, batch, now)
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
            "next_attempt_at": (m.due_at or now) if m.state == State.QUEUED else None,
            "message_id": m.message_id,
            "last_error": m.last_error,
            "created_at": now,
            "updated_at": now,
        }
        for m in batch
    ]
    statement = (
        dialect_insert(engine)(messages)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(messages.c.id, messages.c.key)
    )
    bodies = {m.key: (m.data, m.smtp_ready) for m in batch if m.data is not None}
    with write_transaction(engine) as conn:
        new = conn.execute(statement, rows).all()
        body_rows = [
            {"message_id": i, "data": bodies[key][0], "smtp_ready": bodies[key][1]}
            for i, key in new
            if key in bodies
        ]
        if body_rows:
            conn.execute(message_bodies.insert(), body_rows)
        return len(new)


_INSERT_MESSAGE = (
    "INSERT INTO messages (key, campaign, step, run, topic, merchant_id, email, sender, subject,"
    " state, attempts, next_attempt_at, message_id, last_error, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
_INSERT_BODY = "INSERT INTO message_bodies (message_id, data, smtp_ready) VALUES (?, ?, ?)"


def _enqueue_sqlite(conn: Connection, batch: Sequence[NewMessage], now: datetime) -> int:
    """``enqueue`` on SQLite, inside its ``BEGIN IMMEDIATE`` transaction, on the DBAPI cursor.

    No other writer can run between the statements: the keys not there before
    the insert are exactly the rows it added. (Core's insert with RETURNING
    spent more time converting parameters than SQLite spent inserting.)
    """
    stamp = now.isoformat(" ", "microseconds")  # sa.DateTime's SQLite text format
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        before = _present(cursor, [m.key for m in batch])
        fresh: dict[str, NewMessage] = {}
        for m in batch:
            if m.key not in before and m.key not in fresh:
                fresh[m.key] = m
        if not fresh:
            return 0
        cursor.executemany(
            _INSERT_MESSAGE,
            [
                (
                    m.key,
                    m.campaign,
                    m.step,
                    m.run,
                    m.topic,
                    m.merchant_id,
                    m.email,
                    m.sender,
                    m.subject,
                    str(m.state),
                    _stamp(m.due_at, stamp) if m.state == State.QUEUED else None,
                    m.message_id,
                    m.last_error,
                    stamp,
                    stamp,
                )
                for m in fresh.values()
            ],
        )
        ids = _present(cursor, [key for key, m in fresh.items() if m.data is not None])
        cursor.executemany(
            _INSERT_BODY,
            [(id_, fresh[key].data, fresh[key].smtp_ready) for key, id_ in ids.items()],
        )
        return len(fresh)
    finally:
        cursor.close()


def _stamp(moment: datetime | None, default: str) -> str:
    return default if moment is None else moment.isoformat(" ", "microseconds")


def _present(cursor, keys: list[str]) -> dict[str, int]:
    """``{key: id}`` for those of ``keys`` already in the outbox (SQLite DBAPI cursor)."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        cursor.execute(f"SELECT key, id FROM messages WHERE key IN ({marks})", chunk)
        found.update(cursor.fetchall())
    return found


def existing_keys(conn: Connection, keys: Iterable[str]) -> dict[str, str]:
    """``{key: state}`` for the keys already in the outbox."""
    keys = list(keys)
    if not keys:
        return {}
    rows = conn.execute(sa.select(messages.c.key, messages.c.state).where(messages.c.key.in_(keys)))
    return {key: state for key, state in rows}


# --- recovery -------------------------------------------------------------------


def lease_expired(state: State, now: datetime) -> sa.ColumnElement[bool]:
    """Messages in ``state`` whose lease ran out (read through ix_messages_leased)."""
    return sa.and_(
        messages.c.state == str(state),
        messages.c.lease_expires_at.is_not(None),
        messages.c.lease_expires_at < now,
    )


def recover(engine: Engine, *, now: datetime, lease_now: datetime | None = None) -> dict[str, int]:
    """Expired leases: ``sending`` goes back to the queue, ``committing`` becomes ``unknown``.

    ``lease_now`` (real time; default ``now``) decides which leases ran out.
    """
    expired_before = lease_now or now
    with write_transaction(engine) as conn:
        requeued = conn.execute(
            messages.update()
            .where(lease_expired(State.SENDING, expired_before))
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
            .where(lease_expired(State.COMMITTING, expired_before))
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


def requeue_unknown(engine: Engine, campaign: str, *, now: datetime) -> int:
    """``campaign retry --unknown``: put a campaign's ``unknown`` messages back in the queue."""
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


def _scoped(query, campaign: str | None, run: str | None, step: int | None):
    if campaign is not None:
        query = query.where(messages.c.campaign == campaign)
    if run is not None:
        query = query.where(messages.c.run == run)
    if step is not None:
        query = query.where(messages.c.step == step)
    return query


def next_due(
    engine: Engine,
    *,
    campaign: str | None = None,
    run: str | None = None,
    step: int | None = None,
) -> datetime | None:
    """When the next queued or deferred message becomes due (None: nothing pending)."""
    query = sa.select(sa.func.min(messages.c.next_attempt_at)).where(
        messages.c.state.in_([str(s) for s in PENDING])
    )
    query = _scoped(query, campaign, run, step)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def waiting(
    conn: Connection, *, campaign: str, run: str | None = None, step: int | None = None
) -> tuple[int, datetime | None]:
    """How many messages of a run (or step) wait in the outbox, and when the first is due."""
    query = sa.select(sa.func.count(), sa.func.min(messages.c.next_attempt_at)).where(
        messages.c.state.in_([str(s) for s in PENDING])
    )
    count, due = conn.execute(_scoped(query, campaign, run, step)).one()
    return count or 0, due


def release_server_holds(
    engine: Engine,
    *,
    campaign: str,
    run: str | None = None,
    step: int | None = None,
    retry_backoff: timedelta,
    now: datetime,
) -> int:
    """Make a run's waiting messages due now unless their own backoff (a real 4xx) says later.

    A server that was down holds messages back without charging an attempt
    (``next_attempt_at`` = the server-wide backoff): an explicit send of the run
    should not wait that out. A message deferred by the server's reply to it
    keeps the backoff of its last charged attempt. A message never claimed (it waits
    for its send window) keeps its due time. Returns how many rows moved.
    """
    # Claimed before (a worker is named): held back by the server, not by its send window.
    tried = messages.c.worker.is_not(None)
    held = _scoped(
        sa.select(messages.c.id, messages.c.attempts, messages.c.next_attempt_at).where(
            messages.c.state.in_([str(s) for s in PENDING]),
            messages.c.next_attempt_at > now,
            tried,
        ),
        campaign,
        run,
        step,
    )
    with write_transaction(engine) as conn:
        rows = conn.execute(held).all()
        charged = [row.id for row in rows if row.attempts]
        last: dict[int, datetime] = {}
        for start in range(0, len(charged), 500):
            last.update(
                conn.execute(
                    sa.select(attempts_log.c.message_id, sa.func.max(attempts_log.c.at))
                    .where(
                        attempts_log.c.message_id.in_(charged[start : start + 500]),
                        attempts_log.c.outcome == "deferred",
                    )
                    .group_by(attempts_log.c.message_id)
                ).all()
            )
        moves = []
        for row in rows:
            own = now
            if row.attempts and row.id in last:
                own = max(now, last[row.id] + backoff_delay(retry_backoff, row.attempts))
            if own < row.next_attempt_at:
                moves.append({"row_id": row.id, "due": own})
        if moves:
            conn.execute(
                messages.update()
                .where(
                    messages.c.id == sa.bindparam("row_id"),
                    # (no IN list: executemany does not take expanding parameters)
                    sa.or_(*(messages.c.state == str(s) for s in PENDING)),
                )
                .values(next_attempt_at=sa.bindparam("due"), updated_at=now),
                moves,
            )
    return len(moves)


def held_leases(
    conn: Connection,
    *,
    campaign: str,
    run: str | None = None,
    step: int | None = None,
    lease_now: datetime,
) -> tuple[int, datetime | None]:
    """Messages of a run (or step) claimed under a lease that has not run out yet, and when
    the last such lease ends (after that the next pass recovers or takes them over)."""
    query = sa.select(sa.func.count(), sa.func.max(messages.c.lease_expires_at)).where(
        messages.c.state.in_([str(s) for s in IN_FLIGHT]),
        messages.c.lease_expires_at.is_not(None),
        messages.c.lease_expires_at >= lease_now,
    )
    count, until = conn.execute(_scoped(query, campaign, run, step)).one()
    return count or 0, until
