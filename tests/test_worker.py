"""`campaign worker` as a real process: it ticks, delivers to a real SMTP server, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import PG_URL, REPO, _pg_schema_url, write_files
from drip_fixtures import FILES

from engine.db import make_engine, upgrade_schema, write_transaction
from engine.models import drip_enrolments, merchants, messages
from engine.times import utcnow

TOML = '[scheduler]\ntick = "1s"\n\n[delivery]\nrate = "500/s"\nconnections = 2\n'


def _project(tmp_path, url: str, count: int):
    root = tmp_path / "project"
    write_files(root, {**FILES, "campaign.toml": TOML})
    engine = make_engine(url)
    upgrade_schema(engine)
    now = utcnow()
    with write_transaction(engine) as conn:
        conn.execute(
            merchants.insert(),
            [
                {
                    "id": i,
                    "external_id": f"m{i}",
                    "email": f"m{i}@example.id",
                    "store_name": f"Toko {i}",
                    "created_at": now - timedelta(days=1),
                }
                for i in range(1, count + 1)
            ],
        )
    return root, engine


def _start(root, url: str, smtp_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "CAMPAIGN_DATABASE_URL": url,
        "CAMPAIGN_SMTP_URL": smtp_url,
        "CAMPAIGN_SECRET_KEY": "worker-test-key",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "campaign"), "worker", "--project", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def _stop(proc: subprocess.Popen) -> tuple[int, str, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, time.monotonic() - started


def test_worker_delivers_and_stops_on_sigterm(tmp_path, smtp_server):
    url = f"sqlite:///{tmp_path / 'campaign.db'}"
    root, engine = _project(tmp_path, url, 5)
    proc = _start(root, url, smtp_server.url)
    try:
        _wait_for(lambda: len(smtp_server.messages) >= 5)
    finally:
        code, out, took = _stop(proc)
    assert code == 0, out
    assert took < 10
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        f"m{i}@example.id" for i in range(1, 6)
    ]
    assert "tick " in out and "enrolled 5" in out and "worker stopped" in out
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(messages.c.state, sa.func.count()).group_by(messages.c.state)
            ).all()
        )
    assert states == {"sent": 5}
    engine.dispose()


@pytest.mark.skipif(not PG_URL, reason="CAMPAIGN_TEST_PG_URL is not set")
def test_three_workers_on_postgresql_send_nothing_twice(tmp_path, smtp_server):
    admin = sa.create_engine(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = _pg_schema_url(schema)
        root, engine = _project(tmp_path, url, 60)
        procs = [_start(root, url, smtp_server.url) for _ in range(3)]
        try:
            _wait_for(lambda: len(smtp_server.messages) >= 60)
            time.sleep(3)  # a few more ticks each: nothing more may arrive
        finally:
            results = [_stop(p) for p in procs]
        assert [code for code, _out, _took in results] == [0, 0, 0], results
        received = [m.rcpt_tos[0] for m in smtp_server.messages]
        assert len(received) == 60 and len(set(received)) == 60
        with engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(drip_enrolments)).scalar() == 60
            )
            workers = conn.execute(sa.select(messages.c.worker)).scalars().all()
        assert len({w.split("/")[0] for w in workers}) >= 2  # processes shared the work
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_scheduler_settings_read_broadcast_grace(tmp_path):
    from engine.config import load_settings
    from engine.errors import SettingsError

    (tmp_path / "campaign.toml").write_text('[scheduler]\ntick = "30s"\nbroadcast_grace = "2h"\n')
    settings = load_settings(tmp_path, env={})
    assert settings.scheduler.tick == timedelta(seconds=30)
    assert settings.scheduler.broadcast_grace == timedelta(hours=2)
    assert load_settings(tmp_path / "none", env={}).scheduler.broadcast_grace == timedelta(hours=6)
    (tmp_path / "campaign.toml").write_text('[scheduler]\nbroadcast_grace = "soon"\n')
    with pytest.raises(SettingsError, match="broadcast_grace"):
        load_settings(tmp_path, env={})
