"""Idempotency keys: one per message, unique in the outbox, the root of Message-ID."""

from __future__ import annotations


def step_part(step: int | None = None, run: str | None = None) -> str:
    """``step-2`` for a drip step, ``run-LABEL`` for a broadcast run."""
    if (step is None) == (run is None):
        raise ValueError("a message key names either a drip step or a broadcast run")
    return f"step-{step}" if step is not None else f"run-{run}"


def message_key(
    campaign: str, merchant_id: int, *, step: int | None = None, run: str | None = None
) -> str:
    """``winback/step-2/m-42`` or ``promo-1212/run-2026-12-12T02:00/m-42``."""
    return f"{campaign}/{step_part(step, run)}/m-{merchant_id}"
