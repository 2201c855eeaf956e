"""The drip engine on a fixed clock over simulated weeks (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from drip_fixtures import MONDAY, add_merchants, add_order, make_project, outbox, run_ticks

from engine.clock import FixedClock
from engine.drips import tick

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def test_steps_go_at_their_delays_and_the_sequence_finishes(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 3)
    reports = run_ticks(project, MONDAY, MONDAY + 8 * DAY, HOUR)
    assert reports[0].enrolled == 3 and reports[0].queued == 3
    rows = outbox(project)
    assert [(m, s, at) for m, s, _state, at in rows] == [
        (m, s, MONDAY + d) for m in (1, 2, 3) for s, d in ((1, 0 * DAY), (2, 2 * DAY), (3, 5 * DAY))
    ]
    assert {state for _m, _s, state, _at in rows} == {"queued"}
    assert sum(r.enrolled for r in reports) == 3  # enrolled once, not every tick
    assert sum(d.finished for r in reports for d in r.drips) == 3


def test_the_same_tick_twice_queues_nothing_twice(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 4)
    clock = FixedClock(MONDAY)
    first = tick(project, clock=clock, deliver=False)
    again = tick(project, clock=clock, deliver=False)
    assert (first.enrolled, first.queued) == (4, 4)
    assert (again.enrolled, again.queued) == (0, 0)
    assert len(outbox(project)) == 4


def test_catch_up_after_downtime_sends_each_due_step_once(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 2)
    tick(project, clock=FixedClock(MONDAY), deliver=False)
    # Ten days of nothing: step 2 fell due long ago and goes once; step 3 counts its
    # delay from step 2, so it waits three days more (not once per missed tick).
    later = MONDAY + 10 * DAY
    reports = run_ticks(project, later, later + 2 * HOUR, HOUR)
    assert [r.queued for r in reports] == [2, 0, 0]
    assert [(m, s, at) for m, s, _st, at in outbox(project)] == [
        (1, 1, MONDAY), (1, 2, later), (2, 1, MONDAY), (2, 2, later)
    ]
    assert reports[-1].waiting["delay"] == 2
    run_ticks(project, later + 3 * DAY, later + 3 * DAY, HOUR)
    assert [s for _m, s, _st, _at in outbox(project)] == [1, 2, 3, 1, 2, 3]


def test_exit_on_the_goal_between_steps(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 2)
    tick(project, clock=FixedClock(MONDAY), deliver=False)
    add_order(project, 1, MONDAY + DAY)  # merchant 1 starts selling after step 1
    reports = run_ticks(project, MONDAY + 2 * DAY, MONDAY + 6 * DAY, DAY)
    assert reports[0].drips[0].exited == {2: 1}  # exits counted by the step they miss
    assert [(m, s) for m, s, _st, _at in outbox(project)] == [(1, 1), (2, 1), (2, 2), (2, 3)]


def test_a_false_when_passes_the_step_over(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 2)
    # An order 20 days ago: not "selling" (14 days) so no exit, but step 3's
    # ``when`` (no order in 30 days) is false for merchant 1.
    add_order(project, 1, MONDAY - 20 * DAY)
    reports = run_ticks(project, MONDAY, MONDAY + 6 * DAY, DAY)
    assert [(m, s) for m, s, _st, _at in outbox(project)] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    assert sum(d.skipped["step_condition"] for r in reports for d in r.drips) == 1
    assert sum(d.finished for r in reports for d in r.drips) == 2
