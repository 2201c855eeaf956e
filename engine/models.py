"""The tables, as SQLModel classes. Timestamps are naive UTC (see ``engine.times``).

The schema itself is created and migrated by Alembic (``engine/migrations``);
these classes describe it for queries and must stay in step with the migrations
(``tests/test_db.py`` checks that they do).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# JSON on SQLite, JSONB on PostgreSQL (indexable, ->> works the same way).
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

metadata = SQLModel.metadata


class Merchant(SQLModel, table=True):
    __tablename__ = "merchants"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, unique=True))
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False, index=True))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    store_name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    store_url: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))
    plan: str | None = Field(default=None, sa_column=sa.Column(sa.String(50)))
    category: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    city: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    locale: str = Field(
        default="id", sa_column=sa.Column(sa.String(10), nullable=False, server_default="id")
    )
    timezone: str = Field(
        default="Asia/Jakarta",
        sa_column=sa.Column(sa.String(64), nullable=False, server_default="Asia/Jakarta"),
    )
    status: str = Field(
        default="active",
        sa_column=sa.Column(sa.String(30), nullable=False, server_default="active"),
    )
    created_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))
    last_login_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))
    attributes: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "order_ref", name="uq_orders_merchant_ref"),
        sa.Index("ix_orders_merchant_status_placed", "merchant_id", "status", "placed_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("merchants.id", ondelete="CASCADE"), nullable=False
        )
    )
    order_ref: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    placed_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))


class Activity(SQLModel, table=True):
    __tablename__ = "activities"
    __table_args__ = (
        # Also the index the segment queries use (merchant, kind, time), and what
        # makes a re-import of the same activity file a no-op.
        sa.UniqueConstraint("merchant_id", "kind", "occurred_at", name="uq_activities_event"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("merchants.id", ondelete="CASCADE"), nullable=False
        )
    )
    kind: str = Field(sa_column=sa.Column(sa.String(50), nullable=False))
    occurred_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))


merchants = Merchant.__table__
orders = Order.__table__
activities = Activity.__table__

MERCHANT_COLUMNS = tuple(c.name for c in merchants.columns)


# --- delivery: the outbox, its attempts, the suppression list (issue 5) --------


class Message(SQLModel, table=True):
    """One email in the outbox: its idempotency key, its RFC 5322 bytes and its state."""

    __tablename__ = "messages"
    __table_args__ = (
        # The claim query: due messages by state and time. Partial: a message leaves it
        # when claimed (its next_attempt_at is cleared) and comes back only to wait
        # again, so marking it committing and recording its result write no index.
        sa.Index(
            "ix_messages_due",
            "state",
            "next_attempt_at",
            sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
            postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
        ),
        # Recovery: the messages in flight, by lease expiry (a few rows at any time).
        sa.Index(
            "ix_messages_leased",
            "state",
            "lease_expires_at",
            sqlite_where=sa.text("lease_expires_at IS NOT NULL"),
            postgresql_where=sa.text("lease_expires_at IS NOT NULL"),
        ),
        # Reports by campaign and step, and the "already sent in this run" check.
        sa.Index("ix_messages_campaign_step", "campaign", "step", "run"),
        # The frequency cap: a merchant's recent messages.
        sa.Index("ix_messages_merchant_created", "merchant_id", "created_at"),
        # Returned mail is matched to its message by Message-ID (engine.bounces).
        sa.Index("ix_messages_message_id", "message_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=sa.Column(sa.String(300), nullable=False, unique=True))
    campaign: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    step: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    run: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    topic: str = Field(sa_column=sa.Column(sa.String(50), nullable=False))
    merchant_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("merchants.id", ondelete="CASCADE"), nullable=False
        )
    )
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False))
    sender: str = Field(sa_column=sa.Column(sa.String(320), nullable=False))
    subject: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    state: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    attempts: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    next_attempt_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))
    lease_token: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    lease_expires_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))
    worker: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    message_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(300)))
    queue_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))


class MessageBody(SQLModel, table=True):
    """The exact bytes handed to SMTP: a retry sends the same message (same Message-ID).

    A table of its own so that the state changes of a message (several per
    send) do not rewrite its ~10 KB body each time.
    """

    __tablename__ = "message_bodies"

    message_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
        )
    )
    data: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    # Checked when the message was rendered: ``data`` is already SMTP's DATA form
    # (CRLF only, no line starting with a dot), so sending it needs no scan.
    smtp_ready: bool = Field(
        default=False,
        sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()),
    )


class Attempt(SQLModel, table=True):
    """One delivery attempt: when, by whom, and what the server said."""

    __tablename__ = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))
    worker: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    smtp_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    enhanced_status: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))
    reply: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    outcome: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))


class Suppression(SQLModel, table=True):
    """An address that must not be emailed, for one topic or for all (``*``)."""

    __tablename__ = "suppressions"
    __table_args__ = (sa.UniqueConstraint("email", "topic", name="uq_suppressions_email_topic"),)

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False))
    topic: str = Field(sa_column=sa.Column(sa.String(50), nullable=False, server_default="*"))
    reason: str = Field(sa_column=sa.Column(sa.String(50), nullable=False))
    source: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))


class CampaignRun(SQLModel, table=True):
    """A broadcast run (``manual``, a ``--run`` label or a schedule's fire time)."""

    __tablename__ = "campaign_runs"
    __table_args__ = (sa.UniqueConstraint("campaign", "run", name="uq_campaign_runs"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    run: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    started_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))


messages = Message.__table__
message_bodies = MessageBody.__table__
attempts = Attempt.__table__
suppressions = Suppression.__table__
campaign_runs = CampaignRun.__table__


# --- after sending: clicks and bounces (issue 12) -------------------------------


class Click(SQLModel, table=True):
    """One follow of a tracked link (``/c/TOKEN``): which message, which link, when."""

    __tablename__ = "clicks"

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    url: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    clicked_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False, index=True))


