"""Warnings for ``metric: activity`` rules whose ``kind`` never occurs in the database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.models import activities
from engine.segments.rules import AllOf, AnyOf, MetricRule, Not, Rule, referenced_segments


def _activity_rules(rule: Rule) -> Iterable[MetricRule]:
    if isinstance(rule, MetricRule) and rule.metric == "activity" and rule.kind:
        yield rule
    elif isinstance(rule, AllOf | AnyOf):
        for child in rule.rules:
            yield from _activity_rules(child)
    elif isinstance(rule, Not):
        yield from _activity_rules(rule.rule)


def _involved(segments: Mapping, names: Iterable[str]) -> list[str]:
    """``names`` and every segment they refer to, at any depth, each once, in order."""
    seen: dict[str, None] = {}
    pending = [n for n in names if n in segments]
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen[name] = None
        pending.extend(
            ref.name
            for ref in referenced_segments(segments[name].rule)
            if ref.name in segments and ref.name not in seen
        )
    return list(seen)


def unknown_activity_kinds(conn: Connection, segments: Mapping, names: Iterable[str]) -> list[str]:
    """One warning sentence per ``metric: activity`` rule (in ``names`` or what they refer to)
    whose ``kind`` no activity in the database has: such a rule silently counts zero.

    One query when every kind occurs (it stops at the first row of each), a second
    one to list the known kinds when some do not.
    """
    rules = [
        (segments[name], rule)
        for name in _involved(segments, names)
        for rule in _activity_rules(segments[name].rule)
    ]
    kinds = sorted({rule.kind for _segment, rule in rules})
    if not kinds:
        return []
    row = conn.execute(
        sa.select(
            *[
                sa.exists().where(activities.c.kind == kind).label(f"k{i}")
                for i, kind in enumerate(kinds)
            ]
        )
    ).one()
    missing = {kind for kind, present in zip(kinds, row, strict=True) if not present}
    if not missing:
        return []
    known = (
        conn.execute(sa.select(activities.c.kind).distinct().order_by(activities.c.kind))
        .scalars()
        .all()
    )
    known_text = ", ".join(known) if known else "none: there are no activities yet"
    return [
        f"{segment.path}:{rule.line}: warning: no activity of kind {rule.kind!r} exists in the "
        f"database, so this rule matches no merchant (known kinds: {known_text})"
        for segment, rule in rules
        if rule.kind in missing
    ]
