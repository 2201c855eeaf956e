"""merchants, orders and activities

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "merchants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("external_id", sa.String(100), nullable=False, unique=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("store_name", sa.String(200)),
        sa.Column("store_url", sa.String(500)),
        sa.Column("plan", sa.String(50)),
        sa.Column("category", sa.String(100)),
        sa.Column("city", sa.String(100)),
        sa.Column("locale", sa.String(10), nullable=False, server_default="id"),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="Asia/Jakarta"),
        sa.Column("status", sa.String(30), nullable=False, server_default="active"),
        sa.Column("created_at", sa.DateTime()),
        sa.Column("last_login_at", sa.DateTime()),
        sa.Column("attributes", JSONType, nullable=False),
    )
    op.create_index("ix_merchants_email", "merchants", ["email"])
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "merchant_id",
            sa.Integer,
            sa.ForeignKey("merchants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("order_ref", sa.String(100), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("placed_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("merchant_id", "order_ref", name="uq_orders_merchant_ref"),
    )
    op.create_index(
        "ix_orders_merchant_status_placed", "orders", ["merchant_id", "status", "placed_at"]
    )
    op.create_table(
        "activities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "merchant_id",
            sa.Integer,
            sa.ForeignKey("merchants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("merchant_id", "kind", "occurred_at", name="uq_activities_event"),
    )


def downgrade() -> None:
    op.drop_table("activities")
    op.drop_table("orders")
    op.drop_index("ix_merchants_email", "merchants")
    op.drop_table("merchants")
