"""The events API body: ``{"merchants": [...], "orders": [...], "activities": [...]}``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine


@dataclass
class EventsOutcome:
    status: int
    accepted: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def answer(self) -> dict[str, Any]:
        if self.error:
            return {"error": self.error}
        return {"accepted": self.accepted, "rejected": self.rejected}


def import_events(engine: Engine, data: Any) -> EventsOutcome:
    """Validate and upsert the rows of one events request (placeholder until the importer lands)."""
    return EventsOutcome(503, error="not yet")
