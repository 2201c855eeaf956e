"""Database engines, their transaction rules, and schema migrations (Alembic, in ``engine/migrations``).

The one place that knows how SQLite and PostgreSQL differ for writers: on
PostgreSQL each connection commits on its own (claims use ``FOR UPDATE SKIP
LOCKED``); on SQLite every write transaction starts with ``BEGIN IMMEDIATE``
and the threads of one process queue on one mutex per database file.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from engine.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration in engine/migrations (tests/test_db.py checks that they agree).
# Knowing it lets every command check the schema without loading Alembic at all.
SCHEMA_REVISION = "0007"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, **kwargs) -> Engine:
    """An Engine for ``url``: SQLite in WAL mode with foreign keys on, or PostgreSQL."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # Let SQLAlchemy issue BEGIN itself, so `BEGIN IMMEDIATE` can be asked for.
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


_WRITER_LOCKS: dict[str, threading.RLock] = {}
WRITER_LOCKS_GUARD = threading.Lock()


def sqlite_writer_lock(engine: Engine) -> threading.RLock:
    """One lock per SQLite file in this process (re-entrant: a writer may nest)."""
    key = str(engine.url.database)
    with WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(key, threading.RLock())


@contextmanager
def write_transaction(engine: Engine, *, checkpoint_after: bool = False) -> Iterator[Connection]:
    """A short write transaction; ``BEGIN IMMEDIATE`` on SQLite.

    pysqlite normally opens transactions itself (lazily, DEFERRED), so a
    SELECT-then-UPDATE in WAL mode can fail with "database is locked" instead of
    waiting. The SQLAlchemy-documented recipe: put the DBAPI connection in
    autocommit mode (``isolation_level = None``) and emit BEGIN ourselves.

    ``checkpoint_after`` (SQLite, for large writes such as a batch of message
    bodies): the WAL checkpoint that the commit would run while this process's
    other writers wait on the mutex runs after it, beside them, instead.
    """
    if not is_sqlite(engine):
        with engine.begin() as conn:
            yield conn
        return
    # Threads of this process queue on a mutex rather than in SQLite's busy
    # handler, which sleeps in steps of milliseconds: with several sender threads
    # that sleeping, not the writes, was most of the time per message. Other
    # processes still wait in the busy handler (busy_timeout).
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        previous = dbapi.isolation_level
        dbapi.isolation_level = None
        automatic = None
        if checkpoint_after:
            automatic = dbapi.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            dbapi.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            with sqlite_writer_lock(engine):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        finally:
            dbapi.isolation_level = previous
            if automatic is not None:
                dbapi.execute(f"PRAGMA wal_autocheckpoint = {int(automatic)}")
        if checkpoint_after:
            # PASSIVE: copies what it can without waiting for (or blocking) anyone.
            dbapi.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


# PostgreSQL plans each statement from table statistics that autovacuum refreshes
# only a while after a table changed. A statement right after a large insert (a
# tick's new enrolments, a step's new messages) is otherwise planned for the
# table as it was: a join it believes is over a handful of rows becomes a nested
# loop over tens of thousands (a 100,000-merchant tick took a minute, not seconds).
STALE_STATISTICS_ROWS = 1000


def refresh_statistics(engine: Engine, table: sa.Table, changed: int) -> None:
    """``ANALYZE`` ``table`` on PostgreSQL when ``changed`` rows (or more) were just written.

    Run after the writing transaction committed, in one of its own. SQLite's
    planner does not depend on such statistics here: nothing to do.
    """
    if changed >= STALE_STATISTICS_ROWS and engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"ANALYZE {engine.dialect.identifier_preparer.format_table(table)}"
            )


def dialect_insert(engine_or_conn: Engine | Connection):
    """The dialect's ``insert`` (with ``on_conflict_do_nothing``): PostgreSQL's or SQLite's."""
    dialect = engine_or_conn.dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert


def alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(sa.create_engine("sqlite://")))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def describe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Create or migrate the schema to the newest revision; returns (before, after)."""
    from alembic import command

    try:
        before = current_revision(engine)
        if before != head_revision():
            command.upgrade(alembic_config(engine), "head")
        return before, current_revision(engine)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot reach the database at {describe_url(engine)}: {_first_line(exc)}"
        ) from None
    except sa.exc.DBAPIError as exc:
        # Reached, but the tables cannot be made: a missing schema in search_path, no CREATE right.
        raise DatabaseError(
            f"cannot set up the schema in the database at {describe_url(engine)}: {_first_line(exc)}"
        ) from None


def ensure_schema(engine: Engine) -> None:
    """Used by commands that need the tables: create or migrate them on first use."""
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        if stored == SCHEMA_REVISION:
            return
    except sa.exc.DBAPIError:
        pass  # no schema yet, or no database: upgrade_schema says which, in one sentence
    upgrade_schema(engine)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


# --- a connection's own write transactions, straight to the DBAPI (the outbox's hot path) ---
#
# Claims, committing marks and results are most of a send's database work. A
# ``WriteSession`` keeps one connection and sends statements straight to its DBAPI
# cursor: building and compiling Core statements per message cost more than running
# them. Statements use named ``:param`` placeholders (pysqlite's), rewritten as
# ``%(param)s`` for psycopg; datetimes go to SQLite in SQLAlchemy's text format.

_PLACEHOLDER = re.compile(r":([a-z_]+)")
_T = TypeVar("_T")


@functools.cache
def _for_psycopg(sql: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", sql)


@dataclass(eq=False)
class _Work:
    """One thread's piece of a shared SQLite write transaction (see ``WriteSession.write``)."""

    work: Callable[[Any], Any]
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


class WriteSession:
    """Short committed write transactions on one connection, shared between threads on SQLite.

    The caller owns ``conn`` and closes it after ``close()``. Each ``write(work)``
    is committed before it returns: on PostgreSQL by this connection alone; on
    SQLite in a ``BEGIN IMMEDIATE`` transaction behind this process's writer
    mutex, where whoever holds the mutex runs every piece of work queued by then
    (its own and that of the threads waiting behind it) and commits once (group
    commit). A waiting thread whose work was done that way returns without
    writing anything itself: its rows were committed before it got the mutex.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = is_sqlite(conn)
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

    def write(self, work: Callable[[Any], _T]) -> _T:
        """Run ``work(self)`` in a committed write transaction and return its result."""
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
        assert group is not None
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

    def execute(self, sql: str, params: dict[str, Any], ids: str | None = None) -> int:
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

    def rows(self, sql: str, params: dict[str, Any], ids: str | None = None) -> list[tuple]:
        self.execute(sql, params, ids)
        return self._cursor.fetchall()


def id_list(ids: Iterable[int]) -> str:
    """Integer ids read from the database, written inline in an ``IN (...)`` list."""
    return ", ".join(str(int(i)) for i in ids)
