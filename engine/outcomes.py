"""The outcome of one delivery attempt: the vocabulary shared by the transport, the retry
policy and the outbox (``engine.retry`` turns an outcome into the message's next state)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Where an attempt can end, in the order of an SMTP conversation.
STAGES = ("connect", "tls", "auth", "mail", "rcpt", "data", "body")


class Outcome(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    BOUNCED = "bounced"  # failed, and the recipient's address goes on the suppression list
    UNKNOWN = "unknown"  # the body went out but no reply came: the server may have the message
    SERVER_DOWN = "server_down"  # back off the whole server; the message is not charged an attempt


@dataclass(frozen=True)
class SmtpReply:
    """A server reply (code None when there was none: a drop, a timeout, a refused connection)."""

    code: int | None
    enhanced: str | None
    text: str
    queue_id: str | None = None

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    reply: SmtpReply
    body_sent: bool
    stage: str = "body"  # where the attempt ended: one of STAGES
