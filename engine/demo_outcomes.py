"""The demo's outcomes: two campaigns "sent" ten days ago, the orders that followed, a report.

Nothing leaves the machine: a stand-in transport accepts each message as a server
would (``250``), so the outbox, the holdout and the report are the real ones.
The win-back drip (10% holdout) is sent through the real drip tick and the
partnership broadcast (no holdout) through the real send, on a fixed clock ten
days back; then merchants written to place a first paid order in the next days
more often than the control group, so that the report shows a lift for the
drip and none for the broadcast.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from engine.clock import FixedClock
from engine.db import write_transaction
from engine.models import merchants, messages, orders
from engine.outcomes import DeliveryResult, Outcome, SmtpReply
from engine.times import parse_rate

DRIP = "winback-dormant"
BROADCAST = "partner-logistics"
DAYS_AGO = 10
# Chance of a first paid order within a week: written to, held out, and the broadcast's.
CONVERTS = {"sent": 0.16, "holdout": 0.08, BROADCAST: 0.10}
REPORT_FILE = "report.html"


class StandInTransport:
    """Accepts every message without sending it anywhere (the demo's sends are simulated)."""

    def __init__(self) -> None:
        self.accepted = 0

    def send(self, sender: str, recipient: str, data: bytes, *, on_commit=None) -> DeliveryResult:
        if on_commit is not None:
            on_commit()
        self.accepted += 1
        reply = SmtpReply(250, "2.0.0", "demo: kept on this machine", f"DEMO{self.accepted:06d}")
        return DeliveryResult(Outcome.SENT, reply, body_sent=True, stage="body")

    def close(self) -> None:
        pass


@dataclass
class DemoOutcomes:
    sent_at: datetime
    sent: dict[str, int]
    orders: int
    report: Path | None


def send_moment(now: datetime) -> datetime:
    """A weekday ``DAYS_AGO`` days back at 03:00 UTC: 10:00 WIB, 11:00 WITA, 12:00 WIT."""
    moment = (now - timedelta(days=DAYS_AGO)).replace(hour=3, minute=0, second=0, microsecond=0)
    while moment.weekday() >= 5:
        moment -= timedelta(days=1)
    return moment


def simulate_outcomes(project, *, now: datetime, seed: int) -> DemoOutcomes | None:
    """Send the two example campaigns at ``send_moment(now)``, add the orders after, write the report."""
    from engine.campaigns import campaign_files
    from engine.drips import tick
    from engine.drips.copy import with_secret
    from engine.reports import write_html_report
    from engine.sending import send_campaign

    names = {p.stem for p in campaign_files(project.settings.campaigns_dir)}
    if not {DRIP, BROADCAST} <= names:
        return None
    at = send_moment(now)
    settings = with_secret(project.settings)
    fast = dataclasses.replace(settings.delivery, rate=parse_rate("10000/s"))
    demo = dataclasses.replace(project, settings=dataclasses.replace(settings, delivery=fast))
    clock = FixedClock(at)
    tick(demo, clock=clock, campaign=DRIP, transport_factory=StandInTransport)
    send_campaign(demo, BROADCAST, clock=clock, transport_factory=StandInTransport)
    written = _orders_after(project.engine, at, seed)
    with project.engine.connect() as conn:
        sent = dict(
            conn.execute(
                sa.select(messages.c.campaign, sa.func.count())
                .where(messages.c.state == "sent")
                .group_by(messages.c.campaign)
            ).all()
        )
    path = project.root / REPORT_FILE
    write_html_report(project, path, locale=project.settings.project.default_locale)
    return DemoOutcomes(at, sent, written, path)


def _orders_after(engine, at: datetime, seed: int) -> int:
    """First paid orders in the week after the sends, likelier for merchants written to."""
    rng = random.Random(seed * 7919 + 11)
    with engine.connect() as conn:
        reached = conn.execute(
            sa.select(messages.c.merchant_id, messages.c.campaign, messages.c.state)
            .join(merchants, merchants.c.id == messages.c.merchant_id)
            .where(messages.c.campaign.in_([DRIP, BROADCAST]))
            .where(messages.c.state.in_(["sent", "holdout"]))
            .order_by(messages.c.id)
        ).all()
    rows = []
    for merchant_id, campaign, state in reached:
        chance = CONVERTS[BROADCAST] if campaign == BROADCAST else CONVERTS[state]
        if rng.random() >= chance:
            continue
        placed = at + timedelta(hours=rng.uniform(6, 6.5 * 24))
        rows.append(
            {
                "merchant_id": merchant_id,
                "order_ref": f"INV/AFTER/{campaign}/{merchant_id:06d}",
                "amount": rng.randrange(50, 900) * 1000,
                "status": "paid",
                "placed_at": placed.replace(microsecond=0),
            }
        )
    if rows:
        with write_transaction(engine) as conn:
            conn.execute(orders.insert(), rows)
    return len(rows)
