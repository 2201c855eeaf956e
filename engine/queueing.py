"""The queueing stage: rendered messages (and recorded members) become outbox rows.

It runs in whichever process rendered the batch (this one, or a render child):
the bodies are the bulk of a batch and need not cross a pipe twice. It is the
only code that writes message rows for a send; the sender threads then move
them through their states (``engine.outbox_session``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.audience import Batch
from engine.messages import RenderedMessage, RenderFailure
from engine.outbox import NewMessage, State, enqueue
from engine.preparation import PreparedCampaign
from engine.smtp_wire import is_smtp_ready


@dataclass
class Queued:
    """What the report needs of one batch once it is rendered and queued (no bodies)."""

    enqueued: int = 0  # new outbox rows
    rendered: list[tuple[int, str, str]] = field(default_factory=list)  # (id, email, subject)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (id, email, reason)
    window: list[datetime] = field(default_factory=list)  # openings the rendered ones wait for


def eml_name(key: str) -> str:
    return key.replace("/", "_") + ".eml"


def queue_batch(
    engine: Engine | None,
    plan: PreparedCampaign,
    batch: Batch,
    results: list[RenderedMessage | RenderFailure],
    *,
    now: datetime,
    out_dir: Path | None = None,
) -> Queued:
    """Write ``--out`` files and (``engine`` given: a real send) the batch's outbox rows."""
    queued = Queued()
    rows: list[NewMessage] = list(batch.recorded)
    for result in results:
        if isinstance(result, RenderFailure):
            queued.failures.append((result.merchant_id, result.email, result.reason))
        else:
            queued.rendered.append((result.merchant_id, result.email, result.subject))
            opening = batch.due.get(result.merchant_id)
            if opening is not None:
                queued.window.append(opening)
            if out_dir is not None:
                (out_dir / eml_name(result.key)).write_bytes(result.data)
        rows.append(_outbox_row(plan, result, batch.due.get(result.merchant_id)))
    if engine is None:
        return queued
    return Queued(enqueue(engine, rows, now=now), queued.rendered, queued.failures, queued.window)


def _outbox_row(
    plan: PreparedCampaign, result: RenderedMessage | RenderFailure, due_at: datetime | None
) -> NewMessage:
    campaign = plan.campaign
    common = dict(
        key=result.key,
        campaign=campaign.name,
        topic=campaign.topic,
        merchant_id=result.merchant_id,
        email=result.email,
        sender=plan.sender,
        step=plan.step,
        run=plan.run,
    )
    if isinstance(result, RenderedMessage):
        return NewMessage(
            subject=result.subject,
            message_id=result.message_id,
            data=result.data,
            smtp_ready=is_smtp_ready(result.data),  # here, not in the sending threads
            due_at=due_at,
            **common,
        )
    # A render error fails that one message, with its reason, and the rest go on.
    return NewMessage(
        subject=None,
        message_id=None,
        data=None,
        state=State.FAILED,
        last_error=f"render error: {result.reason}",
        **common,
    )
