"""`campaign worker` as a real process: it ticks, delivers to a real SMTP server, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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


def _project(tmp_path, url: str, count: int, toml: str = TOML):
    root = tmp_path / "project"
    write_files(root, {**FILES, "campaign.toml": toml})
    engine = make_engine(url)
    upgrade_schema(engine)
    _add_merchants(engine, count)
    return root, engine


def _add_merchants(engine, count: int) -> None:
    if not count:
        return
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


class Running:
    """A ``campaign worker`` process and the lines it has logged so far."""

    def __init__(self, root, url: str, smtp_url: str) -> None:
        env = {
            **os.environ,
            "CAMPAIGN_DATABASE_URL": url,
            "CAMPAIGN_SMTP_URL": smtp_url,
            "CAMPAIGN_SECRET_KEY": "worker-test-key",
            "PYTHONPATH": str(REPO),
        }
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "campaign"), "worker", "--project", str(root)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def stop(self) -> tuple[int, str, float]:
        """SIGTERM; returns (exit code, output, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        took = time.monotonic() - started
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code, "".join(self.lines), took


def _wait_for(predicate, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_worker_delivers_and_stops_on_sigterm(tmp_path, smtp_server):
    url = f"sqlite:///{tmp_path / 'campaign.db'}"
    root, engine = _project(tmp_path, url, 5)
    worker = Running(root, url, smtp_server.url)
    try:
        _wait_for(lambda: len(smtp_server.messages) >= 5)
    finally:
        code, out, took = worker.stop()
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


def test_sigterm_in_the_middle_of_a_large_tick_stops_it_and_the_next_tick_goes_on(
    tmp_path, smtp_server
):
    """A tick rendering 20,000 messages stops at its next batch: the worker exits in seconds."""
    from engine.clock import SystemClock
    from engine.drips import tick
    from engine.project import open_project

    count = 20_000
    url = f"sqlite:///{tmp_path / 'campaign.db'}"
    root, engine = _project(tmp_path, url, count)

    def queued() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar()

    worker = Running(root, url, smtp_server.url)
    try:
        _wait_for(lambda: queued() > 0)
        assert not worker.logged("Z: enrolled"), "the tick ended before the signal: nothing tested"
    finally:
        code, out, took = worker.stop()
    assert code == 0, out
    assert took < 15, out
    assert "stopped early by a signal" in out and "worker stopped" in out
    left = queued()
    assert 0 < left < count
    # The next tick queues the rest, each merchant's step 1 once.
    project = open_project(root, env={"CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_SECRET_KEY": "k"})
    report = tick(project, clock=SystemClock(), deliver=False)
    project.close()
    assert report.queued == count - left and not report.stopped
    with engine.connect() as conn:
        ids = conn.execute(sa.select(messages.c.merchant_id).where(messages.c.step == 1))
        assert sorted(ids.scalars()) == list(range(1, count + 1))
        steps = conn.execute(sa.select(drip_enrolments.c.step).distinct()).scalars().all()
    assert steps == [1]
    engine.dispose()


@pytest.mark.skipif(not PG_URL, reason="CAMPAIGN_TEST_PG_URL is not set")
def test_three_workers_on_postgresql_send_nothing_twice(tmp_path, smtp_server):
    admin = sa.create_engine(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = _pg_schema_url(schema)
        # Small claims (4 messages: rate x lease / 4) and a slow server, so that each
        # worker's delivery loop gets a share; the merchants arrive once all three run.
        slow = (
            '[scheduler]\ntick = "1s"\n\n[delivery]\nrate = "8/s"\nconnections = 1\n'
            'lease = "2s"\ntimeout = "1s"\n'
        )
        root, engine = _project(tmp_path, url, 0, slow)
        smtp_server.delay("body", 0.1)
        workers = [Running(root, url, smtp_server.url) for _ in range(3)]
        try:
            _wait_for(lambda: all(w.logged("worker started") for w in workers))
            _add_merchants(engine, 60)
            _wait_for(lambda: len(smtp_server.messages) >= 60)
            time.sleep(3)  # a few more ticks each: nothing more may arrive
        finally:
            results = [w.stop() for w in workers]
        assert [code for code, _out, _took in results] == [0, 0, 0], results
        received = [m.rcpt_tos[0] for m in smtp_server.messages]
        assert len(received) == 60 and len(set(received)) == 60
        with engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(drip_enrolments)).scalar() == 60
            )
            workers = conn.execute(sa.select(messages.c.worker)).scalars().all()
        assert len({w.split("/")[0] for w in workers}) >= 2  # processes shared the work
    finally:
        if "engine" in locals():
            engine.dispose()
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
