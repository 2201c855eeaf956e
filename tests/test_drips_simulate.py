"""simulate (the real tick on a copy, a clock that advances), dry runs, explain, scheduled broadcasts."""

from __future__ import annotations

import json
from datetime import timedelta

import sqlalchemy as sa
from click.testing import CliRunner
from drip_fixtures import FILES, MONDAY, add_merchants, add_order, make_project, outbox, run_ticks

from engine.cli import cli
from engine.clock import FixedClock
from engine.drips import tick
from engine.drips.explain import explain
from engine.drips.simulate import simulate
from engine.models import drip_enrolments, messages, schedule_fires

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WINDOW = 'send_window: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00"}\n'


def _counts(project) -> tuple[int, int]:
    with project.engine.connect() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar(),
            conn.execute(sa.select(sa.func.count()).select_from(drip_enrolments)).scalar(),
        )


def test_simulate_agrees_with_drip_run_step_for_step(project, project_dir):
    files = {"campaigns/welcome.yaml": FILES["campaigns/welcome.yaml"] + WINDOW + "holdout: 25%\n"}
    make_project(project, project_dir, files)
    add_merchants(project, 12, zones=("Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"))
    add_order(project, 4, MONDAY - 16 * DAY)  # step 3's `when` will be false for merchant 4
    start = MONDAY + 4 * DAY + 9 * HOUR  # a Friday evening: the window decides the first step
    forecast = simulate(project, "welcome", days=10, now=start)
    assert _counts(project) == (0, 0)  # nothing changed
    assert forecast.planned
    # drip run at the same clock times, on the real database, does the same.
    for at in forecast.ticks:
        tick(project, clock=FixedClock(at), deliver=False)
    done = [(m, s, at) for m, s, st, at in outbox(project) if st == "queued"]
    planned = [(p.merchant_id, p.step, p.at) for p in forecast.planned]
    assert sorted(done) == sorted(planned)
    assert {s for _m, s, _at in planned} == {1, 2, 3}
    assert (4, 3) not in {(m, s) for m, s, _at in planned}


