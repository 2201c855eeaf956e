"""outbox: partial indexes for due and in-flight messages

The claim index held every message, so each state change of a message being
sent (claimed, committing, sent) moved its entry and dirtied index pages in
that transaction. Now only waiting messages (``next_attempt_at`` set) are in
``ix_messages_due`` and only leased ones in ``ix_messages_leased``: the
committing mark and the result of a send touch one small, hot index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_WAITING = sa.text("next_attempt_at IS NOT NULL")
_LEASED = sa.text("lease_expires_at IS NOT NULL")


def upgrade() -> None:
    # Messages being sent keep no next_attempt_at (they leave the due index).
    op.execute(
        "UPDATE messages SET next_attempt_at = NULL WHERE state IN ('sending', 'committing')"
    )
    op.drop_index("ix_messages_state_next", "messages")
    op.create_index(
        "ix_messages_due",
        "messages",
        ["state", "next_attempt_at"],
        sqlite_where=_WAITING,
        postgresql_where=_WAITING,
    )
    op.create_index(
        "ix_messages_leased",
        "messages",
        ["state", "lease_expires_at"],
        sqlite_where=_LEASED,
        postgresql_where=_LEASED,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_leased", "messages")
    op.drop_index("ix_messages_due", "messages")
    op.create_index("ix_messages_state_next", "messages", ["state", "next_attempt_at"])
