"""SQL == a plain-Python reference evaluator, for random rule trees over random histories.

The reference below is written from SPEC 4 directly (windows, paid orders only,
0 for no orders, null semantics, JSON values), independently of the compiler.
Runs on SQLite and PostgreSQL through the ``engine`` fixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.models import activities, merchants, orders
from engine.segments import (
    AllOf,
    AnyOf,
    FieldRule,
    MetricRule,
    Not,
    Rule,
    Segment,
    SegmentRef,
    SegmentSet,
    parse_rule,
    rule_condition,
)
from engine.segments.rules import JSON, field_type
from engine.yamlfile import parse_yaml

NOW = datetime(2025, 6, 15, 12, 0, 0)
INJECTION = "x'); DROP TABLE merchants; --"

# --- the reference evaluator -------------------------------------------------------------


@dataclass
class World:
    merchants: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    activities: list[dict[str, Any]] = field(default_factory=list)


def _jtype(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    if isinstance(value, str):
        return "str"
    return "other"


def _jeq(value: Any, wanted: Any) -> bool:
    return _jtype(value) == _jtype(wanted) and value == wanted


def reference_metric(rule: MetricRule, merchant_id: int, world: World, now: datetime) -> Any:
    low = now - rule.window
    if rule.metric == "activity":
        return sum(
            1
            for a in world.activities
            if a["merchant_id"] == merchant_id
            and a["kind"] == rule.kind
            and low <= a["occurred_at"] <= now
        )
    paid = [o for o in world.orders if o["merchant_id"] == merchant_id and o["status"] == "paid"]
    current = [o["amount"] for o in paid if low <= o["placed_at"] <= now]
    if rule.metric == "revenue":
        return sum(current)
    if rule.metric == "orders":
        return len(current)
    if rule.metric == "aov":
        return sum(current) / len(current) if current else None
    earlier = sum(o["amount"] for o in paid if now - 2 * rule.window <= o["placed_at"] < low)
    return None if earlier == 0 else (sum(current) - earlier) / earlier


def reference_check(value: Any, kind: str, op: str, wanted: Any, now: datetime) -> bool:
    if op == "is_null":
        return (value is None) == wanted
    if value is None:
        return False  # a null matches only is_null: true
    if kind == JSON:
        number = _jtype(value) == "num"
        if op == "eq":
            return _jeq(value, wanted)
        if op == "ne":
            return not _jeq(value, wanted)
        if op == "in":
            return any(_jeq(value, w) for w in wanted)
        if op == "not_in":
            return not any(_jeq(value, w) for w in wanted)
        if op == "contains":
            return _jtype(value) == "str" and wanted in value
        if not number:
            return False
    if op in ("before", "after"):
        when = now - wanted if isinstance(wanted, timedelta) else wanted
        return value < when if op == "before" else value > when
    return {
        "eq": lambda: value == wanted,
        "ne": lambda: value != wanted,
        "lt": lambda: value < wanted,
        "lte": lambda: value <= wanted,
        "gt": lambda: value > wanted,
        "gte": lambda: value >= wanted,
        "in": lambda: value in wanted,
        "not_in": lambda: value not in wanted,
        "between": lambda: wanted[0] <= value <= wanted[1],
        "contains": lambda: wanted in value,
        "within": lambda: now - wanted <= value <= now,
    }[op]()


def reference_match(rule: Rule, merchant: dict, world: World, now: datetime, segments) -> bool:
    if isinstance(rule, AllOf):
        return all(reference_match(r, merchant, world, now, segments) for r in rule.rules)
    if isinstance(rule, AnyOf):
        return any(reference_match(r, merchant, world, now, segments) for r in rule.rules)
    if isinstance(rule, Not):
        return not reference_match(rule.rule, merchant, world, now, segments)
    if isinstance(rule, SegmentRef):
        return reference_match(segments[rule.name].rule, merchant, world, now, segments)
    if isinstance(rule, FieldRule):
        kind = field_type(rule.field)
        if kind == JSON:
            value = merchant["attributes"].get(rule.field.partition(".")[2])
        else:
            value = merchant[rule.field]
        return all(reference_check(value, kind, c.op, c.value, now) for c in rule.checks)
    assert isinstance(rule, MetricRule)
    value = reference_metric(rule, merchant["id"], world, now)
    return all(reference_check(value, "number", c.op, c.value, now) for c in rule.checks)


def reference_members(rule: Rule, world: World, now: datetime, segments) -> set[int]:
    return {m["id"] for m in world.merchants if reference_match(rule, m, world, now, segments)}


# --- loading a world into the database ---------------------------------------------------


def _same_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one executemany need the same columns: the missing ones are NULL."""
    keys = {k for row in rows for k in row}
    return [{k: row.get(k) for k in keys} for row in rows]


