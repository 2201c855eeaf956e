"""Schema creation and migration on both backends."""

import sqlalchemy as sa

from engine.db import current_revision, head_revision, make_engine, upgrade_schema
from engine.models import metadata


def test_upgrade_creates_schema_and_second_run_is_a_no_op(db_url):
    engine = make_engine(db_url)
    before, after = upgrade_schema(engine)
    assert before is None
    assert after == head_revision()
    assert upgrade_schema(engine) == (head_revision(), head_revision())
    engine.dispose()


def test_migrations_match_the_models(db_url):
    """The Alembic migrations produce exactly the tables and columns the models describe."""
    engine = make_engine(db_url)
    upgrade_schema(engine)
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    engine.dispose()


def test_sqlite_uses_wal_and_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade_schema(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_schema_that_cannot_be_created_is_one_sentence(db_url):
    """A search_path naming a missing schema (PostgreSQL) or a read-only file (SQLite)."""
    from click.testing import CliRunner

    from engine.cli import cli

    if db_url.startswith("sqlite"):
        # A database file the process may read but not change: the schema cannot be created.
        sa.create_engine(db_url).dispose()
        db_url = db_url + "?mode=ro"
        url = db_url.replace("sqlite:///", "sqlite:///file:") + "&uri=true"
    else:
        url = db_url.rsplit("%3D", 1)[0] + "%3Dno_such_schema_here"
    result = CliRunner().invoke(cli, ["db", "upgrade"], env={"CAMPAIGN_DATABASE_URL": url})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "the database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_schema_revision_constant_is_the_newest_migration():
    from engine.db import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION


def test_ensure_schema_creates_then_leaves_alone(db_url):
    from engine.db import ensure_schema

    engine = make_engine(db_url)
    ensure_schema(engine)
    assert current_revision(engine) == head_revision()
    ensure_schema(engine)  # the fast path: nothing to do
    assert current_revision(engine) == head_revision()
    engine.dispose()
