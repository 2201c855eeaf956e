"""drips: drip_enrolments (who is in which drip, at which step) and schedule_fires

A merchant's journey through a drip is one row per entry (``cycle`` counts
re-entries): when it entered, how many steps are done and when the last one
went, and whether it exited (and why, before which step) or finished. The
unique key (campaign, merchant, cycle) is what makes two ticks at once enrol
a merchant once. ``schedule_fires`` records each fire time of a scheduled
broadcast once, sent or skipped (too late for ``[scheduler] broadcast_grace``).

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drip_enrolments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column(
            "merchant_id",
            sa.Integer,
            sa.ForeignKey("merchants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("cycle", sa.Integer, nullable=False, server_default="1"),
        sa.Column("entered_at", sa.DateTime(), nullable=False),
        sa.Column("step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("step_at", sa.DateTime()),
        sa.Column("skipped", sa.String(200)),
        sa.Column("exited_at", sa.DateTime()),
        sa.Column("exit_reason", sa.String(50)),
        sa.Column("exit_step", sa.Integer),
        sa.Column("finished_at", sa.DateTime()),
        sa.UniqueConstraint("campaign", "merchant_id", "cycle", name="uq_drip_enrolments"),
    )
    op.create_index("ix_drip_enrolments_campaign_step", "drip_enrolments", ["campaign", "step"])
    op.create_table(
        "schedule_fires",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("fire_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("campaign", "fire_at", name="uq_schedule_fires"),
    )


def downgrade() -> None:
    op.drop_table("schedule_fires")
    op.drop_index("ix_drip_enrolments_campaign_step", table_name="drip_enrolments")
    op.drop_table("drip_enrolments")