def load_world(engine: sa.Engine, world: World) -> None:
    with engine.begin() as conn:
        conn.execute(activities.delete())
        conn.execute(orders.delete())
        conn.execute(merchants.delete())
        if world.merchants:
            conn.execute(merchants.insert(), _same_keys(world.merchants))
        if world.orders:
            conn.execute(orders.insert(), world.orders)
        if world.activities:
            conn.execute(activities.insert(), world.activities)


def sql_members(
    engine: sa.Engine, rule: Rule, now: datetime, segments
) -> tuple[set[int], set[int]]:
    """Members, and members of the negated condition (which must be the complement)."""
    cond = rule_condition(rule, now=now, segments=segments)
    with engine.connect() as conn:
        yes = set(conn.execute(sa.select(merchants.c.id).where(cond)).scalars())
        no = set(conn.execute(sa.select(merchants.c.id).where(sa.not_(cond))).scalars())
    return yes, no


def rule_from(data: Any, known=()) -> Rule:
    """Through YAML text and the validator, as a user's file would go."""
    doc = parse_yaml(yaml.safe_dump({"rules": data}, allow_unicode=True), "generated.yaml")
    return parse_rule(doc, ("rules",), known_segments=set(known))


def segment_set(definitions: dict[str, Any]) -> SegmentSet:
    return SegmentSet(
        {
            name: Segment(name, "", rule_from(data, definitions), f"segments/{name}.yaml")
            for name, data in definitions.items()
        }
    )


BASE_SEGMENTS = {
    "flagged": {"field": "attributes.flag", "eq": True},
    "big": {"metric": "revenue", "window": "30d", "gte": 250000},
    "flagged-or-big": {"any": [{"segment": "flagged"}, {"segment": "big"}]},
    "not-pro": {"not": {"field": "plan", "in": ["pro"]}},
}

# --- strategies --------------------------------------------------------------------------

EDGE_DAYS = (0, 1, 2, 7, 14, 28, 30, 60)
WINDOWS = ("1d", "2d", "7d", "14d", "30d", "12h", "1w")
TEXTS = ("pro", "basic", "free", "Jakarta", "jakarta", INJECTION, "", "Toko Batik")
SUBSTRINGS = ("ak", "pro", "'", "DROP", "x')", "Jak", "")
# Repeats make matches likelier: a value equal to a rule's value is the interesting case.
JSON_VALUES = (
    "gold",
    "gold",
    "Gold",
    "5",
    5,
    5,
    5.5,
    0,
    -1,
    True,
    True,
    False,
    None,
    [1, 2],
    {"a": 1},
)
JSON_SCALARS = ("gold", "Gold", "5", 5, 5.5, 0, -1, True, False)
JSON_KEYS = ("tier", "flag")


@st.composite
def moments(draw) -> datetime:
    if draw(st.booleans()):
        day = draw(st.sampled_from(EDGE_DAYS))
        jitter = draw(st.sampled_from((-1, 0, 0, 1)))
        half_day = draw(st.sampled_from((0, 0, 12)))
        return NOW - timedelta(days=day, hours=half_day) + timedelta(seconds=jitter)
    return NOW - timedelta(seconds=draw(st.integers(-86400, 130 * 86400)))


