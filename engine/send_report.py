"""What a send, a dry run or a retry did: ``SendReport`` and its SPEC 8 JSON form."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.states import State

MANUAL_RUN = "manual"
# Every audience member not in ``would_send`` is either ``pending`` (its message
# waits in the outbox from an earlier send of the run) or skipped for one of these:
# audience == would_send + pending + sum(skipped), always.
SKIP_REASONS = (
    "suppressed",
    "frequency_cap",
    "holdout",
    "already_sent",  # sent, unknown or in flight in this run
    "failed_before",  # this run's message to them failed (e.g. 554 or a render error)
    "invalid_address",
    "render_error",
    "exited",  # drip: the campaign's exit rule matches
    "step_condition",  # drip: the step's ``when`` rule does not match
    "limit",  # beyond --limit
)


@dataclass
class SendReport:
    """What a send (or a dry run) did; ``to_json`` is the SPEC 8 form."""

    campaign: str
    kind: str
    dry_run: bool
    step: int | None = None
    run: str | None = None
    audience: int = 0
    would_send: int = 0  # rendered and (on a real send) in the outbox for this run
    enqueued: int = 0  # new outbox rows written by this send
    pending: int = 0  # audience members whose message waits from an earlier send (resumed)
    skipped: Counter = field(default_factory=Counter)
    messages: list[dict[str, Any]] = field(default_factory=list)
    render_errors: list[dict[str, Any]] = field(default_factory=list)
    # Messages queued to wait for the send window (in the merchant's time zone), and when
    # the first and the last of them may go.
    window_waiting: int = 0
    window_opens: datetime | None = None
    window_last: datetime | None = None
    states: dict[str, int] = field(default_factory=dict)  # this run's/step's outbox, after delivery
    server_down: str | None = None
    waiting: int = 0  # this run's/step's messages still queued or deferred after delivery
    next_due: datetime | None = None  # when the first of them is due
    held: int = 0  # messages of this run/step claimed under another (live) lease
    held_until: datetime | None = None
    interrupted: str | None = None  # the signal that stopped the send (SIGINT, SIGTERM)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Something needs attention: failures, render errors, or the server refused to talk."""
        return bool(
            self.states.get(str(State.FAILED))
            or self.states.get(str(State.UNKNOWN))
            or self.skipped.get("render_error")
            or self.server_down
        )

    def note_window(self, opening: datetime) -> None:
        self.window_waiting += 1
        if self.window_opens is None or opening < self.window_opens:
            self.window_opens = opening
        if self.window_last is None or opening > self.window_last:
            self.window_last = opening

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "campaign": self.campaign,
            "audience": self.audience,
            "would_send": self.would_send,
            "skipped": {reason: self.skipped.get(reason, 0) for reason in SKIP_REASONS},
            "messages": self.messages,
        }
        data.update(
            kind=self.kind,
            step=self.step,
            run=self.run,
            dry_run=self.dry_run,
            pending=self.pending,
            window_waiting=self.window_waiting,
            window_opens=iso(self.window_opens),
            window_last=iso(self.window_last),
        )
        if self.render_errors:
            data["render_errors"] = self.render_errors
        if not self.dry_run:
            data.update(
                enqueued=self.enqueued,
                states=self.states,
                server_down=self.server_down,
                waiting=self.waiting,
                next_due=iso(self.next_due),
                held=self.held,
                held_until=iso(self.held_until),
                interrupted=self.interrupted,
            )
        if self.notes:
            data["notes"] = self.notes
        return data


def iso(moment: datetime | None) -> str | None:
    """A naive UTC time as ISO 8601 with ``Z``, to the second (None stays None)."""
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "Z"
