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
transaction (``OutboxSession._write``): one commit for several senders' marks
and results, each sender going on only once its own are committed.
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import (
    WRITER_LOCKS_GUARD,
    dialect_insert,
    is_sqlite,
    sqlite_writer_lock,
    write_transaction,
)
from engine.models import attempts as attempts_log
from engine.models import message_bodies, messages
from engine.smtp_wire import SmtpReady
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
    smtp_ready: bool = False  # ``data`` is known to be in SMTP's DATA form (transport)


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


# --- enqueue ---------------------------------------------------------------------


def enqueue(engine: Engine, batch: Sequence[NewMessage], *, now: datetime | None = None) -> int:
    """Insert messages; an existing key is left alone (enqueueing twice is harmless).

    Returns how many rows were new.
    """
    if not batch:
        return 0
    now = now or utcnow()
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
            "next_attempt_at": now if m.state == State.QUEUED else None,
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
                    stamp if m.state == State.QUEUED else None,
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


# --- the hot path: one connection per sender, statements straight to the DBAPI ------
#
# Claims, committing marks and results are most of a send's database work: the
# statements below go straight to the connection's DBAPI cursor, because
# building, cache-keying and compiling Core statements per message cost more
# than running them, and a sender thread keeps one connection (``OutboxSession``)
# rather than checking one out of the pool for every transaction. Named
# ``:param`` placeholders (pysqlite), rewritten as ``%(param)s`` for psycopg;
# datetimes in SQLAlchemy's SQLite text format (``isoformat(" ")``, always with
# microseconds). Ids in ``IN (...)`` lists are
# integers read from the database in the same transaction, written inline.

_DUE = (
    "SELECT id FROM messages WHERE state = :state AND next_attempt_at <= :now{filters}"
    " ORDER BY next_attempt_at, id LIMIT :room{lock}"
)
_SUPPRESS_CLAIMED = (
    "UPDATE messages SET state = 'suppressed', last_error = 'address suppressed before sending',"
    " next_attempt_at = NULL, updated_at = :now"
    " WHERE id IN ({ids}) AND EXISTS (SELECT 1 FROM suppressions"
    " WHERE suppressions.email = messages.email AND suppressions.topic IN (messages.topic, '*'))"
)
_TAKE = (  # next_attempt_at cleared: the message leaves ix_messages_due until it waits again
    "UPDATE messages SET state = 'sending', lease_token = :token, lease_expires_at = :expires,"
    " worker = :worker, updated_at = :now, next_attempt_at = NULL"
    " WHERE id IN ({ids}) AND state IN ('queued', 'deferred')"
)
_CLAIMED = (
    "SELECT messages.id, messages.key, messages.campaign, messages.email, messages.sender,"
    " message_bodies.data, messages.attempts, message_bodies.smtp_ready"
    " FROM messages LEFT OUTER JOIN message_bodies ON message_bodies.message_id = messages.id"
    " WHERE messages.id IN ({ids}) AND messages.lease_token = :token ORDER BY messages.id"
)
_RELEASE = (
    "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,"
    " lease_token = NULL, lease_expires_at = NULL, next_attempt_at = :not_before, updated_at = :now"
    " WHERE id = :id AND lease_token = :token AND state = 'sending'"
)
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


