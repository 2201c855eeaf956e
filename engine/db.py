"""Database engines and schema migrations (Alembic, shipped in ``engine/migrations``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration in engine/migrations (tests/test_db.py checks that they agree).
# Knowing it lets every command check the schema without loading Alembic at all.
SCHEMA_REVISION = "0004"


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


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


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
