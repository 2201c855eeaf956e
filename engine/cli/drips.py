"""Commands for drips and the scheduler: ``drip run``, ``drip explain``, ``simulate``, ``worker``."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import (
    cli,
    command_clock,
    format_option,
    load_project,
    now_option,
    project_option,
)
from engine.cli.output import print_json, print_table


@cli.group()
def drip() -> None:
    """Drip sequences: run a scheduler tick, explain one merchant's journey."""


@drip.command("run")
@click.argument("campaign", required=False)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run the tick on a copy of the database: change nothing, send nothing.",
)
@now_option
@format_option("table", "json")
@project_option
def drip_run(
    campaign: str | None, dry_run: bool, now_text: str | None, output_format: str, project_dir: Path
) -> None:
    """One scheduler tick: enrol, exit, advance and queue every drip (or CAMPAIGN) and every
    scheduled broadcast that is due, then deliver."""
    from engine.drips import tick
    from engine.interrupts import stop_on_signals

    project = load_project(project_dir)
    with stop_on_signals() as stop:
        report = tick(
            project,
            clock=command_clock(now_text),
            campaign=campaign,
            dry_run=dry_run,
            stop=stop.event,
        )
    if output_format == "json":
        print_json(report.to_json())
    else:
        _print_tick(report)
    if stop.signal is not None:
        raise click.exceptions.Exit(stop.exit_code)
    if report.failed:
        raise SystemExit(1)


def _print_tick(report) -> None:
    rows = []
    for d in report.drips:
        waiting = ", ".join(f"{k} {v}" for k, v in sorted(d.waiting.items()) if v)
        rows.append(
            (
                d.campaign,
                d.enrolled,
                _per_step(d.exited),
                _per_step(d.queued),
                _per_step(d.holdout),
                waiting,
                d.finished,
            )
        )
    title = f"drip tick at {report.at.isoformat(timespec='seconds')}Z" + (
        " (dry run: nothing changed)" if report.dry_run else ""
    )
    print_table(
        rows,
        ("campaign", "enrolled", "exited", "queued", "holdout", "waiting", "finished"),
        title=title,
    )
    for b in report.broadcasts:
        click.echo(
            f"{b.campaign}: fire time {b.run}Z {b.outcome}"
            + (f", {b.queued} queued" if b.queued else "")
        )
    click.echo(report.summary())
    if report.server_down:
        click.echo(
            f"the SMTP server is unavailable ({report.server_down}): messages wait in the outbox"
        )


def _per_step(counts) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v) or "0"


@drip.command("explain")
@click.argument("campaign")
@click.option(
    "--merchant",
    "who",
    required=True,
    metavar="ID|EMAIL",
    help="The merchant: id, email or external id.",
)
@now_option
@format_option("table", "json")
@project_option
def drip_explain(
    campaign: str, who: str, now_text: str | None, output_format: str, project_dir: Path
) -> None:
    """One merchant's journey: entered, each step sent / due / held and by what, what happens next."""
    from engine.drips.explain import explain

    project = load_project(project_dir)
    journey = explain(project, campaign, who, now=command_clock(now_text).now())
    if output_format == "json":
        print_json(journey.to_json())
        return
    entered = journey.to_json()["entered_at"] or "-"
    click.echo(
        f"{journey.campaign}, merchant {journey.merchant_id}: {journey.status}, entered {entered}"
        + (f" ({journey.reason})" if journey.reason else "")
        + (" [holdout]" if journey.holdout else "")
    )
    if journey.steps:
        print_table(
            [(s.step, s.state, s.to_json()["at"] or "", s.reason or "") for s in journey.steps],
            ("step", "state", "at", "reason"),
        )
    click.echo(f"next: {journey.next}")


@cli.command()
@click.argument("campaign")
@click.option("--days", type=click.IntRange(1, 366), required=True, help="How many days ahead.")
@now_option
@format_option("table", "json")
@project_option
def simulate(
    campaign: str, days: int, now_text: str | None, output_format: str, project_dir: Path
) -> None:
    """Forecast who gets which step of CAMPAIGN when over the next N days, changing nothing."""
    from engine.drips.simulate import simulate as run_simulation

    project = load_project(project_dir)
    result = run_simulation(project, campaign, days=days, now=command_clock(now_text).now())
    if output_format == "json":
        print_json([p.to_json() for p in result.planned])
        return
    by_day: dict[tuple[str, int], int] = {}
    for p in result.planned:
        key = (p.at.date().isoformat(), p.step)
        by_day[key] = by_day.get(key, 0) + 1
    print_table(
        [(day, step, n) for (day, step), n in sorted(by_day.items())],
        ("day (UTC)", "step", "messages"),
        title=f"{campaign}: {len(result.planned)} message(s) in {days} day(s)",
    )
    click.echo(
        f"{result.holdout} holdout, {result.exited} exit(s) by the goal; nothing was changed"
    )


@cli.command()
@click.option(
    "--once", is_flag=True, hidden=True, help="Run one tick and one delivery pass, then exit."
)
@project_option
def worker(once: bool, project_dir: Path) -> None:
    """Run drip ticks, scheduled broadcasts and delivery until stopped (SIGTERM or Ctrl-C
    finish the messages in flight, then exit 0)."""
    import logging

    from engine.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Our own line per tick is enough: APScheduler's job lines and Alembic's set-up are noise.
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_worker(load_project(project_dir), once=once)
