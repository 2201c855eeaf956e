"""Campaign values: a validated campaign file, its steps and send window, holdout, cron.

``engine.campaigns.files`` builds them from ``campaigns/NAME.yaml``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from engine.addresses import parse_address
from engine.errors import UsageError

if TYPE_CHECKING:
    from engine.segments import Rule

KINDS = ("drip", "broadcast")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_HOLDOUT = 0.5


# --- values -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One drip step: its template, the delay after the previous step, an optional rule."""

    number: int
    template: str
    delay: timedelta
    when: Rule | None = None


@dataclass(frozen=True)
class SendWindow:
    """Days (0 = Monday) and hours ``[start, end)`` in the merchant's own time zone."""

    days: frozenset[int]
    start: time
    end: time

    def is_open(self, local: datetime) -> bool:
        """Whether a local (merchant time zone) wall-clock time is inside the window."""
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def next_opening(self, at: datetime, timezone: str) -> datetime:
        """The first moment at or after ``at`` (naive UTC) when the window is open in ``timezone``.

        Returns naive UTC; ``at`` itself when the window is open then.
        """
        from datetime import UTC

        zone = ZoneInfo(timezone)
        local = at.replace(tzinfo=UTC).astimezone(zone)
        if self.is_open(local.replace(tzinfo=None)):
            return at
        day = local.date()
        for offset in range(8):
            candidate_day = day + timedelta(days=offset)
            if candidate_day.weekday() not in self.days:
                continue
            opening = datetime.combine(candidate_day, self.start, tzinfo=zone)
            closing = datetime.combine(candidate_day, self.end, tzinfo=zone)
            if offset == 0 and local >= closing:
                continue
            start = max(opening, local) if offset == 0 else opening
            return start.astimezone(UTC).replace(tzinfo=None)
        raise ValueError("a send window must have at least one day")  # validated at load


@dataclass(frozen=True)
class Campaign:
    """A validated campaign file."""

    name: str
    path: Path
    kind: Literal["drip", "broadcast"]
    topic: str
    segment: str
    sender: str  # the `from:` value as written, e.g. "User Success <success@example.id>"
    reply_to: str | None = None
    exit: Rule | None = None
    steps: tuple[Step, ...] = ()
    template: str | None = None
    send_window: SendWindow | None = None
    holdout: float = 0.0
    schedule: str | None = None
    timezone: str = "Asia/Jakarta"
    reenter_after: timedelta | None = None
    track_clicks: bool = False  # links go through the signed click redirect (engine.links)

    @property
    def sender_address(self) -> str:
        """The bare, lower-cased address of ``from:``."""
        return parse_address(self.sender)[1]

    @property
    def sender_name(self) -> str | None:
        return parse_address(self.sender)[0] or None

    def step(self, number: int | None) -> Step:
        """Drip step ``number`` (from 1; ``None`` means the first)."""
        if self.kind != "drip":
            raise UsageError(f"campaign {self.name!r} is a broadcast and has no steps")
        number = 1 if number is None else number
        if not 1 <= number <= len(self.steps):
            raise UsageError(
                f"campaign {self.name!r} has no step {number} (its steps are 1 to {len(self.steps)})"
            )
        return self.steps[number - 1]

    def template_for(self, step: int | None) -> str:
        """The template of a broadcast, or of a drip's step (``None`` = step 1)."""
        if self.kind == "broadcast":
            if step not in (None, 1):
                raise UsageError(f"campaign {self.name!r} is a broadcast and has no step {step}")
            assert self.template is not None
            return self.template
        return self.step(step).template


def in_holdout(campaign_name: str, merchant_id: int, holdout: float) -> bool:
    """Whether a merchant is in a campaign's control group: a stable hash, the same on every machine."""
    if holdout <= 0:
        return False
    digest = hashlib.sha256(f"{campaign_name}\x00{int(merchant_id)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return bucket < holdout


def check_cron(expr: str, timezone: str) -> None:
    """Check a 5-field cron expression; raise ``ValueError`` with a sentence.

    APScheduler's ``CronTrigger`` parses it, as for the worker's cron jobs. A
    number in the day-of-week field is refused: APScheduler counts 0 as Monday
    while classic cron counts 0 as Sunday, so ``1`` would silently fire a day
    late. Day names are unambiguous.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"needs 5 fields (minute hour day month day-of-week), found {len(fields)}")
    if re.search(r"\d", fields[4]):
        raise ValueError(
            "write the day-of-week field with names (mon, tue-fri, sat,sun), not numbers"
        )
    from datetime import UTC

    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(expr, timezone=timezone)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    # From a fixed date, not the clock: whether a schedule ever fires does not depend on today.
    if trigger.get_next_fire_time(None, datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise ValueError("never fires (no date matches it)")


def fire_times(expr: str, timezone: str, after: datetime, until: datetime) -> list[datetime]:
    """The fire times of a cron ``schedule`` in ``(after, until]`` (naive UTC, oldest first)."""
    from datetime import UTC

    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(expr, timezone=timezone)
    found: list[datetime] = []
    previous = None
    moment = after.replace(tzinfo=UTC) + timedelta(microseconds=1)
    end = until.replace(tzinfo=UTC)
    while len(found) < 10_000:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None or fire > end:
            break
        found.append(fire.astimezone(UTC).replace(tzinfo=None))
        previous, moment = fire, fire + timedelta(seconds=1)
    return found
