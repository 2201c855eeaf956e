"""``campaign serve`` through a real uvicorn server: one-click unsubscribe, the page, resubscribe, health."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import httpx
import pytest
from serve_server import add_merchant, running_server, table_rows

from engine.clock import FixedClock
from engine.errors import TokenError
from engine.models import suppressions
from engine.project import open_project
from engine.serve.server import make_server
from engine.unsubscribe import Signer

SECRET = "test-secret-key"
NOW = datetime(2026, 12, 2, 4, 0)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def served(project):
    add_merchant(project.engine, 42, store_name="Kopi Budi", locale="id")
    add_merchant(project.engine, 43, store_name="Batik Sari", locale="en")
    with running_server(project, FixedClock(NOW)) as base, httpx.Client(base_url=base) as client:
        yield client


def _url(merchant_id: int, topic: str = "retention", key: str = SECRET) -> str:
    return f"/u/{Signer({1: key}).token(merchant_id, topic)}"


def _suppressions(project) -> list[tuple]:
    return [
        (r["email"], r["topic"], r["reason"], r["created_at"])
        for r in table_rows(project.engine, suppressions)
    ]


def test_one_click_post_urlencoded_suppresses_the_topic_at_once(project, served):
    answer = served.post(_url(42), data=ONE_CLICK)
    assert answer.status_code == 200
    assert "set-cookie" not in answer.headers and "location" not in answer.headers
    assert _suppressions(project) == [("seller42@contoh.id", "retention", "unsubscribe", NOW)]
    again = served.post(_url(42), data=ONE_CLICK)  # repeating it is harmless
    assert again.status_code == 200
    assert len(_suppressions(project)) == 1


def test_one_click_post_multipart_is_accepted_too(project, served):
    answer = served.post(_url(42, "promo"), files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200, answer.text
    assert _suppressions(project) == [("seller42@contoh.id", "promo", "unsubscribe", NOW)]


def test_one_click_without_a_content_type_is_accepted(project, served):
    answer = served.post(_url(42), content=b"List-Unsubscribe=One-Click")
    assert answer.status_code == 200
    assert len(_suppressions(project)) == 1


@pytest.mark.parametrize(
    ("merchant_id", "words"),
    [
        (
            42,
            [
                "Kopi Budi",
                "Berhenti menerima email tips dan kabar toko",
                "Semua email",
                'lang="id"',
            ],
        ),
        (
            43,
            ["Batik Sari", "Stop receiving tips and store news emails", "all emails", 'lang="en"'],
        ),
    ],
)
def test_get_page_in_the_merchants_language_changes_nothing(project, served, merchant_id, words):
    answer = served.get(_url(merchant_id))
    assert answer.status_code == 200
    page = answer.text
    for word in words:
        assert word.lower() in page.lower()
    assert '<form method="post">' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert 'name="scope" value="all"' in page
    assert "set-cookie" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"
    assert _suppressions(project) == []


def test_all_emails_then_resubscribe_undoes_only_the_web_unsubscribe(project, served):
    with project.engine.begin() as conn:  # a bounce suppression that no web page may lift
        conn.execute(
            suppressions.insert().values(
                email="seller42@contoh.id", topic="promo", reason="hard_bounce", created_at=NOW
            )
        )
    done = served.post(_url(42), data={**ONE_CLICK, "scope": "all"})
    assert done.status_code == 200
    assert "tidak akan menerima email apa pun" in done.text
    assert 'name="action" value="resubscribe"' in done.text
    assert ("seller42@contoh.id", "*", "unsubscribe", NOW) in _suppressions(project)
    undo = served.post(_url(42), data={"action": "resubscribe", "scope": "all"})
    assert undo.status_code == 200 and "berlangganan lagi" in undo.text.lower()
    assert _suppressions(project) == [("seller42@contoh.id", "promo", "hard_bounce", NOW)]


def test_resubscribe_of_one_topic(project, served):
    served.post(_url(43), data=ONE_CLICK)
    served.post(_url(43, "promo"), data=ONE_CLICK)
    answer = served.post(_url(43), data={"action": "resubscribe"})
    assert answer.status_code == 200 and "subscribed again" in answer.text
    assert [(e, t) for e, t, _, _ in _suppressions(project)] == [("seller43@contoh.id", "promo")]


@pytest.mark.parametrize(
    "path",
    [
        _url(42, key="attacker-key"),  # forged: signed with another key
        _url(42).replace("/u/42.", "/u/43."),  # altered merchant
        _url(42).replace(".retention.", ".promo."),  # altered topic
        _url(42)[:-2] + "AA",  # altered signature
        _url(42).replace(".1.", ".2."),  # a key version no longer known (expired)
        _url(999),  # a valid signature for a merchant that does not exist
        "/u/42.retention.1",
        "/u/%FF%FE",
        "/u/" + "A" * 5000,
    ],
)
def test_forged_altered_expired_and_unknown_tokens_get_4xx_and_change_nothing(
    project, served, path
):
    for method in ("GET", "POST"):
        answer = served.request(method, path, data=ONE_CLICK if method == "POST" else None)
        assert 400 <= answer.status_code < 500, (method, path, answer.status_code)
        assert "location" not in answer.headers
    assert _suppressions(project) == []


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"List-Unsubscribe=Nope", {"content-type": "application/x-www-form-urlencoded"}),
        (b"", {"content-type": "application/x-www-form-urlencoded"}),
        (b"\xff\xfe=\xff", {"content-type": "application/x-www-form-urlencoded"}),
        (b"--x\r\nbroken", {"content-type": "multipart/form-data; boundary=x"}),
        (b"A" * 70_000, {"content-type": "application/x-www-form-urlencoded"}),
        (b"List-Unsubscribe=One-Click", {"content-type": "multipart/form-data"}),
    ],
)
def test_malformed_posts_get_4xx_and_the_server_keeps_answering(project, served, body, headers):
    answer = served.post(_url(42), content=body, headers=headers)
    assert 400 <= answer.status_code < 500, answer.status_code
    assert _suppressions(project) == []
    assert served.get("/healthz").status_code == 200


def _raw(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * 100_000
        + b"\r\n\r\n",  # huge header
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # path tricks
        b"GET /u/..%2f..%2fhealthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /healthz/../u/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /u/x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n",
    ],
)
def test_broken_requests_get_4xx_or_are_dropped_and_the_server_keeps_answering(
    project, served, request_bytes
):
    reply = _raw(str(served.base_url).rstrip("/"), request_bytes)
    if reply:
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500, reply[:200]
    assert served.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/u/"), ("GET", "/api/v1/events"), ("POST", "/healthz"),
     ("GET", "/c/"), ("PUT", "/u/x"), ("GET", "/docs"), ("GET", "/favicon.ico")],
)  # fmt: skip
def test_no_other_route_answers_2xx(served, method, path):
    assert 400 <= served.request(method, path).status_code < 500


def test_healthz(served):
    answer = served.get("/healthz")
    assert (answer.status_code, answer.text) == (200, "ok")


def test_healthz_reports_an_unreachable_database(project_dir, tmp_path):
    env = {"CAMPAIGN_SECRET_KEY": SECRET, "CAMPAIGN_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    project = open_project(project_dir, env=env)
    with running_server(project) as base:
        (tmp_path / "x.db").unlink()
        (tmp_path / "x.db").mkdir()  # the file is gone and cannot be recreated
        project.engine.dispose()
        assert httpx.get(f"{base}/healthz").status_code == 503
    project.close()


@pytest.mark.parametrize(("trusted", "recorded"), [(False, "127.0.0.1"), (True, "203.0.113.9")])
def test_forwarded_headers_are_honoured_only_from_a_trusted_proxy(
    project_dir, project_env, trusted, recorded
):
    if trusted:
        (project_dir / "campaign.toml").write_text('[serve]\ntrusted_proxies = ["127.0.0.1"]\n')
    project = open_project(project_dir, env=project_env)
    add_merchant(project.database(), 42)
    with running_server(project) as base:
        headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        answer = httpx.post(f"{base}{_url(42)}", data=ONE_CLICK, headers=headers)
        assert answer.status_code == 200
    [row] = table_rows(project.engine, suppressions)
    assert row["source"] == f"web {recorded}"
    project.close()


def test_serve_refuses_to_start_without_a_secret_key(project_dir, db_url):
    project = open_project(project_dir, env={"CAMPAIGN_DATABASE_URL": db_url})
    with pytest.raises(TokenError, match="CAMPAIGN_SECRET_KEY is not set"):
        make_server(project, FixedClock(NOW), host="127.0.0.1", port=0)
    project.close()


def test_the_command_serves_in_several_worker_processes(project, project_env):
    add_merchant(project.engine, 42)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from engine.cli import main; main()", "serve", "--port",
               str(port), "--workers", "2", "--no-access-log", "--project", str(project.root)]  # fmt: skip
    server = subprocess.Popen(command, env={**os.environ, **project_env})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        for _ in range(4):  # whichever process answers
            assert httpx.post(f"{base}{_url(42)}", data=ONE_CLICK).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    assert [(e, t) for e, t, _, _ in _suppressions(project)] == [
        ("seller42@contoh.id", "retention")
    ]
