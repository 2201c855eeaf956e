"""Database engines, their transaction rules, and schema migrations (Alembic, in ``engine/migrations``).

The one place that knows how SQLite and PostgreSQL differ for writers: on
PostgreSQL each connection commits on its own (claims use ``FOR UPDATE SKIP
LOCKED``); on SQLite every write transaction starts with ``BEGIN IMMEDIATE``
and the threads of one process queue on one mutex per database file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from engine.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration in engine/migrations (tests/test_db.py checks that they agree).
# Knowing it lets every command check the schema without loading Alembic at all.
SCHEMA_REVISION = "0006"


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