@st.composite
def worlds(draw) -> World:
    world = World()
    count = draw(st.integers(0, 7))
    for merchant_id in range(1, count + 1):
        attributes = {
            key: draw(st.sampled_from(JSON_VALUES)) for key in JSON_KEYS if draw(st.booleans())
        }
        world.merchants.append(
            {
                "id": merchant_id,
                "external_id": f"m{merchant_id}",
                "email": draw(st.sampled_from(("a@x.id", "qa+1@tokoku-internal.id", "b@y.id"))),
                "name": draw(st.sampled_from((None, *TEXTS))),
                "plan": draw(st.sampled_from((None, "pro", "basic", "free"))),
                "city": draw(st.sampled_from((None, *TEXTS))),
                "created_at": draw(st.one_of(st.none(), moments())),
                "last_login_at": draw(st.one_of(st.none(), moments())),
                "attributes": attributes,
            }
        )
        for number in range(draw(st.integers(0, 6))):
            world.orders.append(
                {
                    "merchant_id": merchant_id,
                    "order_ref": f"o{number}",
                    "amount": draw(st.sampled_from((0, 1, 100, 250000, 1000000))),
                    "status": draw(st.sampled_from(("paid", "paid", "cancelled", "refunded"))),
                    "placed_at": draw(moments()),
                }
            )
        seen = set()
        for _ in range(draw(st.integers(0, 4))):
            event = (draw(st.sampled_from(("login", "promo_created"))), draw(moments()))
            if event not in seen:
                seen.add(event)
                world.activities.append(
                    {"merchant_id": merchant_id, "kind": event[0], "occurred_at": event[1]}
                )
    return world


def _number_ops(values) -> st.SearchStrategy[dict[str, Any]]:
    value = st.sampled_from(values)
    pair = st.tuples(value, value).map(sorted).map(list)
    return st.one_of(
        st.tuples(st.sampled_from(("eq", "ne", "lt", "lte", "gt", "gte")), value).map(
            lambda t: {t[0]: t[1]}
        ),
        st.tuples(st.sampled_from(("in", "not_in")), st.lists(value, min_size=1, max_size=3)).map(
            lambda t: {t[0]: t[1]}
        ),
        pair.map(lambda p: {"between": p}),
        st.booleans().map(lambda b: {"is_null": b}),
    )


def _when() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(WINDOWS),
        st.sampled_from(
            (date(2025, 6, 1), date(2025, 5, 16), "2025-06-14T12:00:00+07:00", "2025-06-15")
        ),
    )


TEXT_OPS = st.one_of(
    st.tuples(st.sampled_from(("eq", "ne")), st.sampled_from(TEXTS)).map(lambda t: {t[0]: t[1]}),
    st.tuples(
        st.sampled_from(("in", "not_in")), st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3)
    ).map(lambda t: {t[0]: t[1]}),
    st.sampled_from(SUBSTRINGS).map(lambda s: {"contains": s}),
    st.booleans().map(lambda b: {"is_null": b}),
)
TIME_OPS = st.one_of(
    st.tuples(st.sampled_from(("before", "after")), _when()).map(lambda t: {t[0]: t[1]}),
    st.sampled_from(WINDOWS).map(lambda w: {"within": w}),
    st.booleans().map(lambda b: {"is_null": b}),
)
JSON_OPS = st.one_of(
    st.tuples(st.sampled_from(("eq", "ne")), st.sampled_from(JSON_SCALARS)).map(
        lambda t: {t[0]: t[1]}
    ),
    st.tuples(
        st.sampled_from(("in", "not_in")),
        st.lists(st.sampled_from(JSON_SCALARS), min_size=1, max_size=3),
    ).map(lambda t: {t[0]: t[1]}),
    _number_ops((-1, 0, 5, 5.5, 6)),
    st.sampled_from(("ol", "Go", "5")).map(lambda s: {"contains": s}),
)
METRIC_VALUES = {
    "revenue": (0, 1, 100, 250000, 1000000, 1250000),
    "orders": (0, 1, 1.5, 2, 3),
    "aov": (0, 1, 100, 250000, 500000),
    "activity": (0, 1, 2, 0.5),
    "revenue_change": (-1, -0.5, 0, 0.5, 1, 3, 2499),
}


