"""A small drip project for the drip and worker tests: files, merchants, ticks on a fixed clock."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import sqlalchemy as sa
from conftest import write_files

from engine.clock import FixedClock
from engine.db import write_transaction
from engine.drips import tick
from engine.models import merchants, messages, orders

# Monday 5 January 2026, 03:00 UTC = 10:00 WIB, 11:00 WITA, 12:00 WIT.
MONDAY = datetime(2026, 1, 5, 3, 0)

FILES = {
    "segments/everyone.yaml": "rules:\n  field: status\n  eq: active\n",
    "segments/selling.yaml": "rules:\n  metric: orders\n  window: 14d\n  gte: 1\n",
    "templates/d/one.html": '---\nsubject: "One {{ merchant.store_name }}"\n---\n<p>1 <a href="{{ unsubscribe_url }}">x</a></p>\n',
    "templates/d/two.html": '---\nsubject: "Two"\n---\n<p>2 <a href="{{ unsubscribe_url }}">x</a></p>\n',
    "templates/d/three.html": '---\nsubject: "Three"\n---\n<p>3 <a href="{{ unsubscribe_url }}">x</a></p>\n',
    "campaigns/welcome.yaml": (
        "kind: drip\ntopic: onboarding\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\n'
        "exit:\n  segment: selling\n"
        "steps:\n"
        "  - template: d/one\n    delay: 0d\n"
        "  - template: d/two\n    delay: 2d\n"
        "  - template: d/three\n    delay: 3d\n"
        "    when: {metric: orders, window: 30d, eq: 0}\n"
    ),
}


def make_project(project, project_dir, files: dict[str, str] | None = None, **limits):
    """Write the drip files (plus ``files``) and, optionally, other ``[limits]``."""
    write_files(project_dir, {**FILES, **(files or {})})
    if limits:
        project.settings = dataclasses.replace(
            project.settings, limits=dataclasses.replace(project.settings.limits, **limits)
        )
    return project


def add_merchants(project, count: int, *, zones=("Asia/Jakarta",), start: int = 1) -> list[int]:
    ids = list(range(start, start + count))
    with write_transaction(project.engine) as conn:
        conn.execute(
            merchants.insert(),
            [
                {
                    "id": i,
                    "external_id": f"m{i}",
                    "email": f"m{i}@example.id",
                    "store_name": f"Toko {i}",
                    "timezone": zones[(i - start) % len(zones)],
                    "created_at": MONDAY - timedelta(days=1),
                }
                for i in ids
            ],
        )
    return ids


def add_order(project, merchant_id: int, at: datetime, ref: str = "o1") -> None:
    with write_transaction(project.engine) as conn:
        conn.execute(
            orders.insert().values(
                merchant_id=merchant_id, order_ref=ref, amount=100_000, status="paid", placed_at=at
            )
        )


def run_ticks(project, start: datetime, until: datetime, every: timedelta, **kwargs):
    """Ticks (without delivery) from ``start`` to ``until`` inclusive; returns their reports."""
    clock = FixedClock(start)
    reports = []
    while clock.now() <= until:
        reports.append(tick(project, clock=clock, deliver=False, **kwargs))
        clock.advance(every)
    return reports


def outbox(project, campaign: str = "welcome") -> list[tuple[int, int, str, datetime]]:
    """(merchant, step, state, created_at) of a campaign's outbox rows."""
    with project.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(
                    messages.c.merchant_id, messages.c.step, messages.c.state, messages.c.created_at
                )
                .where(messages.c.campaign == campaign)
                .order_by(messages.c.merchant_id, messages.c.step)
            ).all()
        ]
