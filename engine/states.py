"""The states a message goes through in the outbox (SPEC 9)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    COMMITTING = "committing"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    UNKNOWN = "unknown"
    # Not a message to send: a holdout member, recorded once per run for the lift report.
    HOLDOUT = "holdout"


PENDING = (State.QUEUED, State.DEFERRED)
IN_FLIGHT = (State.SENDING, State.COMMITTING)
FINAL = (State.SENT, State.FAILED, State.SUPPRESSED, State.UNKNOWN, State.HOLDOUT)
# States that never count towards the frequency cap: nothing reached the merchant.
NOT_DELIVERED = (State.FAILED, State.SUPPRESSED, State.HOLDOUT)
