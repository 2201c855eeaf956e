"""SIGINT (Ctrl-C) and SIGTERM during a real send: a clean stop, claims given back at once.

A real `campaign send` process against a slow SMTP server in another process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import sqlalchemy as sa
from conftest import write_files
from smtp_server import Rule, spawn_server
from test_send import FILES
from test_send_crash import (
    CAMPAIGN,
    check_nothing_twice,
    final_states,
    start_send,
    wait_for_records,
)

from engine.db import make_engine, upgrade_schema
from engine.models import merchants, messages

MERCHANTS = 120
TOML = """
[delivery]
connections = 2
rate = "2000/s"
lease = "5m"
timeout = "10s"
"""


def _shop(folder, files: dict[str, str], db_url: str):
    """A project of ``files`` and MERCHANTS merchants; returns its engine."""
    write_files(folder, {**files, "campaign.toml": TOML})
    engine = make_engine(db_url)
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            merchants.insert(),
            [
                {"id": i, "external_id": f"m{i}", "email": f"m{i}@example.id",
                 "store_name": f"Toko {i}", "attributes": {"greeting": "halo"}}
                for i in range(1, MERCHANTS + 1)
            ],
        )  # fmt: skip
    return engine


@pytest.fixture
def slow_shop(tmp_path, db_url):
    folder = tmp_path / "shop"
    engine = _shop(folder, FILES, db_url)
    yield folder, engine
    engine.dispose()


@pytest.fixture
def slow_server(tmp_path):
    server = spawn_server(tmp_path / "received.jsonl", rules=[Rule("body", delay=0.05)])
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_send_stops_cleanly_and_a_rerun_finishes(
    slow_shop, slow_server, db_url, number
):
    folder, engine = slow_shop
    process = start_send(folder, db_url, slow_server.url)
    wait_for_records(slow_server, 10, process)
    started = time.monotonic()
    process.send_signal(number)
    out, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 10  # within seconds: only the messages in flight finish
    assert process.returncode == 128 + number, err.decode()
    text = (out + err).decode()
    assert "Traceback" not in text and "Aborted" not in text
    assert "stopped by a signal" in text  # the usual summary, with what is left
    with engine.connect() as conn:
        in_flight = conn.execute(
            sa.select(sa.func.count()).where(messages.c.state.in_(["sending", "committing"]))
        ).scalar()
    assert in_flight == 0  # every claim went back at once, none waits out its lease
    delivered = len(slow_server.records())
    assert delivered < MERCHANTS

    rerun = start_send(folder, db_url, slow_server.url)
    _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    assert final_states(engine) == {"sent": MERCHANTS}
    assert len(check_nothing_twice(slow_server, engine)) == MERCHANTS


@pytest.mark.slow
def test_a_rerun_during_a_live_lease_says_what_is_held(slow_shop, slow_server, db_url):
    """A sender killed outright (no clean stop) leaves claims under a live lease: say so."""
    folder, _engine = slow_shop
    process = start_send(folder, db_url, slow_server.url)
    wait_for_records(slow_server, 5, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    rerun = subprocess.run(
        [*CAMPAIGN, "send", "news", "--project", str(folder)],
        env=os.environ
        | {"CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SMTP_URL": slow_server.url,
           "CAMPAIGN_SECRET_KEY": "crash-test-key"},
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    err = rerun.stderr.decode()
    assert "held by another sender" in err and "until 20" in err, err


@pytest.mark.slow
def test_ctrl_c_during_drip_run_stops_its_delivery_and_a_rerun_finishes(
    tmp_path, slow_server, db_url
):
    """`drip run` queues, then delivers: Ctrl-C there stops it with the summary and 130."""
    from drip_fixtures import FILES as DRIP_FILES

    folder = tmp_path / "drips"
    engine = _shop(folder, DRIP_FILES, db_url)
    env = os.environ | {
        "CAMPAIGN_DATABASE_URL": db_url,
        "CAMPAIGN_SMTP_URL": slow_server.url,
        "CAMPAIGN_SECRET_KEY": "crash-test-key",
    }
    command = [*CAMPAIGN, "drip", "run", "--project", str(folder)]
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_records(slow_server, 10, process)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert time.monotonic() - started < 10
        text = (out + err).decode()
        assert process.returncode == 130, text
        assert "Traceback" not in text and "stopped early by a signal" in text
        assert len(slow_server.records()) < MERCHANTS
        rerun = subprocess.run(command, env=env, capture_output=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr.decode()
        assert final_states(engine) == {"sent": MERCHANTS}
        assert len(check_nothing_twice(slow_server, engine)) == MERCHANTS
    finally:
        engine.dispose()
