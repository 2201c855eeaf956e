"""The same tick by two processes at once on PostgreSQL: nothing enrolled, queued or sent twice."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import PG_URL, REPO, _pg_schema_url, write_files
from drip_fixtures import FILES, MONDAY

from engine.db import make_engine, upgrade_schema, write_transaction
from engine.models import drip_enrolments, merchants, messages

pytestmark = pytest.mark.skipif(not PG_URL, reason="CAMPAIGN_TEST_PG_URL is not set")
COUNT = 40


@pytest.fixture
def pg_url():
    admin = sa.create_engine(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_two_processes_run_the_same_tick_at_once(tmp_path, pg_url, smtp_server):
    root = tmp_path / "project"
    write_files(root, FILES)
    engine = make_engine(pg_url)
    upgrade_schema(engine)
    with write_transaction(engine) as conn:
        conn.execute(
            merchants.insert(),
            [
                {"id": i, "external_id": f"m{i}", "email": f"m{i}@example.id"}
                for i in range(1, COUNT + 1)
            ],
        )
    env = {
        **os.environ,
        "CAMPAIGN_DATABASE_URL": pg_url,
        "CAMPAIGN_SMTP_URL": smtp_server.url,
        "CAMPAIGN_SECRET_KEY": "k",
        "PYTHONPATH": str(REPO),
    }
    command = [
        str(Path(sys.executable).parent / "campaign"),
        "drip",
        "run",
        "--now",
        MONDAY.isoformat(),
        "--format",
        "json",
        "--project",
        str(root),
    ]
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    received = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert sorted(received) == sorted(f"m{i}@example.id" for i in range(1, COUNT + 1))
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(drip_enrolments)).scalar() == COUNT
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == COUNT
        steps = conn.execute(sa.select(drip_enrolments.c.step).distinct()).scalars().all()
    assert steps == [1]
    engine.dispose()