def test_simulate_command_json_and_dry_run_change_nothing(project, project_dir, project_env):
    make_project(project, project_dir)
    add_merchants(project, 3)
    runner = CliRunner(env=project_env)
    result = runner.invoke(
        cli,
        [
            "simulate",
            "welcome",
            "--days",
            "7",
            "--now",
            MONDAY.isoformat(),
            "--format",
            "json",
            "--project",
            str(project_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    assert {(p["merchant_id"], p["step"]) for p in planned} == {
        (m, s) for m in (1, 2, 3) for s in (1, 2, 3)
    }
    assert planned[0] == {
        "merchant_id": 1,
        "external_id": "m1",
        "step": 1,
        "at": "2026-01-05T03:00:00Z",
    }
    dry = runner.invoke(
        cli,
        ["drip", "run", "--dry-run", "--now", MONDAY.isoformat(), "--project", str(project_dir)],
    )
    assert dry.exit_code == 0, dry.output
    assert "enrolled 3" in dry.output and "queued 3" in dry.output
    assert _counts(project) == (0, 0)


def test_drip_run_command_prints_what_it_did(project, project_dir, project_env):
    make_project(project, project_dir)
    add_merchants(project, 2)
    runner = CliRunner(env=project_env)
    args = ["drip", "run", "welcome", "--now", MONDAY.isoformat(), "--format", "json"]
    # No SMTP server configured: one sentence, and nothing done.
    result = runner.invoke(cli, [*args, "--project", str(project_dir)])
    assert result.exit_code == 1 and "CAMPAIGN_SMTP_URL" in result.output
    assert "Traceback" not in result.output and _counts(project) == (0, 0)


def test_drip_run_delivers_through_smtp(project, project_dir, smtp_server):
    import dataclasses

    make_project(project, project_dir)
    project.settings = dataclasses.replace(project.settings, smtp=smtp_server.settings())
    add_merchants(project, 3)
    report = tick(project, clock=FixedClock(MONDAY))
    assert report.queued == 3 and report.delivered["sent"] == 3
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        f"m{i}@example.id" for i in (1, 2, 3)
    ]
    again = tick(project, clock=FixedClock(MONDAY))
    assert again.queued == 0 and len(smtp_server.messages) == 3


def _story(project, who, now):
    j = explain(project, "welcome", who, now=now)
    return j, {s.step: (s.state, s.reason) for s in j.steps}


def test_explain_tells_each_reason(project, project_dir):
    from engine.suppressions import add_suppression
    from engine.times import parse_rate

    files = {
        "campaigns/welcome.yaml": FILES["campaigns/welcome.yaml"].replace("onboarding", "retention")
        + WINDOW
    }
    make_project(project, project_dir, files, frequency_cap=parse_rate("2/7d", "smhdw"))
    add_merchants(project, 6)
    add_suppression(
        project.engine, "m6@example.id", reason="unsubscribed", topic="retention", now=MONDAY
    )
    # Not entered: suppressed, and (before any tick) "enters on the next tick".
    j, _ = _story(project, "m6@example.id", MONDAY)
    assert j.status == "not_enrolled" and "suppressed" in j.reason
    j, _ = _story(project, "1", MONDAY)
    assert j.status == "not_enrolled" and "next tick" in j.reason
    from engine.db import write_transaction as _wt
    from engine.models import merchants as _merchants

    with _wt(project.engine) as conn:
        conn.execute(_merchants.update().where(_merchants.c.id == 5).values(status="paused"))
    j, _ = _story(project, "5", MONDAY)
    assert j.status == "not_enrolled" and "not in the segment 'everyone'" in j.reason
    run_ticks(project, MONDAY, MONDAY, HOUR)
    # Sent (queued) step 1, step 2 waits for its delay, step 3 planned after it.
    j, steps = _story(project, "m1", MONDAY + HOUR)
    assert j.status == "active" and j.entered_at == MONDAY
    assert steps[1][0] == "queued" and steps[2][0] == "waiting" and "delay" in steps[2][1]
    assert steps[3][0] == "planned"
    assert j.steps[1].at == MONDAY + 2 * DAY and j.steps[2].at == MONDAY + 5 * DAY
    # Saturday: due, but the send window is closed until Monday 09:00 WIB.
    saturday = MONDAY + 5 * DAY
    j, steps = _story(project, "1", saturday)
    assert steps[2][0] == "held" and "send window" in steps[2][1]
    assert j.steps[1].at == MONDAY + 7 * DAY - HOUR  # 09:00 WIB = 02:00 UTC
    # The cap: merchant 3 got two other messages; step 2 is held until the cap frees.
    from engine.db import write_transaction

    with write_transaction(project.engine) as conn:
        conn.execute(
            messages.insert(),
            [
                {
                    "key": f"x/run-{i}/m-3",
                    "campaign": "x",
                    "run": str(i),
                    "topic": "promo",
                    "merchant_id": 3,
                    "email": "m3@example.id",
                    "sender": "a@b.id",
                    "state": "sent",
                    "created_at": MONDAY + i * HOUR,
                    "updated_at": MONDAY,
                    "sent_at": MONDAY + i * HOUR,
                }
                for i in (1, 2)
            ],
        )
    j, steps = _story(project, "3", MONDAY + 2 * DAY)
    assert steps[2][0] == "held" and "frequency cap" in steps[2][1]
    # The goal: an order makes merchant 2 exit at the next tick.
    add_order(project, 2, MONDAY + DAY)
    j, steps = _story(project, "2", MONDAY + 2 * DAY)
    assert steps[2][0] == "exited" and "next tick" in steps[2][1]
    run_ticks(project, MONDAY + 2 * DAY, MONDAY + 2 * DAY, HOUR)
    j, steps = _story(project, "2", MONDAY + 2 * DAY)
    assert j.status == "exited" and steps[2][0] == "exited" and steps[3][0] == "exited"
    assert j.next == "nothing more in this drip"
    # `when` false: merchant 4 had an order 20 days before step 3 falls due.
    add_order(project, 4, MONDAY - 16 * DAY)
    run_ticks(project, MONDAY + 2 * DAY + 3 * HOUR, MONDAY + 2 * DAY + 3 * HOUR, HOUR)
    j, steps = _story(project, "4", MONDAY + 7 * DAY + 3 * HOUR)
    assert steps[3][0] == "skipped" and "when" in steps[3][1]


def test_explain_command_json(project, project_dir, project_env):
    make_project(project, project_dir)
    add_merchants(project, 1)
    run_ticks(project, MONDAY, MONDAY, HOUR)
    result = CliRunner(env=project_env).invoke(
        cli,
        [
            "drip",
            "explain",
            "welcome",
            "--merchant",
            "m1@example.id",
            "--now",
            (MONDAY + HOUR).isoformat(),
            "--format",
            "json",
            "--project",
            str(project_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"campaign", "merchant_id", "entered_at", "status", "steps", "next"} <= set(data)
    assert data["entered_at"] == "2026-01-05T03:00:00Z"
    assert [s["state"] for s in data["steps"]] == ["queued", "waiting", "planned"]
    assert set(data["steps"][0]) == {"step", "state", "at", "reason"}


SCHEDULED = {
    "campaigns/monday.yaml": (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <promo@tokoku.id>"\ntemplate: d/one\nschedule: "0 9 * * mon"\n'
    ),
}


def test_each_fire_time_is_its_own_run_and_the_grace_is_kept(project, project_dir):
    make_project(project, project_dir, SCHEDULED)
    add_merchants(project, 2)
    # Monday 09:00 WIB = 02:00 UTC. A tick at 03:00 UTC (an hour late) sends it.
    first = tick(project, clock=FixedClock(MONDAY), campaign="monday", deliver=False)
    assert [(b.run, b.outcome, b.queued) for b in first.broadcasts] == [
        ("2026-01-05T02:00", "sent", 2)
    ]
    again = tick(project, clock=FixedClock(MONDAY + HOUR), campaign="monday", deliver=False)
    assert again.broadcasts == []  # decided once
    # Next Monday the worker was down until 10:00 UTC: 8 hours late > 6h grace: skipped.
    late = tick(
        project, clock=FixedClock(MONDAY + 7 * DAY + 7 * HOUR), campaign="monday", deliver=False
    )
    assert [(b.run, b.outcome, b.queued) for b in late.broadcasts] == [
        ("2026-01-12T02:00", "skipped", 0)
    ]
    # The Monday after, in time: its own run, sent to everyone again.
    tick(project, clock=FixedClock(MONDAY + 14 * DAY), campaign="monday", deliver=False)
    with project.engine.connect() as conn:
        runs = conn.execute(
            sa.select(messages.c.run, sa.func.count())
            .where(messages.c.campaign == "monday")
            .group_by(messages.c.run)
            .order_by(messages.c.run)
        ).all()
        fires = (
            conn.execute(sa.select(schedule_fires.c.outcome).order_by(schedule_fires.c.fire_at))
            .scalars()
            .all()
        )
    assert [tuple(r) for r in runs] == [("2026-01-05T02:00", 2), ("2026-01-19T02:00", 2)]
    assert fires == ["sent", "skipped", "sent"]
