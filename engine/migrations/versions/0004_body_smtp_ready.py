"""message_bodies.smtp_ready: the body was checked for SMTP's DATA form when rendered

Scanning a 10 KB body for bare line ends and leading dots costs the sending
process about 40 microseconds per message; the rendering process now does it
once and records the answer. Existing bodies are not marked: they are checked
when sent, as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message_bodies") as batch:
        batch.add_column(
            sa.Column("smtp_ready", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("message_bodies") as batch:
        batch.drop_column("smtp_ready")