class Bounce(SQLModel, table=True):
    """A returned mail matched to its message: ``hard`` (5.x.x) or ``soft`` (4.x.x)."""

    __tablename__ = "bounces"
    __table_args__ = (
        # One returned mail (its fingerprint) counts once per address: re-imports are no-ops.
        sa.UniqueConstraint("fingerprint", "email", name="uq_bounces_fingerprint_email"),
        # The soft-bounce limit: an address's soft bounces in the last 30 days.
        sa.Index("ix_bounces_email_kind_at", "email", "kind", "bounced_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False))
    kind: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    status: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))
    diagnostic: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    fingerprint: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    bounced_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))
    imported_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))


clicks = Click.__table__
bounces = Bounce.__table__
# --- drips and schedules (issue 10) ----------------------------------------------


class DripEnrolment(SQLModel, table=True):
    """One merchant's entry into a drip: its progress, and how it ended (exit or finish)."""

    __tablename__ = "drip_enrolments"
    __table_args__ = (
        sa.UniqueConstraint("campaign", "merchant_id", "cycle", name="uq_drip_enrolments"),
        sa.Index("ix_drip_enrolments_campaign_step", "campaign", "step"),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    merchant_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("merchants.id", ondelete="CASCADE"), nullable=False
        )
    )
    cycle: int = Field(
        default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1")
    )
    entered_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))
    step: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    step_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))
    skipped: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    exited_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))
    exit_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(50)))
    exit_step: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    finished_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime()))


class ScheduleFire(SQLModel, table=True):
    """A scheduled broadcast's fire time, decided once: ``sent`` or ``skipped`` (too late)."""

    __tablename__ = "schedule_fires"
    __table_args__ = (sa.UniqueConstraint("campaign", "fire_at", name="uq_schedule_fires"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    fire_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))
    outcome: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    decided_at: datetime = Field(sa_column=sa.Column(sa.DateTime(), nullable=False))


drip_enrolments = DripEnrolment.__table__
schedule_fires = ScheduleFire.__table__
