"""The ``stats`` a template sees, for a whole batch of merchants in ONE query.

Windows mean what they mean in segments (SPEC 4): the last 30 days cover
``[now - 30d, now]``, the 30 days before cover ``[now - 60d, now - 30d)``; only
``paid`` orders count; no orders means 0, and ``revenue_change_30d`` is none
when the earlier window's revenue is 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.models import merchants, orders

WINDOW = timedelta(days=30)
CHUNK = 1000  # ids per IN list; a batch is normally the delivery batch size (100)


def empty_stats() -> dict[str, Any]:
    return {
        "revenue_30d": 0,
        "revenue_prev_30d": 0,
        "revenue_change_30d": None,
        "orders_30d": 0,
        "orders_prev_30d": 0,
        "last_order_at": None,
    }


def _query(ids: list[int], now: datetime) -> sa.Select:
    start, middle = now - 2 * WINDOW, now - WINDOW
    current = orders.c.placed_at >= middle
    earlier = orders.c.placed_at < middle
    zero = sa.literal(0, sa.BigInteger)
    return (
        sa.select(
            orders.c.merchant_id,
            sa.func.coalesce(sa.func.sum(sa.case((current, orders.c.amount), else_=zero)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((earlier, orders.c.amount), else_=zero)), 0),
            sa.func.count(sa.case((current, 1))),
            sa.func.count(sa.case((earlier, 1))),
        )
        .where(
            orders.c.merchant_id.in_(ids),
            orders.c.status == "paid",
            orders.c.placed_at >= start,
            orders.c.placed_at <= now,
        )
        .group_by(orders.c.merchant_id)
    )


def batch_stats(
    conn: Connection, merchant_ids: Iterable[int], *, now: datetime
) -> dict[int, dict[str, Any]]:
    """``{merchant id: stats}`` for every id (merchants without orders get zeros)."""
    ids = sorted({int(i) for i in merchant_ids})
    result = {i: empty_stats() for i in ids}
    for offset in range(0, len(ids), CHUNK):
        chunk = ids[offset : offset + CHUNK]
        # One statement: each merchant's last paid order (a correlated MAX that both
        # databases answer from the (merchant_id, status, placed_at) index) joined
        # with the 60-day aggregate.
        last = (
            sa.select(sa.func.max(orders.c.placed_at))
            .where(
                orders.c.merchant_id == merchants.c.id,
                orders.c.status == "paid",
                orders.c.placed_at <= now,
            )
            .correlate(merchants)
            .scalar_subquery()
        )
        windows = _query(chunk, now).subquery("w")
        columns = list(windows.c)
        statement = (
            sa.select(merchants.c.id, last, *columns[1:])
            .select_from(merchants.outerjoin(windows, columns[0] == merchants.c.id))
            .where(merchants.c.id.in_(chunk))
        )
        for merchant_id, last_at, rev, rev_prev, count, count_prev in conn.execute(statement):
            stats = result[merchant_id]
            rev, rev_prev = int(rev or 0), int(rev_prev or 0)
            stats.update(
                revenue_30d=rev,
                revenue_prev_30d=rev_prev,
                revenue_change_30d=(rev - rev_prev) / rev_prev if rev_prev else None,
                orders_30d=int(count or 0),
                orders_prev_30d=int(count_prev or 0),
                last_order_at=_as_datetime(last_at),
            )
    return result


def _as_datetime(value: Any) -> datetime | None:
    # MAX() over a subquery loses the column type on SQLite, which then hands back text.
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
