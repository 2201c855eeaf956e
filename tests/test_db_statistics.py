"""PostgreSQL's planner statistics are refreshed after a tick writes many rows.

Without it the statements of the same tick that join the new rows are planned for
the tables as they were (a handful of rows) and crawl: a 100,000-merchant tick
took a minute instead of seconds.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from drip_fixtures import FILES, MONDAY, add_merchants, make_project

from engine.clock import FixedClock
from engine.db import STALE_STATISTICS_ROWS, refresh_statistics
from engine.drips import tick
from engine.models import drip_enrolments

WINDOW = 'send_window: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00"}\n'
MANY = STALE_STATISTICS_ROWS + 200


def _estimated_rows(project, table: str) -> float:
    with project.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"), {"t": table}
        ).scalar_one()


@pytest.fixture
def pg_project(project):
    if project.engine.dialect.name != "postgresql":
        pytest.skip("planner statistics are PostgreSQL's; SQLite plans these joins by index")
    return project


def test_a_tick_that_enrols_and_queues_many_refreshes_the_statistics(pg_project, project_dir):
    project = pg_project
    make_project(
        project, project_dir, {"campaigns/welcome.yaml": FILES["campaigns/welcome.yaml"] + WINDOW}
    )
    add_merchants(project, MANY)
    assert _estimated_rows(project, "drip_enrolments") <= 0  # never analysed
    # Sunday: everyone is enrolled, the window is closed, nothing is queued.
    report = tick(project, clock=FixedClock(MONDAY - timedelta(days=1)), deliver=False)
    assert report.enrolled == MANY and report.queued == 0
    assert _estimated_rows(project, "drip_enrolments") == MANY
    assert _estimated_rows(project, "messages") <= 0
    # Monday: every step 1 goes into the outbox, and the step advances for all of them.
    report = tick(project, clock=FixedClock(MONDAY), deliver=False)
    assert report.queued == MANY
    assert _estimated_rows(project, "messages") == MANY
    with project.engine.connect() as conn:
        steps = conn.execute(sa.select(drip_enrolments.c.step).distinct()).scalars().all()
    assert steps == [1]


def test_a_few_rows_are_not_worth_an_analyze(pg_project, project_dir):
    make_project(pg_project, project_dir)
    add_merchants(pg_project, 5)
    tick(pg_project, clock=FixedClock(MONDAY - timedelta(days=1)), deliver=False)
    assert _estimated_rows(pg_project, "drip_enrolments") <= 0
    refresh_statistics(pg_project.engine, drip_enrolments, STALE_STATISTICS_ROWS)
    assert _estimated_rows(pg_project, "drip_enrolments") == 5
