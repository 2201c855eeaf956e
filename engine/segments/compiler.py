"""Rule trees → one SQL condition over ``merchants``, evaluated by the database.

Metrics are correlated scalar subqueries over ``orders`` and ``activities``; each
one is a range scan of the index ``(merchant_id, status, placed_at)`` or
``(merchant_id, kind, occurred_at)``. Values are bound parameters; field names
come only from the validated vocabulary.

Meaning (SPEC 4), as implemented here:

- A window ``N`` covers ``[now - N, now]``, both ends included.
- ``revenue_change`` over ``N`` compares ``[now - N, now]`` with ``[now - 2N, now - N)``:
  the earlier window excludes its upper edge, so an order placed exactly at
  ``now - N`` counts once, in the current window. The ratio is
  ``(current - earlier) / earlier`` and is null when ``earlier`` is 0.
- ``before: X`` is ``value < X``, ``after: X`` is ``value > X`` (strict);
  ``within: N`` is ``now - N <= value <= now``.
- ``orders``/``activity`` compared with "at least one" or "none" become ``EXISTS``
  (same answer, and the scan stops at the first row).
- A null value matches only ``is_null: true``: every leaf is two-valued (a leaf
  that could be NULL is ``COALESCE(leaf, FALSE)``), so ``not`` of a leaf over a
  null matches, and the whole condition is never NULL. ``not`` is pushed down
  to the leaves (De Morgan), which keeps the WHERE clause a plain AND/OR tree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from engine.errors import SegmentError
from engine.models import activities, merchants, orders
from engine.segments.rules import (
    JSON,
    NULLABLE_METRICS,
    AllOf,
    AnyOf,
    Check,
    FieldRule,
    MetricRule,
    Not,
    Rule,
    SegmentRef,
)
from engine.segments.sqlfuncs import (
    by_dialect,
    json_bool,
    json_number,
    json_raw,
    json_text,
    text_contains,
)


@dataclass(frozen=True)
class _Sql:
    """A condition, and whether it may be NULL where the rule means false."""

    cond: sa.ColumnElement[bool]
    nullable: bool


def _definite(part: _Sql) -> _Sql:
    """A leaf that may be NULL made FALSE instead, so it can be negated and never NULL.

    Done per leaf, not around the whole condition: SQLite short-circuits AND/OR
    only at the top of a WHERE clause, not inside a function such as COALESCE.
    """
    if part.nullable:
        return _Sql(sa.func.coalesce(part.cond, sa.false()), False)
    return part


def _combine(parts: list[_Sql], conjunction: bool) -> _Sql:
    join = sa.and_ if conjunction else sa.or_
    if len(parts) == 1:
        return parts[0]
    return _Sql(join(*(p.cond for p in parts)), any(p.nullable for p in parts))


def _bool(value: bool) -> sa.ColumnElement[bool]:
    return sa.true() if value else sa.false()


# --- metrics ----------------------------------------------------------------------------


def _paid(low: datetime, high: datetime) -> list[sa.ColumnElement[bool]]:
    return [
        orders.c.merchant_id == merchants.c.id,
        orders.c.status == "paid",
        orders.c.placed_at >= low,
        orders.c.placed_at <= high,
    ]


def metric_expression(
    metric: str, window: timedelta, now: datetime, kind: str | None = None
) -> sa.ColumnElement[Any]:
    """The value of a metric for the current merchant row, as a scalar subquery."""
    low = now - window
    amount = orders.c.amount
    if metric == "revenue":
        query = sa.select(sa.func.coalesce(sa.func.sum(amount), 0)).where(*_paid(low, now))
    elif metric == "orders":
        query = sa.select(sa.func.count()).select_from(orders).where(*_paid(low, now))
    elif metric == "aov":
        query = sa.select(
            sa.case(
                (
                    sa.func.count() > 0,
                    sa.cast(sa.func.sum(amount), sa.Float) / sa.cast(sa.func.count(), sa.Float),
                ),
            )
        ).where(*_paid(low, now))
    elif metric == "activity":
        query = (
            sa.select(sa.func.count())
            .select_from(activities)
            .where(
                activities.c.merchant_id == merchants.c.id,
                activities.c.kind == kind,
                activities.c.occurred_at >= low,
                activities.c.occurred_at <= now,
            )
        )
    elif metric == "revenue_change":
        # One range scan over both windows; the earlier one is [now-2N, now-N).
        current = sa.func.coalesce(
            sa.func.sum(sa.case((orders.c.placed_at >= low, amount), else_=0)), 0
        )
        earlier = sa.func.coalesce(
            sa.func.sum(sa.case((orders.c.placed_at < low, amount), else_=0)), 0
        )
        query = sa.select(
            sa.case(
                (
                    earlier > 0,
                    sa.cast(current - earlier, sa.Float) / sa.cast(earlier, sa.Float),
                ),
            )
        ).where(*_paid(now - 2 * window, now))
    else:  # pragma: no cover - the validator allows only the metrics above
        raise ValueError(f"unknown metric {metric!r}")
    return query.scalar_subquery()


def _presence(check: Check) -> bool | None:
    """For a count: True when the check means "at least one", False for "none", else None."""
    op, value = check.op, check.value
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if (
        (op == "gte" and 0 < value <= 1)
        or (op == "gt" and 0 <= value < 1)
        or (op, value) == ("ne", 0)
    ):
        return True
    if (
        (op == "lte" and 0 <= value < 1)
        or (op == "lt" and 0 < value <= 1)
        or (op, value) == ("eq", 0)
    ):
        return False
    return None


def metric_exists(
    metric: str, window: timedelta, now: datetime, kind: str | None = None
) -> sa.ColumnElement[bool]:
    """EXISTS a paid order (or an activity of ``kind``) in the window: stops at the first row."""
    low = now - window
    if metric == "orders":
        return sa.select(orders.c.merchant_id).where(*_paid(low, now)).exists()
    return (
        sa.select(activities.c.merchant_id)
        .where(
            activities.c.merchant_id == merchants.c.id,
            activities.c.kind == kind,
            activities.c.occurred_at >= low,
            activities.c.occurred_at <= now,
        )
        .exists()
    )


# --- leaves -----------------------------------------------------------------------------


def _bind(value: Any) -> sa.ColumnElement[Any]:
    """A bound parameter typed by its own value, not by the column it meets.

    Otherwise PostgreSQL would be sent ``2.5::INTEGER`` for ``orders >= 2.5``
    (the column's type), and round it.
    """
    if isinstance(value, bool):
        return sa.literal(int(value), sa.Integer())
    if isinstance(value, int):
        return sa.literal(value, sa.BigInteger())
    if isinstance(value, float):
        return sa.literal(value, sa.Float())
    if isinstance(value, datetime):
        return sa.literal(value, sa.DateTime())
    return sa.literal(value, sa.String())


def _compare(expr: sa.ColumnElement[Any], check: Check, now: datetime) -> sa.ColumnElement[bool]:
    op = check.op
    value = check.value
    if op in ("in", "not_in", "between"):
        value = [_bind(v) for v in value]
    elif op in ("before", "after"):
        value = _bind(now - value if isinstance(value, timedelta) else value)
    elif op == "within":
        value = _bind(now - value)
    else:
        value = _bind(value)
    if op == "eq":
        return expr == value
    if op == "ne":
        return expr != value
    if op == "lt":
        return expr < value
    if op == "lte":
        return expr <= value
    if op == "gt":
        return expr > value
    if op == "gte":
        return expr >= value
    if op == "in":
        return expr.in_(value)
    if op == "not_in":
        return expr.not_in(value)
    if op == "between":
        return expr.between(value[0], value[1])
    if op == "contains":
        return text_contains(expr, value)
    if op == "before":
        return expr < value
    if op == "after":
        return expr > value
    if op == "within":
        return sa.and_(expr >= value, expr <= _bind(now))
    raise ValueError(f"unknown operator {op!r}")  # pragma: no cover


def _scalar_test(expr: sa.ColumnElement[Any], nullable: bool, check: Check, now: datetime) -> _Sql:
    if check.op == "is_null":
        return _Sql(expr.is_(None) if check.value else expr.is_not(None), False)
    return _Sql(_compare(expr, check, now), nullable)


def _typed(key: sa.ColumnElement[str], value: Any) -> tuple[sa.ColumnElement[Any], Any]:
    """SQLite: the attribute read as the JSON type of ``value``, and ``value`` to compare with."""
    column = merchants.c.attributes
    if isinstance(value, bool):
        return json_bool(column, key), _bind(value)
    if isinstance(value, int | float):
        return json_number(column, key), _bind(value)
    return json_text(column, key), _bind(value)


def _jsonb(key: str) -> sa.ColumnElement[Any]:
    """PostgreSQL: ``attributes -> key`` (JSONB, compared with JSONB values)."""
    return merchants.c.attributes[key]


def _jsonb_value(value: Any) -> sa.ColumnElement[Any]:
    """PostgreSQL: ``value`` as a JSONB bound parameter (JSONB equality checks type and value)."""
    return sa.cast(sa.literal(json.dumps(value), sa.String()), JSONB())


def _json_equals(name: str, value: Any) -> sa.ColumnElement[bool]:
    """The attribute equals ``value`` as a JSON value (NULL when the key is missing)."""
    key = sa.literal(name, sa.String())
    typed, bound = _typed(key, value)
    return by_dialect(typed == bound, _jsonb(name) == _jsonb_value(value))


def _json_in(name: str, values: tuple) -> sa.ColumnElement[bool]:
    """Two-valued: the attribute equals (as JSON) one of ``values``."""
    key = sa.literal(name, sa.String())
    groups: dict[str, list[Any]] = {}
    for value in values:
        kind = "bool" if isinstance(value, bool) else "str" if isinstance(value, str) else "num"
        groups.setdefault(kind, []).append(value)
    parts = []
    for items in groups.values():
        expr, _ = _typed(key, items[0])
        bound = [_typed(key, v)[1] for v in items]
        parts.append(sa.func.coalesce(expr.in_(bound), sa.false()))
    postgresql = sa.func.coalesce(_jsonb(name).in_([_jsonb_value(v) for v in values]), sa.false())
    return by_dialect(sa.or_(*parts), postgresql)


def _json_test(field: str, check: Check, now: datetime) -> _Sql:
    name = field.partition(".")[2]
    key = sa.literal(name, sa.String())
    raw = json_raw(merchants.c.attributes, key)
    op, value = check.op, check.value
    if op == "is_null":
        return _Sql(raw.is_(None) if value else raw.is_not(None), False)
    if op == "eq":
        return _Sql(_json_equals(name, value), True)
    if op == "ne":
        equals = sa.func.coalesce(_json_equals(name, value), sa.false())
        return _Sql(sa.and_(raw.is_not(None), sa.not_(equals)), False)
    if op == "in":
        return _Sql(_json_in(name, value), False)
    if op == "not_in":
        return _Sql(sa.and_(raw.is_not(None), sa.not_(_json_in(name, value))), False)
    if op == "contains":
        return _Sql(_compare(json_text(merchants.c.attributes, key), check, now), True)
    # lt, lte, gt, gte, between: numbers only.
    return _Sql(_compare(json_number(merchants.c.attributes, key), check, now), True)


# --- trees ------------------------------------------------------------------------------


def _cost(rule: Rule, segments: Mapping[str, Any]) -> int:
    """Rough cost, so cheap column checks run before subqueries (AND/OR short-circuit)."""
    if isinstance(rule, FieldRule):
        return 1
    if isinstance(rule, MetricRule):
        return 20 if rule.metric == "revenue_change" else 10
    if isinstance(rule, AllOf | AnyOf):
        return sum(_cost(r, segments) for r in rule.rules)
    if isinstance(rule, Not):
        return _cost(rule.rule, segments)
    if isinstance(rule, SegmentRef) and rule.name in segments:
        return _cost(segments[rule.name].rule, segments)
    return 1


class _Compiler:
    def __init__(self, now: datetime, segments: Mapping[str, Any]) -> None:
        self.now = now
        self.segments = segments

    def compile(self, rule: Rule, negate: bool, stack: tuple[str, ...]) -> _Sql:
        if isinstance(rule, AllOf | AnyOf):
            children = sorted(rule.rules, key=lambda r: _cost(r, self.segments))
            parts = [self.compile(child, negate, stack) for child in children]
            # De Morgan: under `not`, all ↔ any.
            return _combine(parts, isinstance(rule, AllOf) != negate)
        if isinstance(rule, Not):
            return self.compile(rule.rule, not negate, stack)
        if isinstance(rule, SegmentRef):
            return self.segment(rule, negate, stack)
        if isinstance(rule, FieldRule):
            parts = [self.field_test(rule, check) for check in rule.checks]
        elif isinstance(rule, MetricRule) and (presence := self.presence(rule)) is not None:
            # "orders >= 1", "activity = 0": EXISTS stops at the first row instead of counting.
            exists = metric_exists(rule.metric, rule.window, self.now, rule.kind)
            return _Sql(exists if presence != negate else sa.not_(exists), False)
        elif isinstance(rule, MetricRule):
            expr = metric_expression(rule.metric, rule.window, self.now, rule.kind)
            nullable = rule.metric in NULLABLE_METRICS
            parts = [_scalar_test(expr, nullable, check, self.now) for check in rule.checks]
        else:  # pragma: no cover
            raise TypeError(f"not a rule: {rule!r}")
        parts = [_definite(p) for p in parts]
        if negate:
            return _combine([_Sql(sa.not_(p.cond), False) for p in parts], conjunction=False)
        return _combine(parts, conjunction=True)

    @staticmethod
    def presence(rule: MetricRule) -> bool | None:
        if rule.metric not in ("orders", "activity") or len(rule.checks) != 1:
            return None
        return _presence(rule.checks[0])

    def field_test(self, rule: FieldRule, check: Check) -> _Sql:
        if rule.type == JSON:
            return _json_test(rule.field, check, self.now)
        column = merchants.c[rule.field]
        return _scalar_test(column, bool(column.nullable), check, self.now)

    def segment(self, ref: SegmentRef, negate: bool, stack: tuple[str, ...]) -> _Sql:
        segment = self.segments.get(ref.name)
        path = getattr(segment, "path", None) or "segments"
        if segment is None:
            known = ", ".join(sorted(self.segments)) or "none"
            raise SegmentError(
                path, ref.line or None, f"no segment named {ref.name!r} (segments: {known})"
            )
        if ref.name in stack:
            chain = " → ".join([*stack, ref.name])
            raise SegmentError(
                path, ref.line or None, f"segments refer to each other in a cycle: {chain}"
            )
        return self.compile(segment.rule, negate, (*stack, ref.name))


def rule_condition(
    rule: Rule, *, now: datetime, segments: Mapping[str, Any]
) -> sa.ColumnElement[bool]:
    """A condition over ``engine.models.merchants`` that is TRUE for members, FALSE otherwise.

    Never NULL, so callers may negate it or combine it freely. ``now`` is naive UTC.
    Referenced segments are inlined from ``segments``.
    """
    return _Compiler(now, segments).compile(rule, False, ()).cond
