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
        default="active", sa_column=sa.Column(sa.String(30), nullable=False, server_default="active")
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
