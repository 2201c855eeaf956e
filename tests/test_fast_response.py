"""Fast response (issue 12): with `campaign worker` ticking every second, a merchant created
through the events API gets step 1 within a tick or two, and a paid order posted through the
API makes it exit the drip before its next step. Real processes: `campaign serve`,
`campaign worker`, and the SMTP test server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import REPO, write_files
from test_worker import Running, _wait_for

from engine.db import make_engine, upgrade_schema
from engine.models import drip_enrolments
from engine.times import utcnow

TOKEN = "events-test-token"
FILES = {
    "campaign.toml": '[scheduler]\ntick = "1s"\n\n[delivery]\nrate = "500/s"\nconnections = 1\n',
    "segments/everyone.yaml": "rules:\n  field: status\n  eq: active\n",
    "segments/selling.yaml": "rules:\n  metric: orders\n  window: 14d\n  gte: 1\n",
    "templates/w/one.html": '---\nsubject: "Selamat datang"\n---\n<p>1 <a href="{{ unsubscribe_url }}">x</a></p>\n',
    "templates/w/two.html": '---\nsubject: "Langkah dua"\n---\n<p>2 <a href="{{ unsubscribe_url }}">x</a></p>\n',
    "campaigns/welcome.yaml": (
        "kind: drip\ntopic: onboarding\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\n'
        "exit:\n  segment: selling\n"
        "steps:\n"
        "  - template: w/one\n    delay: 0d\n"
        "  - template: w/two\n    delay: 1h\n"
    ),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_an_api_merchant_gets_step_1_within_a_tick_and_an_api_order_exits_it(
    tmp_path, db_url, smtp_server
):
    root = tmp_path / "project"
    write_files(root, FILES)
    engine = make_engine(db_url)
    upgrade_schema(engine)
    port = _free_port()
    env = {
        **os.environ,
        "CAMPAIGN_DATABASE_URL": db_url,
        "CAMPAIGN_SECRET_KEY": "worker-test-key",
        "CAMPAIGN_API_TOKEN": TOKEN,
        "PYTHONPATH": str(REPO),
    }
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "campaign"), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--project", str(root)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = Running(root, db_url, smtp_server.url)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        _wait_for(lambda: _healthy(base), timeout=30)
        _wait_for(lambda: worker.logged("tick "), timeout=60)  # the worker is ticking
        created = time.monotonic()
        answer = httpx.post(
            f"{base}/api/v1/events",
            headers=auth,
            json={"merchants": [{"external_id": "api-1", "email": "baru@contoh.id",
                                 "store_name": "Toko Baru"}]},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        _wait_for(lambda: len(smtp_server.messages) >= 1, timeout=30)
        took = time.monotonic() - created
        first = smtp_server.messages[0]
        assert first.rcpt_tos[0] == "baru@contoh.id" and b"Selamat datang" in first.data
        assert took < 15, f"step 1 took {took:.1f} s with a 1 s tick"

        # The first sale arrives through the API: the goal is met long before step 2 (1 h later).
        order = {"merchant_external_id": "api-1", "order_ref": "o-1", "amount": 150000,
                 "status": "paid", "placed_at": utcnow().isoformat()}  # fmt: skip
        answer = httpx.post(f"{base}/api/v1/events", headers=auth, json={"orders": [order]})
        assert answer.status_code == 200, answer.text
        ordered = time.monotonic()
        _wait_for(lambda: _exited(engine), timeout=30)
        assert time.monotonic() - ordered < 15
        time.sleep(2)  # a few more ticks: nothing else goes to an exited merchant
        assert len(smtp_server.messages) == 1
    finally:
        code, out, _took = worker.stop()
        serve.terminate()
        serve.wait(timeout=30)
        engine.dispose()
    assert code == 0, out


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _exited(engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.select(sa.func.count()).where(drip_enrolments.c.exited_at.is_not(None))
            ).scalar()
        )
