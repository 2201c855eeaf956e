"""The retry policy: an attempt's outcome and the attempts so far → the message's next state.

A pure function (no database, no clock of its own), used by the outbox when it
records an attempt; the table of which SMTP reply is which outcome is
``engine.smtp_replies``.

=================  ==========================================================
Outcome            Next state
=================  ==========================================================
``sent``           ``sent``
``deferred``       ``deferred``, due after ``retry_backoff * 2**(attempts-1)``;
                   ``failed`` once ``max_attempts`` attempts were made
``server_down``    ``deferred`` after the server's pause; no attempt charged
``failed``         ``failed``
``bounced``        ``failed`` (and the address is suppressed)
``unknown``        ``unknown`` (never resent automatically)
=================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.outcomes import Outcome
from engine.states import State


@dataclass(frozen=True)
class Decision:
    state: State
    attempts: int  # attempts charged after this one
    next_attempt_at: datetime | None
    error: str | None  # what ``last_error`` says


def backoff_delay(first: timedelta, attempt: int) -> timedelta:
    """``first`` after the first attempt, doubling after each further one."""
    return first * (2 ** max(0, attempt - 1))


def next_state(
    outcome: Outcome,
    *,
    attempts: int,
    max_attempts: int,
    retry_backoff: timedelta,
    at: datetime,
    error: str,
    server_backoff: timedelta | None = None,
) -> Decision:
    """Where a message goes after an attempt that ended with ``outcome`` at ``at``.

    ``attempts`` is the number charged before this one; ``error`` describes the reply.
    """
    charged = attempts + 1
    if outcome is Outcome.SENT:
        return Decision(State.SENT, charged, None, None)
    if outcome is Outcome.SERVER_DOWN:
        # The server, not the message, is the problem: no attempt is charged.
        return Decision(State.DEFERRED, attempts, at + (server_backoff or retry_backoff), error)
    if outcome is Outcome.DEFERRED:
        if charged >= max_attempts:
            return Decision(
                State.FAILED, charged, None, f"gave up after {charged} attempts: {error}"
            )
        return Decision(State.DEFERRED, charged, at + backoff_delay(retry_backoff, charged), error)
    if outcome in (Outcome.FAILED, Outcome.BOUNCED):
        return Decision(State.FAILED, charged, None, error)
    if outcome is Outcome.UNKNOWN:
        return Decision(State.UNKNOWN, charged, None, error)
    raise ValueError(f"unknown delivery outcome {outcome!r}")  # pragma: no cover - a bug
