"""Idempotency keys: one per message, unique in the outbox, the root of Message-ID."""

from __future__ import annotations


def step_part(step: int | None = None, run: str | None = None, cycle: int = 1) -> str:
    """``step-2`` for a drip step (``step-2.c3`` in a merchant's third entry), ``run-LABEL``."""
    if (step is None) == (run is None):
        raise ValueError("a message key names either a drip step or a broadcast run")
    if run is not None:
        return f"run-{run}"
    return f"step-{step}" if cycle <= 1 else f"step-{step}.c{int(cycle)}"


def message_key(
    campaign: str,
    merchant_id: int,
    *,
    step: int | None = None,
    run: str | None = None,
    cycle: int = 1,
) -> str:
    """``winback/step-2/m-42`` or ``promo-1212/run-2026-12-12T02:00/m-42``.

    ``cycle`` is a drip entry after the first (``reenter_after``): its messages
    are new ones, ``winback/step-2.c2/m-42``.
    """
    return f"{campaign}/{step_part(step, run, cycle)}/m-{merchant_id}"
