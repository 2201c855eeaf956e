"""``campaign bounces import``: returned mail matched to its message, recorded and suppressed.

Each returned mail is matched to its outbox message by a signed VERP return
path or by a Message-ID it quotes. A hard bounce (5.x.x) records a ``bounces``
row and suppresses the address for every topic (``hard_bounce``); a soft one
(4.x.x) records a row, and the address is suppressed (``soft_bounce``) once it
has ``[limits] soft_bounce_limit`` of them within 30 days. Rows are unique per
(returned mail, address), so importing the same mailbox twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.bounces.mailboxes import raw_messages
from engine.bounces.parse import AUTO_REPLY, BOUNCE, DELAYED, Returned, classify
from engine.config import Settings
from engine.db import dialect_insert, write_transaction
from engine.models import bounces, messages
from engine.return_path import message_from_verp
from engine.suppressions import ALL_TOPICS, suppress_in

SOFT_WINDOW = timedelta(days=30)


@dataclass
class BounceReport:
    """What an import did, by kind of mail."""

    read: int = 0
    hard: int = 0
    soft: int = 0
    delayed: int = 0
    auto_replies: int = 0
    unmatched: int = 0
    not_bounces: int = 0
    already_imported: int = 0
    suppressed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "read": self.read, "hard": self.hard, "soft": self.soft, "delayed": self.delayed,
            "auto_replies": self.auto_replies, "unmatched": self.unmatched,
            "not_bounces": self.not_bounces, "already_imported": self.already_imported,
            "suppressed": len(self.suppressed),
        }  # fmt: skip


def _match(conn: Connection, settings: Settings, returned: Returned):
    """The outbox row (id, email) the mail is about, or None."""
    row_id = message_from_verp(settings, returned.recipients)
    query = sa.select(messages.c.id, messages.c.email)
    if row_id is not None:
        row = conn.execute(query.where(messages.c.id == row_id)).first()
        if row is not None:
            return row
    if returned.message_ids:
        return conn.execute(
            query.where(messages.c.message_id.in_(returned.message_ids)).order_by(messages.c.id)
        ).first()
    return None


def _record(
    conn: Connection, settings: Settings, returned: Returned, report: BounceReport, now: datetime
) -> None:
    failure = returned.worst()
    found = _match(conn, settings, returned)
    if found is None or failure is None:
        report.unmatched += 1
        return
    email = found.email.strip().lower()  # the address we sent to (the bounce may name a forward)
    at = min(returned.date or now, now)
    inserted = conn.execute(
        dialect_insert(conn)(bounces)
        .values(
            message_id=found.id,
            email=email,
            kind=failure.kind,
            status=failure.status,
            diagnostic=(failure.diagnostic or "")[:2000] or None,
            fingerprint=returned.fingerprint,
            bounced_at=at,
            imported_at=now,
        )
        .on_conflict_do_nothing(index_elements=["fingerprint", "email"])
        .returning(bounces.c.id)
    ).first()
    if inserted is None:
        report.already_imported += 1
        return
    if failure.kind == "hard":
        report.hard += 1
        reason, source = "hard_bounce", f"bounce {failure.status or '5.0.0'}"
    else:
        report.soft += 1
        recent = conn.execute(
            sa.select(sa.func.count()).where(
                bounces.c.email == email,
                bounces.c.kind == "soft",
                bounces.c.bounced_at > at - SOFT_WINDOW,
                bounces.c.bounced_at <= at,
            )
        ).scalar()
        if recent < settings.limits.soft_bounce_limit:
            return
        reason, source = "soft_bounce", f"{recent} soft bounces in 30 days"
    if suppress_in(conn, email, topic=ALL_TOPICS, reason=reason, source=source, now=now):
        report.suppressed.append(email)


def import_bounces(
    engine: Engine,
    settings: Settings,
    path: Path | str,
    *,
    now: datetime,
    on_progress: Callable[[int], None] | None = None,
) -> BounceReport:
    """Read the mbox file or Maildir at ``path`` and record what its returned mail says."""
    report = BounceReport()
    for data in raw_messages(Path(path)):
        report.read += 1
        returned = classify(data)
        if returned.kind == AUTO_REPLY:
            report.auto_replies += 1
        elif returned.kind == DELAYED:
            report.delayed += 1  # still being retried: not a bounce
        elif returned.kind != BOUNCE:
            report.not_bounces += 1
        else:
            with write_transaction(engine) as conn:
                _record(conn, settings, returned, report, now)
        if on_progress:
            on_progress(report.read)
    return report