def _leaf(fixed: dict[str, Any], ops) -> st.SearchStrategy[dict[str, Any]]:
    return st.lists(ops, min_size=1, max_size=2).map(
        lambda parts: {**fixed, **{k: v for part in parts for k, v in part.items()}}
    )


def leaves() -> st.SearchStrategy[dict[str, Any]]:
    text = st.sampled_from(("plan", "city", "name", "email")).flatmap(
        lambda f: _leaf({"field": f}, TEXT_OPS)
    )
    times = st.sampled_from(("created_at", "last_login_at")).flatmap(
        lambda f: _leaf({"field": f}, TIME_OPS)
    )
    ids = _leaf({"field": "id"}, _number_ops((0, 1, 3, 8)))
    attrs = st.sampled_from((*JSON_KEYS, "missing")).flatmap(
        lambda k: _leaf({"field": f"attributes.{k}"}, JSON_OPS)
    )

    def metric(name: str) -> st.SearchStrategy[dict[str, Any]]:
        fixed = st.sampled_from(WINDOWS).map(lambda w: {"metric": name, "window": w})
        if name == "activity":
            fixed = st.tuples(fixed, st.sampled_from(("login", "promo_created"))).map(
                lambda t: {**t[0], "kind": t[1]}
            )
        return fixed.flatmap(lambda f: _leaf(f, _number_ops(METRIC_VALUES[name])))

    metrics = st.sampled_from(list(METRIC_VALUES)).flatmap(metric)
    refs = st.sampled_from(list(BASE_SEGMENTS)).map(lambda n: {"segment": n})
    return st.one_of(text, times, ids, attrs, attrs, metrics, metrics, refs)


def trees() -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        leaves(),
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda rs: {"all": rs}),
            st.lists(children, min_size=1, max_size=3).map(lambda rs: {"any": rs}),
            children.map(lambda r: {"not": r}),
        ),
        max_leaves=6,
    )


# --- the property ------------------------------------------------------------------------


def subtrees(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The tree and every node in it: each leaf is checked on its own as well."""
    found = [data]
    for key in ("all", "any"):
        for child in data.get(key, ()):
            found.extend(subtrees(child))
    if "not" in data:
        found.extend(subtrees(data["not"]))
    return found


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds(), rules=st.lists(trees(), min_size=4, max_size=4))
def test_sql_matches_the_reference_evaluator(engine, world, rules):
    segments = segment_set(BASE_SEGMENTS)
    load_world(engine, world)
    everyone = {m["id"] for m in world.merchants}
    for data in [node for tree in rules for node in subtrees(tree)]:
        rule = rule_from(data, BASE_SEGMENTS)
        expected = reference_members(rule, world, NOW, segments)
        yes, no = sql_members(engine, rule, NOW, segments)
        assert yes == expected, data
        assert no == everyone - expected, data


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds(), rules=st.lists(leaves(), min_size=12, max_size=12))
def test_single_leaves_match_the_reference_evaluator(engine, world, rules):
    """Many leaves per history: where the meaning of each operator lives."""
    segments = segment_set(BASE_SEGMENTS)
    load_world(engine, world)
    everyone = {m["id"] for m in world.merchants}
    for data in rules:
        rule = rule_from(data, BASE_SEGMENTS)
        expected = reference_members(rule, world, NOW, segments)
        yes, no = sql_members(engine, rule, NOW, segments)
        assert yes == expected, data
        assert no == everyone - expected, data
