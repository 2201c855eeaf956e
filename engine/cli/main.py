"""The ``campaign`` group, shared options and the one place errors become exit codes."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click
import sqlalchemy as sa

from engine.clock import Clock, clock_for
from engine.errors import CampaignError, UsageError
from engine.project import Project, open_project
from engine.times import parse_timestamp


class CampaignGroup(click.Group):
    """Turns user mistakes (``CampaignError``) into one sentence on stderr and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CampaignError as exc:
            raise click.ClickException(str(exc)) from None
        except sa.exc.OperationalError as exc:
            orig = str(getattr(exc, "orig", exc)).strip().splitlines()
            raise click.ClickException(
                f"the database cannot be used: {orig[0] if orig else exc.__class__.__name__}"
            ) from None
        except OSError as exc:
            # A file or folder that cannot be read or written (--out in a missing or read-only
            # place): the environment, not a bug, so one sentence. Other OS errors stay loud.
            if exc.filename is None:
                raise
            raise click.ClickException(f"{exc.filename}: {exc.strerror or exc}") from None


def project_option(func):
    """``--project DIR`` on every command (default: the current directory)."""
    return click.option(
        "--project",
        "project_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=".",
        envvar="CAMPAIGN_PROJECT",
        show_default=True,
        help="The campaign project folder (segments/, campaigns/, templates/, campaign.toml).",
    )(func)


def format_option(*choices: str, default: str = "table"):
    """``--format`` with exactly the forms this command prints (and says so in its help)."""
    scripts = [c for c in choices if c != "table"]
    forms = " or ".join(scripts)
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help=f"Output: a table for people, {forms} for scripts." if forms else "Output.",
    )


# The largest count an option takes: far beyond any audience, well inside both databases' integers.
MAX_COUNT = 1_000_000_000


def load_project(project_dir: Path) -> Project:
    """Open the project of ``--project``; its database connections close with the command."""
    if not project_dir.is_dir():
        raise UsageError(f"{project_dir}: no such project folder")
    project = open_project(project_dir)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(project.close)
    return project


def now_option(func):
    """``--now ISO``: run on a fixed clock (default: the real clock)."""
    return click.option(
        "--now",
        "now_text",
        metavar="ISO",
        default=None,
        help="Run as if it were this time (ISO 8601; UTC without an offset).",
    )(func)


def parse_now(value: str | None) -> datetime | None:
    """The ``--now`` value as naive UTC, or None when it was not given."""
    if value is None:
        return None
    out_of_range = f"--now {value!r} is out of range (use a year from 1900 to 9000)"
    try:
        now = parse_timestamp(value)
    except OverflowError:
        raise UsageError(out_of_range) from None
    except ValueError:
        raise UsageError(
            f"--now {value!r} is not an ISO 8601 time (e.g. 2026-12-01T09:00)"
        ) from None
    # Windows reach 200 years back and delays run forward: keep the clock arithmetic in range.
    if not 1900 <= now.year <= 9000:
        raise UsageError(out_of_range)
    return now


def command_clock(value: str | None = None) -> Clock:
    """The clock a command runs on: fixed at ``--now``, else the real clock (made here only)."""
    return clock_for(parse_now(value))


def is_terminal() -> bool:
    return sys.stdout.isatty()


@click.group(cls=CampaignGroup)
@click.version_option(package_name="campaign")
def cli() -> None:
    """campaign: segments, templates, drips and broadcasts for merchant email."""


def main() -> None:
    cli(prog_name="campaign")
