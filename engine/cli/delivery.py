"""Commands for delivery: ``send``, ``retry --unknown`` and ``suppress``."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.main import (
    MAX_COUNT,
    cli,
    command_clock,
    format_option,
    is_terminal,
    load_project,
    now_option,
    parse_now,
    project_option,
)
from engine.cli.output import echo_err, print_csv, print_json, print_table, progress_bar

SAMPLE = 10  # recipients shown in the table form of a dry run


@cli.command()
@click.argument("campaign")
@click.option(
    "--dry-run", is_flag=True, help="Compute and render everything; send nothing, change nothing."
)
@click.option(
    "--limit", type=click.IntRange(1, MAX_COUNT), default=None, help="At most N new messages."
)
@click.option(
    "--run",
    "run_label",
    default=None,
    help="Start a new broadcast run with this label (default: resume the manual run).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write each message as a .eml file here.",
)
@now_option
@format_option("table", "json")
@project_option
def send(
    campaign: str,
    dry_run: bool,
    limit: int | None,
    run_label: str | None,
    out_dir: Path | None,
    now_text: str | None,
    output_format: str,
    project_dir: Path,
) -> None:
    """Send a broadcast now (or a drip's first step to members who have not had it).

    Sending again resumes the same run and never repeats a delivered message.
    The exit code is 1 when a message failed or the SMTP server was unavailable
    (messages left waiting only because of a 4xx: exit 0, with a note).
    """
    from engine.interrupts import stop_on_signals
    from engine.sending import send_campaign

    project = load_project(project_dir)
    now = parse_now(now_text)
    label = "Rendering" if dry_run else "Sending"
    bar = is_terminal() and output_format == "table"
    with stop_on_signals() as stop, progress_bar(f"{label} {campaign}", None, bar) as update:
        report = send_campaign(
            project,
            campaign,
            now=now,
            dry_run=dry_run,
            limit=limit,
            run=run_label,
            out_dir=out_dir,
            progress=update,
            stop=stop.event,
        )
    report.interrupted = stop.name
    if output_format == "json":
        print_json(report.to_json())
    else:
        _print_send(report, out_dir)
    if stop.signal is not None:
        raise click.exceptions.Exit(stop.exit_code)
    if report.failed:
        raise click.exceptions.Exit(1)


def _print_send(report, out_dir: Path | None) -> None:
    what = f"step {report.step}" if report.step else f"run {report.run!r}"
    verb = "would send" if report.dry_run else "messages for this send"
    click.echo(
        f"{report.campaign} ({report.kind}, {what}): audience {report.audience}, {verb} {report.would_send}."
    )
    skips = [(reason, count) for reason, count in sorted(report.skipped.items()) if count]
    if skips:
        print_table(skips, ("skipped because", "merchants"))
    if report.dry_run:
        sample = report.messages[:SAMPLE]
        if sample:
            rows = [(m["merchant_id"], m["email"], m["subject"]) for m in sample]
            title = f"first {len(sample)} of {len(report.messages)} recipients"
            print_table(rows, ("merchant", "email", "subject"), title=title)
    else:
        states = sorted(report.states.items())
        if states:
            click.echo(f"Outbox of {report.campaign}, {what}:")
            print_table(states, ("state", "messages"))
        click.echo(
            f"new in the outbox: {report.enqueued}; resumed from an earlier send: {report.pending}."
        )
    for error in report.render_errors[:SAMPLE]:
        # The reason may already start with "merchant N: " (header checks): name the merchant once.
        reason = str(error["reason"]).removeprefix(f"merchant {error['merchant_id']}: ")
        echo_err(f"render error for merchant {error['merchant_id']} ({error['email']}): {reason}")
    if out_dir is not None and report.messages:
        click.echo(f"wrote {len(report.messages)} .eml files to {out_dir}")
    for note in report.notes:
        echo_err(f"note: {note}")


@cli.command()
@click.option(
    "--unknown",
    "unknown",
    is_flag=True,
    required=True,
    help="Resend the messages whose fate is unknown.",
)
@click.argument("campaign")
@project_option
def retry(unknown: bool, campaign: str, project_dir: Path) -> None:
    """Resend a campaign's `unknown` messages, on purpose (the server may already have them)."""
    from engine.sending import retry_unknown

    project = load_project(project_dir)
    with progress_bar(f"Resending {campaign}", None, is_terminal()) as update:
        report = retry_unknown(project, campaign, progress=update)
    click.echo(f"{campaign}: {report.would_send} unknown message(s) queued again.")
    if report.states:
        print_table(sorted(report.states.items()), ("state", "messages"), title="resent")
    if report.server_down:
        echo_err(f"note: the SMTP server is unavailable ({report.server_down}); retry later")
    if report.failed:
        raise click.exceptions.Exit(1)


@cli.group()
def suppress() -> None:
    """The suppression list: addresses that must not be emailed."""


@suppress.command("add")
@click.argument("email")
@click.option(
    "--topic",
    default="all",
    show_default=True,
    help="A topic (onboarding, retention, promo, partnership) or all.",
)
@click.option(
    "--reason",
    default="manual",
    show_default=True,
    help="unsubscribe, hard_bounce, complaint, manual, ...",
)
@click.option("--source", default="cli", show_default=True, help="Where the request came from.")
@project_option
def suppress_add(email: str, topic: str, reason: str, source: str, project_dir: Path) -> None:
    """Stop emailing EMAIL (for one topic or all)."""
    from engine.suppressions import add_suppression, stored_address

    project = load_project(project_dir)
    added = add_suppression(
        project.database(),
        email,
        topic=topic,
        reason=reason,
        source=source,
        now=command_clock().now(),
    )
    scope = "all topics" if topic in ("all", "*") else f"topic {topic}"
    click.echo(
        f"{stored_address(email)}: {'suppressed' if added else 'already suppressed'} for {scope}."
    )


@suppress.command("remove")
@click.argument("email")
@click.option(
    "--topic", default=None, help="Only this topic's entry (default: every entry of EMAIL)."
)
@project_option
def suppress_remove(email: str, topic: str | None, project_dir: Path) -> None:
    """Allow EMAIL again."""
    from engine.suppressions import remove_suppression, stored_address

    project = load_project(project_dir)
    removed = remove_suppression(project.database(), email, topic=topic)
    click.echo(f"{stored_address(email)}: removed {removed} suppression(s).")


@suppress.command("list")
@click.option("--email", default=None, help="Only this address.")
@click.option("--topic", default=None, help="Only this topic (or all).")
@format_option("table", "json", "csv")
@project_option
def suppress_list(
    email: str | None, topic: str | None, output_format: str, project_dir: Path
) -> None:
    """Show the suppression list."""
    from engine.suppressions import ALL_TOPICS, list_suppressions

    project = load_project(project_dir)
    rows = list_suppressions(project.database(), email=email, topic=topic)
    # Stored as "*"; shown as "all", the word `suppress add --topic all` takes.
    rows = [{**r, "topic": "all" if r["topic"] == ALL_TOPICS else r["topic"]} for r in rows]
    columns = ("email", "reason", "topic", "created_at", "source")
    if output_format == "json":
        print_json(
            [
                {k: r[k] for k in ("email", "reason", "topic", "created_at")}
                | {"source": r["source"]}
                for r in rows
            ]
        )
    elif output_format == "csv":
        print_csv(rows, columns)
    else:
        print_table(
            [[r[c] for c in columns] for r in rows], columns, title=f"{len(rows)} suppressed"
        )
