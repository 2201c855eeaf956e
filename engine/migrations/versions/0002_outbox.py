"""outbox: messages, message_bodies, attempts, suppressions, campaign_runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(300), nullable=False, unique=True),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("run", sa.String(100)),
        sa.Column("topic", sa.String(50), nullable=False),
        sa.Column(
            "merchant_id",
            sa.Integer,
            sa.ForeignKey("merchants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime()),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("lease_expires_at", sa.DateTime()),
        sa.Column("worker", sa.String(200)),
        sa.Column("message_id", sa.String(300)),
        sa.Column("queue_id", sa.String(200)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime()),
    )
    op.create_index("ix_messages_state_next", "messages", ["state", "next_attempt_at"])
    op.create_index("ix_messages_campaign_step", "messages", ["campaign", "step", "run"])
    op.create_index("ix_messages_merchant_created", "messages", ["merchant_id", "created_at"])
    op.create_table(
        "message_bodies",
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("smtp_code", sa.Integer),
        sa.Column("enhanced_status", sa.String(20)),
        sa.Column("reply", sa.Text),
        sa.Column("outcome", sa.String(20), nullable=False),
    )
    op.create_index("ix_attempts_message_id", "attempts", ["message_id"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("topic", sa.String(50), nullable=False, server_default="*"),
        sa.Column("reason", sa.String(50), nullable=False),
        sa.Column("source", sa.String(200)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("email", "topic", name="uq_suppressions_email_topic"),
    )
    op.create_table(
        "campaign_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("run", sa.String(100), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("campaign", "run", name="uq_campaign_runs"),
    )


def downgrade() -> None:
    op.drop_table("campaign_runs")
    op.drop_table("suppressions")
    op.drop_index("ix_attempts_message_id", "attempts")
    op.drop_table("attempts")
    op.drop_table("message_bodies")
    op.drop_index("ix_messages_merchant_created", "messages")
    op.drop_index("ix_messages_campaign_step", "messages")
    op.drop_index("ix_messages_state_next", "messages")
    op.drop_table("messages")
