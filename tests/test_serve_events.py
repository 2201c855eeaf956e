"""The events API through a real uvicorn server: good and bad rows, tokens, limits, retries."""

from __future__ import annotations

import contextlib
import json
import socket
from datetime import datetime

import httpx
import pytest
from serve_server import running_server, table_rows

from engine.clock import FixedClock
from engine.models import activities, merchants, orders
from engine.project import open_project

TOKEN = "events-token-0123456789"
NOW = datetime(2026, 12, 2, 9, 0)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(project_dir, project_env):
    (project_dir / "campaign.toml").write_text('[serve]\nmax_body = "64KiB"\n')
    project = open_project(project_dir, env={**project_env, "CAMPAIGN_API_TOKEN": TOKEN})
    project.database()
    with running_server(project, FixedClock(NOW)) as base, httpx.Client(base_url=base) as client:
        yield project, client
    project.close()


GOOD = {
    "merchants": [
        {"external_id": "m-1", "email": "Budi@Contoh.ID", "store_name": "Kopi Budi", "locale": "id"},
        {"external_id": "m-2", "email": "sari@contoh.id", "created_at": "2026-12-02T08:59:00Z"},
    ],
    "orders": [
        {"merchant_external_id": "m-1", "order_ref": "A-1", "amount": 150000, "status": "paid",
         "placed_at": "2026-12-02T15:59:00+07:00"},
    ],
    "activities": [{"merchant_external_id": "m-2", "kind": "login", "occurred_at": "2026-12-02T08:00Z"}],
}  # fmt: skip


def _stored(project) -> tuple:
    engine = project.engine
    return (
        sorted(
            (m["external_id"], m["email"], m["created_at"]) for m in table_rows(engine, merchants)
        ),
        [(o["order_ref"], o["amount"], o["placed_at"]) for o in table_rows(engine, orders)],
        [(a["kind"], a["occurred_at"]) for a in table_rows(engine, activities)],
    )


def test_good_rows_are_upserted_and_a_retry_of_the_same_body_changes_nothing(api):
    project, client = api
    answer = client.post("/api/v1/events", json=GOOD, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 4 and answer.json()["rejected"] == []
    first = _stored(project)
    assert first == (
        [("m-1", "budi@contoh.id", NOW), ("m-2", "sari@contoh.id", datetime(2026, 12, 2, 8, 59))],
        [("A-1", 150000, datetime(2026, 12, 2, 8, 59))],
        [("login", datetime(2026, 12, 2, 8, 0))],
    )
    again = client.post("/api/v1/events", json=GOOD, headers=AUTH)
    assert again.status_code == 200 and again.json()["accepted"] == 4
    assert _stored(project) == first


def test_bad_rows_are_listed_with_index_and_reason_and_the_good_ones_written(api):
    project, client = api
    body = {
        "merchants": [{"external_id": "m-1", "email": "budi@contoh.id"}, {"external_id": "m-2", "email": "nope"}],
        "orders": [{"merchant_external_id": "m-1", "order_ref": "A-1", "amount": -5, "status": "paid",
                    "placed_at": "2026-12-01"},
                   {"merchant_external_id": "ghost", "order_ref": "A-2", "amount": 1, "status": "paid",
                    "placed_at": "2026-12-01"}],
    }  # fmt: skip
    answer = client.post("/api/v1/events", json=body, headers=AUTH)
    assert answer.status_code == 200
    data = answer.json()
    assert data["accepted"] == 1
    assert [(r["kind"], r["index"]) for r in data["rejected"]] == [
        ("merchants", 1),
        ("orders", 0),
        ("orders", 1),
    ]
    assert "unknown merchant 'ghost'" in data["rejected"][2]["reason"]
    assert [m[0] for m in _stored(project)[0]] == ["m-1"]


def test_all_rows_rejected_is_422_and_nothing_is_written(api):
    project, client = api
    body = {"merchants": [{"external_id": "m-1", "email": "nope"}], "orders": ["x"]}
    answer = client.post("/api/v1/events", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert len(answer.json()["rejected"]) == 2
    assert _stored(project) == ([], [], [])
    shape = client.post("/api/v1/events", json={"sellers": []}, headers=AUTH)
    assert shape.status_code == 422 and "unknown key 'sellers'" in shape.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}],
)  # fmt: skip
def test_a_missing_or_wrong_token_is_401_and_nothing_is_written(api, headers):
    project, client = api
    answer = client.post("/api/v1/events", json=GOOD, headers=headers)
    assert answer.status_code == 401
    assert _stored(project) == ([], [], [])


def test_bad_json_is_400(api):
    _, client = api
    for body in (b"{not json", b"\xff\xfe", b"", b"[" * 50_000, b'{"orders": "\\ud800"'):
        answer = client.post(
            "/api/v1/events", content=body, headers={**AUTH, "content-type": "application/json"}
        )
        assert answer.status_code == 400, body
    assert client.get("/healthz").status_code == 200


def test_an_oversized_body_is_413_by_length_and_while_streaming(api):
    project, client = api
    big = {
        "merchants": [{"external_id": f"m-{i}", "email": f"s{i}@contoh.id"} for i in range(3000)]
    }
    data = json.dumps(big).encode()
    assert len(data) > 64 * 1024
    assert client.post("/api/v1/events", content=data, headers=AUTH).status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    assert client.post("/api/v1/events", content=chunks(), headers=AUTH).status_code == 413
    assert _stored(project) == ([], [], [])
    assert client.get("/healthz").status_code == 200


def test_a_client_that_sends_endless_data_is_cut_off_at_the_limit(api):
    _, client = api
    host, port = str(client.base_url).removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )  # fmt: skip
        reply = b""
        try:
            for _ in range(100):  # 100 x 8 KiB: far over the 64 KiB limit
                sock.sendall(b"2000\r\n" + b"[" * 8192 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert client.get("/healthz").status_code == 200


def test_without_an_api_token_the_api_is_off(project):
    with running_server(project) as base:
        answer = httpx.post(f"{base}/api/v1/events", json=GOOD, headers=AUTH)
    assert answer.status_code == 404