@functools.cache
def _for_psycopg(sql: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", sql)


def _scope_sql(campaign: str | None, run: str | None, step: int | None) -> str:
    """The claim's optional filters: one campaign, and within it one run (or drip step)."""
    parts = [
        f" AND {column} = :{column}"
        for column, value in (("campaign", campaign), ("run", run), ("step", step))
        if value is not None
    ]
    return "".join(parts)


def _id_list(ids: Iterable[int]) -> str:
    return ", ".join(str(int(i)) for i in ids)


_T = TypeVar("_T")


@dataclass(eq=False)
class _Work:
    """One thread's piece of a shared SQLite write transaction (see ``OutboxSession._write``)."""

    work: Callable[[OutboxSession], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Group:
    waiting: list[_Work] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)


_GROUPS: dict[str, _Group] = {}


def _sqlite_group(engine: Engine) -> _Group:
    """The work waiting for this process's writer mutex on one SQLite file."""
    key = str(engine.url.database)
    with WRITER_LOCKS_GUARD:
        return _GROUPS.setdefault(key, _Group())


class OutboxSession:
    """The outbox's hot path on one connection: claim, mark committing, finish, release.

    A sender thread keeps one for its lifetime (the caller owns ``conn`` and
    closes it after ``close()``). Each method's writes are committed before it
    returns; on SQLite in a ``BEGIN IMMEDIATE`` transaction behind this
    process's writer mutex, like ``write_transaction``, possibly shared with
    other sessions' writes (``_write``).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self._dbapi = conn.connection.dbapi_connection
        self._lock = sqlite_writer_lock(conn.engine) if self.sqlite else None
        self._group = _sqlite_group(conn.engine) if self.sqlite else None
        self._previous = None
        if self.sqlite:
            # Autocommit at the driver, BEGIN IMMEDIATE by hand (see write_transaction).
            self._previous = self._dbapi.isolation_level
            self._dbapi.isolation_level = None
        self._cursor = self._dbapi.cursor()

    def close(self) -> None:
        """Give the connection back as it was (the caller closes it)."""
        self._cursor.close()
        if self.sqlite:
            self._dbapi.isolation_level = self._previous

    def _write(self, work: Callable[[OutboxSession], _T]) -> _T:
        """Run ``work(session)`` in a committed write transaction and return its result.

        On SQLite the writers of this process take turns on one mutex; whoever
        gets it runs, in one transaction, every piece of work queued by then
        (its own and that of the threads waiting behind it) and commits once.
        A waiting thread whose work was done that way returns without writing
        anything itself: its rows were committed before it got the mutex. One
        commit for several senders' marks and results, and each sender still
        sees its own committed before it goes on.
        """
        if self._lock is None:  # PostgreSQL: each connection commits on its own
            try:
                result = work(self)
            except BaseException:
                self._end(commit=False)
                raise
            self._end(commit=True)
            return result
        mine = _Work(work)
        group = self._group
        with group.guard:
            group.waiting.append(mine)
        with self._lock:
            if not mine.done:
                with group.guard:
                    batch, group.waiting = group.waiting, []
                self._run_batch(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _run_batch(self, batch: list[_Work]) -> None:
        try:
            self._cursor.execute("BEGIN IMMEDIATE")
            try:
                results = [item.work(self) for item in batch]
            except BaseException:
                self._end(commit=False)
                raise
            self._end(commit=True)
        except BaseException as exc:  # the transaction is gone: every piece of it failed
            for item in batch:
                item.error, item.done = exc, True
            return
        for item, result in zip(batch, results, strict=True):
            item.result, item.done = result, True

    def _end(self, *, commit: bool) -> None:
        # Core statements on ``conn`` (the rare bounce path) open SQLAlchemy's own
        # transaction on the same DBAPI connection: end it through SQLAlchemy then.
        if self.conn.in_transaction():
            (self.conn.commit if commit else self.conn.rollback)()
        elif commit:
            self._dbapi.commit()
        else:
            self._dbapi.rollback()

    def _execute(self, sql: str, params: dict[str, Any], ids: str | None = None) -> int:
        """Run one statement on this session's cursor; returns the row count.

        ``ids`` fills the statement's ``{ids}`` list (after the placeholders are
        converted, so that the conversion is cached per statement, not per list).
        """
        if self.sqlite:
            params = {
                k: v.isoformat(" ", "microseconds") if type(v) is datetime else v
                for k, v in params.items()
            }
        else:
            sql = _for_psycopg(sql)
        if ids is not None:
            sql = sql.format(ids=ids)
        self._cursor.execute(sql, params)
        return self._cursor.rowcount

    def _rows(self, sql: str, params: dict[str, Any], ids: str | None = None) -> list[tuple]:
        self._execute(sql, params, ids)
        return self._cursor.fetchall()

    # --- claiming ---------------------------------------------------------------

    def claim(
        self,
        *,
        worker: str,
        limit: int,
        lease: timedelta,
        now: datetime | None = None,
        campaign: str | None = None,
        run: str | None = None,
        step: int | None = None,
    ) -> list[Claim]:
        """See ``claim``."""
        now = now or utcnow()
        token = secrets.token_hex(16)
        # One ordered index range per state (ix_messages_due): no sort of the
        # whole backlog for each small claim. Retries first, they have waited longest.
        due = _DUE.format(
            filters=_scope_sql(campaign, run, step),
            lock="" if self.sqlite else " FOR UPDATE OF messages SKIP LOCKED",
        )

        def work(s: OutboxSession) -> list[tuple]:
            ids: list[int] = []
            for state in (State.DEFERRED, State.QUEUED):
                if len(ids) < limit:
                    params = {
                        "state": str(state),
                        "now": now,
                        "room": limit - len(ids),
                        "campaign": campaign,
                        "run": run,
                        "step": step,
                    }
                    ids += [row[0] for row in s._rows(due, params)]
            if not ids:
                return []
            listed = _id_list(ids)
            s._execute(_SUPPRESS_CLAIMED, {"now": now}, listed)
            s._execute(
                _TAKE,
                {"token": token, "expires": now + lease, "worker": worker, "now": now},
                listed,
            )
            return s._rows(_CLAIMED, {"token": token}, listed)

        return [
            Claim(
                id,
                key,
                campaign_name,
                email,
                sender,
                SmtpReady(data or b"") if ready else bytes(data or b""),
                attempts,
                token,
                worker,
            )
            for id, key, campaign_name, email, sender, data, attempts, ready in self._write(work)
        ]

    def release(
        self,
        claims: Iterable[Claim],
        *,
        now: datetime | None = None,
        not_before: datetime | None = None,
    ) -> int:
        """See ``release``."""
        now = now or utcnow()
        params = [
            {"id": c.id, "token": c.token, "now": now, "not_before": not_before or now}
            for c in claims
        ]
        return self._write(lambda s: sum(s._execute(_RELEASE, p) for p in params))

    # --- the committing mark and the result ---------------------------------------

    def mark_committing(
        self, claim: Claim, *, lease: timedelta | None = None, now: datetime | None = None
    ) -> bool:
        """See ``mark_committing``."""
        now = now or utcnow()
        return self._write(lambda s: s._commit_in(claim, lease=lease, now=now))

    def finish(
        self,
        claim: Claim,
        result: Finish,
        *,
        max_attempts: int,
        retry_backoff: timedelta,
        server_backoff: timedelta | None = None,
        now: datetime | None = None,
    ) -> State | None:
        """See ``finish``."""
        now = now or utcnow()
        return self._write(
            lambda s: s._finish_in(
                claim,
                result,
                max_attempts=max_attempts,
                retry_backoff=retry_backoff,
                server_backoff=server_backoff,
                now=now,
            )
        )

    def finish_and_commit(
        self,
        done: tuple[Claim, Finish] | None,
        claim: Claim,
        *,
        max_attempts: int,
        retry_backoff: timedelta,
        lease: timedelta | None = None,
        now: datetime | None = None,
    ) -> tuple[State | None, bool]:
        """See ``finish_and_commit``."""
        now = now or utcnow()

        def work(s: OutboxSession) -> tuple[State | None, bool]:
            state = None
            if done is not None:
                state = s._finish_in(
                    done[0],
                    done[1],
                    max_attempts=max_attempts,
                    retry_backoff=retry_backoff,
                    server_backoff=None,
                    now=now,
                )
            return state, s._commit_in(claim, lease=lease, now=now)

        return self._write(work)

    def _commit_in(self, claim: Claim, *, lease: timedelta | None, now: datetime) -> bool:
        params = {
            "id": claim.id,
            "token": claim.token,
            "now": now,
            "expires": now + (lease or LEASE_FOR_DATA),
        }
        return self._execute(_COMMITTING, params) == 1

    def _finish_in(
        self,
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
        updated = self._execute(_FINISH, values)
        self._execute(
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
            suppress_in(self.conn, claim.email, reason="hard_bounce", source=source, now=now)
        return state if updated else None


@contextmanager
def _session(engine: Engine) -> Iterator[OutboxSession]:
    """A session on a pooled connection, for one call."""
    with engine.connect() as conn:
        session = OutboxSession(conn)
        try:
            yield session
        finally:
            session.close()


# --- the same, one call at a time ---------------------------------------------------


def claim(
    engine: Engine,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    now: datetime | None = None,
    campaign: str | None = None,
    run: str | None = None,
    step: int | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` due messages for ``worker``, in one short committed transaction.

    Messages whose address was suppressed after they were queued become
    ``suppressed`` here instead (an unsubscribe between enqueue and send wins).
    ``campaign``, ``run`` and ``step`` narrow the claim to one campaign's run or step.
    """
    with _session(engine) as session:
        return session.claim(
            worker=worker, limit=limit, lease=lease, now=now, campaign=campaign, run=run, step=step
        )


