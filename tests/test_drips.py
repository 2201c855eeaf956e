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
        (1, 1, MONDAY),
        (1, 2, later),
        (2, 1, MONDAY),
        (2, 2, later),
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
    assert [(m, s) for m, s, _st, _at in outbox(project)] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (2, 3),
    ]
    assert sum(d.skipped["step_condition"] for r in reports for d in r.drips) == 1
    assert sum(d.finished for r in reports for d in r.drips) == 2


WINDOW = 'send_window: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00"}\n'
ZONES = ("Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura")


def _with(extra: str) -> dict[str, str]:
    from drip_fixtures import FILES

    return {"campaigns/welcome.yaml": FILES["campaigns/welcome.yaml"] + extra}


def test_weekend_and_hours_outside_the_window_wait_in_each_time_zone(project, project_dir):
    make_project(project, project_dir, _with(WINDOW))
    add_merchants(project, 3, zones=ZONES)
    friday = MONDAY + 4 * DAY + 7 * HOUR  # Friday 10:00 UTC: 17:00 WIB, 18:00 WITA, 19:00 WIT
    reports = run_ticks(project, friday, friday + 3 * DAY, HOUR)
    assert reports[0].enrolled == 3 and reports[0].queued == 0
    assert reports[0].waiting["send_window"] == 3
    # Monday 09:00 in each merchant's own time zone.
    monday = MONDAY + 7 * DAY
    assert [(m, s, at) for m, s, _st, at in outbox(project)] == [
        (1, 1, monday - 3 * HOUR + 2 * HOUR),  # 09:00 WIB = 02:00 UTC
        (2, 1, monday - 3 * HOUR + 1 * HOUR),  # 09:00 WITA = 01:00 UTC
        (3, 1, monday - 3 * HOUR),  # 09:00 WIT = 00:00 UTC
    ]
    # Step 2 is due two days after step 1 went, at 09:00 local again: inside the window.
    run_ticks(project, monday, monday + 3 * DAY, HOUR)
    steps2 = [(m, at) for m, s, _st, at in outbox(project) if s == 2]
    assert steps2 == [(m, at + 2 * DAY) for m, s, _st, at in outbox(project) if s == 1]


def test_holdout_is_stable_recorded_and_never_emailed(project, project_dir):
    from engine.campaigns import in_holdout

    make_project(project, project_dir, _with("holdout: 20%\n"))
    ids = add_merchants(project, 200)
    reports = run_ticks(project, MONDAY, MONDAY + 6 * DAY, DAY)
    rows = outbox(project)
    held = {m for m, _s, st, _at in rows if st == "holdout"}
    assert held == {i for i in ids if in_holdout("welcome", i, 0.2)}
    assert 20 <= len(held) <= 60  # close to 20% of 200
    # Each step recorded for them at the moment it would have gone, with its timing.
    assert {(m, s) for m, s, st, _at in rows if m in held} == {
        (m, s) for m in held for s in (1, 2, 3)
    }
    assert all(st == "holdout" for m, _s, st, _at in rows if m in held)
    assert sum(sum(d.holdout.values()) for r in reports for d in r.drips) == 3 * len(held)
    assert reports[0].queued == 200 - len(held)
    from engine.drips.explain import explain

    story = explain(project, "welcome", str(min(held)), now=MONDAY + 6 * DAY)
    assert story.holdout and story.status == "finished"
    assert [(s.state, s.reason) for s in story.steps] == [
        ("holdout", "control group: recorded, never emailed")
    ] * 3


def test_the_frequency_cap_holds_a_step_and_releases_it_later(project, project_dir):
    from engine.times import parse_rate

    files = _with("")
    files["campaigns/welcome.yaml"] = files["campaigns/welcome.yaml"].replace(
        "onboarding", "retention"
    )
    files["campaigns/news.yaml"] = (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: d/one\n'
    )
    make_project(project, project_dir, files, frequency_cap=parse_rate("1/7d", "smhdw"))
    add_merchants(project, 2)
    from engine.sending import send_campaign

    # Merchant 1 had a promo yesterday (merchant 2 is not in that run: limit 1).
    send_campaign(project, "news", now=MONDAY - DAY, limit=1, deliver=False)
    reports = run_ticks(project, MONDAY, MONDAY + 8 * DAY, DAY)
    assert reports[0].queued == 1 and reports[0].waiting["frequency_cap"] == 1
    step1 = {m: at for m, s, _st, at in outbox(project) if s == 1}
    # Released by the first (daily) tick after the promo has left the rolling 7 days.
    assert step1 == {1: MONDAY + 7 * DAY, 2: MONDAY}
    assert sum(r.waiting["frequency_cap"] for r in reports) >= 6


def test_reentry_after_the_pause_enrols_again(project, project_dir):
    import sqlalchemy as sa

    from engine.models import drip_enrolments

    make_project(project, project_dir, _with("reenter_after: 30d\n"))
    add_merchants(project, 1)
    run_ticks(project, MONDAY, MONDAY + 5 * DAY, DAY)  # finishes on day 5
    run_ticks(project, MONDAY + 20 * DAY, MONDAY + 20 * DAY, DAY)  # too soon
    run_ticks(project, MONDAY + 36 * DAY, MONDAY + 36 * DAY, DAY)
    with project.engine.connect() as conn:
        rows = conn.execute(
            sa.select(drip_enrolments.c.cycle, drip_enrolments.c.entered_at).order_by(
                drip_enrolments.c.cycle
            )
        ).all()
    assert [tuple(r) for r in rows] == [(1, MONDAY), (2, MONDAY + 36 * DAY)]
    # The second entry is a new journey: its steps are sent again, under keys of their own.
    run_ticks(project, MONDAY + 36 * DAY, MONDAY + 42 * DAY, DAY)
    with project.engine.connect() as conn:
        from engine.models import messages

        keys = sorted(conn.execute(sa.select(messages.c.key)).scalars())
    first = [k for k in keys if ".c2/" not in k]
    second = [k for k in keys if ".c2/" in k]
    assert first == ["welcome/step-1/m-1", "welcome/step-2/m-1", "welcome/step-3/m-1"]
    assert second == ["welcome/step-1.c2/m-1", "welcome/step-2.c2/m-1", "welcome/step-3.c2/m-1"]
    steps = sorted((s, at) for _m, s, _st, at in outbox(project))
    assert [at for s, at in steps if s == 1] == [MONDAY, MONDAY + 36 * DAY]


def test_without_reenter_after_a_merchant_enters_once(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 1)
    reports = run_ticks(project, MONDAY, MONDAY + 60 * DAY, 5 * DAY)
    assert sum(r.enrolled for r in reports) == 1


def test_a_suppressed_merchant_is_not_enrolled(project, project_dir):
    from engine.suppressions import add_suppression

    make_project(project, project_dir)
    add_merchants(project, 2)
    add_suppression(
        project.engine, "m1@example.id", reason="unsubscribed", topic="onboarding", now=MONDAY
    )
    report = tick(project, clock=FixedClock(MONDAY), deliver=False)
    assert report.enrolled == 1 and [m for m, *_ in outbox(project)] == [2]
