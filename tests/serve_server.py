"""A real ``campaign serve`` (uvicorn on a free local port) in a thread, for the HTTP tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa

from engine.clock import Clock, SystemClock
from engine.models import merchants, messages
from engine.project import Project
from engine.serve.server import bound_socket, make_server


@contextmanager
def running_server(project: Project, clock: Clock | None = None) -> Iterator[str]:
    """Start the server of ``project``; yields its base URL (``http://127.0.0.1:PORT``)."""
    server = make_server(project, clock or SystemClock(), host="127.0.0.1", port=0, log=False)
    sock = bound_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def add_merchant(engine, merchant_id: int, **values) -> int:
    row = {
        "id": merchant_id,
        "external_id": f"m-{merchant_id}",
        "email": f"seller{merchant_id}@contoh.id",
        "name": f"Seller {merchant_id}",
        "store_name": f"Toko {merchant_id}",
        "locale": "id",
        "created_at": datetime(2026, 1, 1),
        "attributes": {},
        **values,
    }
    with engine.begin() as conn:
        conn.execute(merchants.insert().values(**row))
    return merchant_id


def add_message(engine, merchant_id: int, *, key: str, campaign: str = "winback", step: int | None = 1,
                run: str | None = None, message_id: str | None = None, topic: str = "retention",
                email: str | None = None, at: datetime = datetime(2026, 12, 1, 3),
                row_id: int | None = None) -> int:  # fmt: skip
    """A sent message in the outbox (as the delivery layer leaves it)."""
    values = {
        "key": key, "campaign": campaign, "step": step, "run": run, "topic": topic,
        "merchant_id": merchant_id, "email": email or _email_of(engine, merchant_id),
        "sender": "success@tokoku.id", "subject": "Halo", "state": "sent", "attempts": 1,
        "message_id": message_id, "created_at": at, "updated_at": at, "sent_at": at,
    }  # fmt: skip
    if row_id is not None:
        values["id"] = row_id
    with engine.begin() as conn:
        return conn.execute(messages.insert().values(**values).returning(messages.c.id)).scalar()


def _email_of(engine, merchant_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(merchants.c.email).where(merchants.c.id == merchant_id)
        ).scalar()


def table_rows(engine, table) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]