def mark_committing(
    engine: Engine, claim: Claim, *, lease: timedelta | None = None, now: datetime | None = None
) -> bool:
    """The durable mark written just before the body goes out; False if the claim was lost.

    ``lease`` renews the claim from now: it has to cover the DATA exchange only,
    not the time the message waited behind others of its batch.
    """
    with _session(engine) as session:
        return session.mark_committing(claim, lease=lease, now=now)


def release(
    engine: Engine,
    claims: Iterable[Claim],
    *,
    now: datetime | None = None,
    not_before: datetime | None = None,
) -> int:
    """Give back claimed messages that were never tried (shutdown, server down)."""
    with _session(engine) as session:
        return session.release(claims, now=now, not_before=not_before)


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
    with _session(engine) as session:
        return session.finish(
            claim,
            result,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            server_backoff=server_backoff,
            now=now,
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
    with _session(engine) as session:
        return session.finish_and_commit(
            done,
            claim,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            lease=lease,
            now=now,
        )


def _describe(result: Finish) -> str:
    parts = [
        str(result.code) if result.code else "",
        result.enhanced or "",
        (result.text or "").strip(),
    ]
    text = " ".join(p for p in parts if p)
    return text[:1000] or result.outcome


# --- recovery -------------------------------------------------------------------


def lease_expired(state: State, now: datetime) -> sa.ColumnElement[bool]:
    """Messages in ``state`` whose lease ran out (read through ix_messages_leased)."""
    return sa.and_(
        messages.c.state == str(state),
        messages.c.lease_expires_at.is_not(None),
        messages.c.lease_expires_at < now,
    )


def recover(engine: Engine, *, now: datetime | None = None) -> dict[str, int]:
    """Expired leases: ``sending`` goes back to the queue, ``committing`` becomes ``unknown``."""
    now = now or utcnow()
    with write_transaction(engine) as conn:
        requeued = conn.execute(
            messages.update()
            .where(lease_expired(State.SENDING, now))
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
            .where(lease_expired(State.COMMITTING, now))
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
    now: datetime | None = None,
) -> int:
    """Make a run's waiting messages due now unless their own backoff (a real 4xx) says later.

    A server that was down holds messages back without charging an attempt
    (``next_attempt_at`` = the server-wide backoff): an explicit send of the run
    should not wait that out. A message deferred by the server's reply to it
    keeps the backoff of its last charged attempt. Returns how many rows moved.
    """
    now = now or utcnow()
    held = _scoped(
        sa.select(messages.c.id, messages.c.attempts, messages.c.next_attempt_at).where(
            messages.c.state.in_([str(s) for s in PENDING]), messages.c.next_attempt_at > now
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


def in_flight(engine: Engine, *, campaign: str | None = None) -> int:
    query = sa.select(sa.func.count()).where(messages.c.state.in_([str(s) for s in IN_FLIGHT]))
    if campaign is not None:
        query = query.where(messages.c.campaign == campaign)
    with engine.connect() as conn:
        return conn.execute(query).scalar() or 0
