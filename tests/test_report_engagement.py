"""The report's clicks, hard and soft bounces, exits and waiting merchants come from their
tables (``clicks``, ``bounces``, ``drip_enrolments``), per campaign step, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta

from drip_fixtures import MONDAY, add_merchants, add_order, make_project, run_ticks
from serve_server import add_merchant, add_message

from engine.db import write_transaction
from engine.models import bounces, clicks
from engine.reports import campaign_report

AT = datetime(2026, 12, 1, 3)


def test_clicks_and_bounces_are_counted_per_step(project):
    for i in (1, 2, 3):
        add_merchant(project.engine, i)
    one = add_message(project.engine, 1, key="winback/step-1/m-1", at=AT)
    two = add_message(project.engine, 2, key="winback/step-1/m-2", at=AT)
    three = add_message(project.engine, 3, key="winback/step-2/m-3", step=2, at=AT)
    with write_transaction(project.engine) as conn:
        conn.execute(
            clicks.insert(),
            [
                {"message_id": one, "url": "https://a.example.id", "clicked_at": AT},
                {"message_id": one, "url": "https://b.example.id", "clicked_at": AT},
                {"message_id": two, "url": "https://a.example.id", "clicked_at": AT},
            ],
        )
        conn.execute(
            bounces.insert(),
            [
                {"message_id": two, "email": "seller2@contoh.id", "kind": "soft",
                 "fingerprint": "f2", "bounced_at": AT, "imported_at": AT},
                {"message_id": three, "email": "seller3@contoh.id", "kind": "hard",
                 "fingerprint": "f3", "bounced_at": AT, "imported_at": AT},
            ],
        )  # fmt: skip
    rows = {r["step"]: r for r in campaign_report(project, "winback")}
    assert (rows[1]["clicks"], rows[1]["soft_bounces"], rows[1]["bounced"]) == (3, 1, 0)
    assert (rows[2]["clicks"], rows[2]["soft_bounces"], rows[2]["bounced"]) == (0, 0, 1)
    # Outside --since the messages (and so their clicks) are not in the report.
    later = {r["step"]: r for r in campaign_report(project, "winback", since=datetime(2026, 12, 2))}
    assert all(r["clicks"] == 0 and r["bounced"] == 0 for r in later.values())


def test_exits_and_waiting_are_counted_per_drip_step(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 3)
    hour = timedelta(hours=1)
    run_ticks(project, MONDAY, MONDAY, hour)  # step 1 queued for all three
    add_order(project, 1, MONDAY + hour)  # merchant 1 sells: the exit goal
    run_ticks(project, MONDAY + 2 * hour, MONDAY + 2 * hour, hour)
    rows = {r["step"]: r for r in campaign_report(project, "welcome")}
    assert rows[2]["exited"] == 1  # left by the goal before step 2
    assert rows[2]["waiting"] == 2  # the other two wait for step 2's delay
    assert rows[1]["exited"] == 0 and rows[1]["sent"] + rows[1]["queued"] == 3
