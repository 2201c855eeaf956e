"""Schema creation and migration on both backends."""

import pytest
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


def test_0003_moves_messages_in_flight_out_of_the_due_index_and_back(db_url):
    """An outbox made by 0002 (a message mid-send) upgrades and downgrades cleanly."""
    from alembic import command

    from engine.db import alembic_config

    engine = make_engine(db_url)
    command.upgrade(alembic_config(engine), "0002")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO merchants (id, external_id, email, locale, timezone, status, attributes) VALUES (1, 'm1', 'a@b.id', 'id', 'Asia/Jakarta', 'active', '{}')"
            )
        )
        for key, state in (("k-sending", "sending"), ("k-queued", "queued")):
            conn.execute(
                sa.text(
                    "INSERT INTO messages (key, campaign, topic, merchant_id, email, sender, state,"
                    " attempts, next_attempt_at, created_at, updated_at) VALUES (:key, 'c', 'promo',"
                    " 1, 'a@b.id', 's@b.id', :state, 0, :at, :at, :at)"
                ),
                {"key": key, "state": state, "at": "2026-11-30 10:00:00.000000"},
            )
    assert upgrade_schema(engine) == ("0002", head_revision())
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("messages")}
    assert {"ix_messages_due", "ix_messages_leased"} <= indexes
    assert "ix_messages_state_next" not in indexes
    with engine.connect() as conn:
        due = dict(conn.execute(sa.text("SELECT key, next_attempt_at FROM messages")).all())
    assert due["k-sending"] is None and due["k-queued"] is not None
    command.downgrade(alembic_config(engine), "0002")
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("messages")}
    assert "ix_messages_state_next" in indexes and "ix_messages_due" not in indexes
    engine.dispose()


def test_message_bodies_are_compressed_with_lz4_on_postgresql(db_url):
    """Migration 0007: the server compresses 10 KB bodies with lz4, not the slower pglz."""
    from engine.db import ensure_schema

    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        if engine.dialect.name != "postgresql":
            return  # SQLite stores the bodies as they are: nothing to set
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TEMP TABLE lz4_probe (x text COMPRESSION lz4)"))
        except sa.exc.DBAPIError:
            pytest.skip("this PostgreSQL server is built without lz4: bodies stay pglz")
        with engine.connect() as conn:
            method = conn.execute(
                sa.text(
                    "SELECT attcompression FROM pg_attribute"
                    " WHERE attrelid = CAST('message_bodies' AS regclass) AND attname = 'data'"
                )
            ).scalar_one()
        assert method == "l"
    finally:
        engine.dispose()
