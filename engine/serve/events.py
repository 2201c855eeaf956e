"""The events API body: ``{"merchants": [...], "orders": [...], "activities": [...]}``.

Validated and written by ``engine.import_records`` (the checks of ``campaign
import``, in one transaction): this module only turns its report into the
HTTP answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from engine.errors import DataImportError
from engine.import_records import import_records


@dataclass(frozen=True)
class EventsOutcome:
    status: int  # 200, or 422 when every row (or the body's shape) was refused
    body: dict[str, Any]


def import_events(engine: Engine, data: Any, *, now: datetime) -> EventsOutcome:
    """Upsert one request's rows; the answer lists accepted counts and rejected rows by index."""
    try:
        report = import_records(engine, data, now=now)
    except DataImportError as exc:
        return EventsOutcome(422, {"error": str(exc)})
    rejected = [
        {"kind": kind, "index": r.index, "reason": r.reason}
        for kind, result in report.kinds.items()
        for r in result.rejected
    ]
    body = {
        "accepted": report.accepted,
        "rejected": rejected,
        "kinds": report.as_dict(),
    }
    return EventsOutcome(422 if report.all_rejected else 200, body)
