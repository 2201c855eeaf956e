"""clicks and bounces: what happened to a message after it was sent

``clicks`` records each follow of a tracked link (``/c/TOKEN``); ``bounces``
each returned mail matched to its message (hard or soft), unique per (returned
mail, address) so that importing the same mailbox twice changes nothing.
``messages.message_id`` gets an index: bounces are matched by it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_message_id", "messages", ["message_id"])
    op.create_table(
        "clicks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("clicked_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_clicks_message_id", "clicks", ["message_id"])
    op.create_index("ix_clicks_clicked_at", "clicks", ["clicked_at"])
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("status", sa.String(20)),
        sa.Column("diagnostic", sa.Text),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("bounced_at", sa.DateTime(), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("fingerprint", "email", name="uq_bounces_fingerprint_email"),
    )
    op.create_index("ix_bounces_message_id", "bounces", ["message_id"])
    op.create_index("ix_bounces_email_kind_at", "bounces", ["email", "kind", "bounced_at"])


def downgrade() -> None:
    op.drop_table("bounces")
    op.drop_table("clicks")
    op.drop_index("ix_messages_message_id", table_name="messages")
