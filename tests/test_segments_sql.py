"""Segments against the database (SQLite and PostgreSQL): the edge cases of SPEC 4, and the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import write_files
from test_segments_property import (
    INJECTION,
    World,
    load_world,
    reference_members,
    rule_from,
    segment_set,
    sql_members,
)

from engine.cli import cli
from engine.importer import import_file
from engine.models import merchants
from engine.segments import (
    count_segment,
    explain_segment,
    load_segments,
    rule_condition,
    segment_members,
)

NOW = datetime(2025, 6, 15, 12, 0, 0)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


def merchant(merchant_id: int, **columns) -> dict:
    return {
        "id": merchant_id,
        "external_id": f"m{merchant_id}",
        "email": columns.pop("email", f"m{merchant_id}@shop.id"),
        "attributes": columns.pop("attributes", {}),
        **columns,
    }


def order(
    merchant_id: int, ref: str, amount: int, placed_at: datetime, status: str = "paid"
) -> dict:
    return {
        "merchant_id": merchant_id,
        "order_ref": ref,
        "amount": amount,
        "status": status,
        "placed_at": placed_at,
    }


def members(
    engine, data, world: World | None = None, segments=None, now: datetime = NOW
) -> set[int]:
    """SQL members of a rule, checked against the reference evaluator on the way."""
    segments = segments or segment_set({})
    rule = rule_from(data, segments)
    yes, no = sql_members(engine, rule, now, segments)
    if world is not None:
        assert yes == reference_members(rule, world, now, segments), data
        assert no == {m["id"] for m in world.merchants} - yes, data
    return yes


@pytest.fixture
def orders_world(engine) -> World:
    """Merchant 1: no orders; 2: paid at the window edges; 3: cancelled and refunded only;
    4: revenue down 50% on the 30 days before; 5: revenue only in the earlier window."""
    world = World(
        merchants=[merchant(i) for i in range(1, 6)],
        orders=[
            order(2, "edge-low", 100, NOW - 30 * DAY),  # exactly at now - 30d: inside
            order(2, "edge-now", 200, NOW),  # exactly now: inside
            order(2, "too-old", 400, NOW - 30 * DAY - SECOND),
            order(2, "future", 800, NOW + SECOND),
            order(3, "c", 1000, NOW - DAY, status="cancelled"),
            order(3, "r", 1000, NOW - DAY, status="refunded"),
            order(4, "now", 500, NOW - DAY),
            order(4, "earlier", 1000, NOW - 45 * DAY),
            order(
                4, "boundary", 0, NOW - 60 * DAY
            ),  # [now-60d, now-30d): inside the earlier window
            order(5, "earlier", 300, NOW - 30 * DAY - SECOND),
        ],
    )
    load_world(engine, world)
    return world


def test_windows_include_both_ends_and_only_paid_orders(engine, orders_world):
    w = orders_world
    assert members(engine, {"metric": "revenue", "window": "30d", "eq": 300}, w) == {2}
    assert members(engine, {"metric": "orders", "window": "30d", "eq": 2}, w) == {2}
    assert members(engine, {"metric": "revenue", "window": "30d", "eq": 0}, w) == {1, 3, 5}
    assert members(engine, {"metric": "orders", "window": "30d", "eq": 0}, w) == {1, 3, 5}
    assert members(engine, {"metric": "aov", "window": "30d", "eq": 150}, w) == {2}
    # A fractional bound is not rounded to the column's integer type (PostgreSQL casts).
    assert members(engine, {"metric": "orders", "window": "30d", "gte": 1.5}, w) == {2}
    assert members(engine, {"metric": "orders", "window": "30d", "in": [1.5, 2.4]}, w) == set()
    assert members(
        engine, {"metric": "revenue", "window": "30d", "between": [299.5, 300.5]}, w
    ) == {2}
    assert members(engine, {"metric": "aov", "window": "30d", "is_null": True}, w) == {1, 3, 5}
    # aov over no orders is null: it matches neither a comparison nor its negation's opposite.
    assert members(engine, {"metric": "aov", "window": "30d", "lt": 1000000}, w) == {2, 4}
    assert members(engine, {"not": {"metric": "aov", "window": "30d", "lt": 1000000}}, w) == {
        1,
        3,
        5,
    }


def test_revenue_change_against_the_window_before(engine, orders_world):
    w = orders_world
    # 4: 500 now vs 1000 earlier = -0.5; 5: 0 vs 300 = -1; 2: 300 vs 400 (the order one second
    # before now-30d) = -0.25; 1 and 3: earlier revenue 0 → null.
    assert members(engine, {"metric": "revenue_change", "window": "30d", "eq": -0.5}, w) == {4}
    assert members(engine, {"metric": "revenue_change", "window": "30d", "lt": -0.3}, w) == {4, 5}
    assert members(engine, {"metric": "revenue_change", "window": "30d", "eq": -0.25}, w) == {2}
    assert members(engine, {"metric": "revenue_change", "window": "30d", "is_null": True}, w) == {
        1,
        3,
    }
    assert members(
        engine, {"not": {"metric": "revenue_change", "window": "30d", "gte": -1}}, w
    ) == {1, 3}


def test_revenue_change_edge_belongs_to_the_current_window(engine):
    """An order at exactly now - N counts in the current window, not the earlier one."""
    world = World(
        merchants=[merchant(1), merchant(2)],
        orders=[
            order(1, "edge", 100, NOW - 7 * DAY),
            order(1, "earlier", 100, NOW - 14 * DAY),  # exactly now - 2N: inside the earlier window
            order(2, "earlier", 100, NOW - 14 * DAY - SECOND),  # before it: in neither
        ],
    )
    load_world(engine, world)
    assert members(engine, {"metric": "revenue_change", "window": "1w", "eq": 0}, world) == {1}
    assert members(
        engine, {"metric": "revenue_change", "window": "7d", "is_null": True}, world
    ) == {2}


def test_null_values_match_only_is_null(engine):
    world = World(
        merchants=[
            merchant(1, last_login_at=None, plan=None),
            merchant(2, last_login_at=NOW - 20 * DAY, plan="pro"),
            merchant(3, last_login_at=NOW - DAY, plan="basic"),
        ]
    )
    load_world(engine, world)
    assert members(engine, {"field": "last_login_at", "before": "14d"}, world) == {2}
    assert members(engine, {"not": {"field": "last_login_at", "before": "14d"}}, world) == {1, 3}
    assert members(engine, {"field": "last_login_at", "within": "7d"}, world) == {3}
    assert members(engine, {"field": "last_login_at", "is_null": True}, world) == {1}
    assert members(engine, {"field": "plan", "ne": "pro"}, world) == {3}
    assert members(engine, {"field": "plan", "not_in": ["pro"]}, world) == {3}
    assert members(engine, {"not": {"field": "plan", "eq": "pro"}}, world) == {1, 3}
    assert members(engine, {"field": "last_login_at", "after": "2025-06-01"}, world) == {3}


def test_attributes_compare_as_json_values_on_both_backends(engine):
    values = [5, "5", 5.0, True, 1, "true", None, "gold", "Gold", [5], {"a": 5}, 5.5]
    world = World(merchants=[merchant(i + 1, attributes={"v": v}) for i, v in enumerate(values)])
    world.merchants.append(merchant(len(values) + 1, attributes={"other": 5}))  # key missing
    load_world(engine, world)
    by_value = {i + 1: v for i, v in enumerate(values)}

    def ids(*wanted) -> set[int]:
        return {
            i for i, v in by_value.items() if any(v == w and type(v) is type(w) for w in wanted)
        }

    assert members(engine, {"field": "attributes.v", "eq": 5}, world) == ids(5, 5.0)
    assert members(engine, {"field": "attributes.v", "eq": "5"}, world) == ids("5")
    assert members(engine, {"field": "attributes.v", "eq": True}, world) == ids(True)
    assert members(engine, {"field": "attributes.v", "eq": 1}, world) == ids(1)
    assert members(engine, {"field": "attributes.v", "eq": "gold"}, world) == ids("gold")
    assert members(engine, {"field": "attributes.v", "in": ["5", True]}, world) == ids("5", True)
    # ne / not_in: anything with a value that differs; JSON null and a missing key never match.
    assert members(engine, {"field": "attributes.v", "ne": 5}, world) == set(by_value) - ids(
        5, 5.0, None
    )
    assert members(engine, {"field": "attributes.v", "not_in": [5, "gold"]}, world) == set(
        by_value
    ) - ids(5, 5.0, "gold", None)
    assert members(engine, {"field": "attributes.v", "gte": 1}, world) == ids(5, 5.0, 1, 5.5)
    assert members(engine, {"field": "attributes.v", "in": [-1, 5.5]}, world) == ids(5.5)
    assert members(engine, {"field": "attributes.v", "contains": "old"}, world) == ids(
        "gold", "Gold"
    )
    assert members(engine, {"field": "attributes.v", "contains": "Go"}, world) == ids("Gold")
    assert members(engine, {"field": "attributes.v", "is_null": True}, world) == ids(None) | {
        len(values) + 1
    }
    assert members(engine, {"field": "attributes.missing", "is_null": False}, world) == set()


def test_a_hostile_value_is_data_matched_literally(engine):
    world = World(
        merchants=[
            merchant(1, city=INJECTION, attributes={"note": INJECTION}),
            merchant(2, city="Jakarta", attributes={"note": "x"}),
        ]
    )
    load_world(engine, world)
    assert members(engine, {"field": "city", "eq": INJECTION}, world) == {1}
    assert members(engine, {"field": "city", "contains": "'); DROP"}, world) == {1}
    assert members(engine, {"field": "attributes.note", "eq": INJECTION}, world) == {1}
    assert members(engine, {"field": "attributes.note", "in": [INJECTION, "y"]}, world) == {1}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(merchants)).scalar_one() == 2


def test_text_is_case_sensitive_except_email(engine):
    world = World(
        merchants=[
            merchant(1, city="Jakarta", email="budi@toko.id"),
            merchant(2, city="jakarta", email="siti@toko.id"),
        ]
    )
    load_world(engine, world)
    assert members(engine, {"field": "city", "eq": "Jakarta"}, world) == {1}
    assert members(engine, {"field": "city", "contains": "Jak"}, world) == {1}
    assert members(engine, {"field": "email", "eq": "BUDI@Toko.ID"}) == {1}
    assert members(engine, {"field": "email", "in": ["Siti@TOKO.id"]}) == {2}


def test_imported_timestamps_with_offsets_meet_the_window_in_utc(engine, tmp_path):
    merchants_file = tmp_path / "m.csv"
    merchants_file.write_text("external_id,email\nm1,a@shop.id\nm2,b@shop.id\n", encoding="utf-8")
    orders_file = tmp_path / "o.csv"
    orders_file.write_text(
        "merchant_external_id,order_ref,amount,status,placed_at\n"
        # 2025-05-16 19:00 +07:00 is 12:00 UTC, exactly now - 30d: inside
        "m1,a,100,paid,2025-05-16T19:00:00+07:00\n"
        # 18:59:59 +07:00 is one second earlier: outside
        "m2,b,100,paid,2025-05-16T18:59:59+07:00\n",
        encoding="utf-8",
    )
    assert import_file(engine, "merchants", merchants_file).ok
    assert import_file(engine, "orders", orders_file).ok
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(merchants.c.external_id, merchants.c.id)).all())
    assert members(engine, {"metric": "orders", "window": "30d", "eq": 1}) == {ids["m1"]}


def test_activity_counts_one_kind_in_the_window(engine):
    world = World(
        merchants=[merchant(1), merchant(2)],
        activities=[
            {"merchant_id": 1, "kind": "login", "occurred_at": NOW - 7 * DAY},
            {"merchant_id": 1, "kind": "promo_created", "occurred_at": NOW - DAY},
            {"merchant_id": 2, "kind": "login", "occurred_at": NOW - 7 * DAY - SECOND},
        ],
    )
    load_world(engine, world)
    assert members(
        engine, {"metric": "activity", "kind": "login", "window": "7d", "gte": 1}, world
    ) == {1}
    assert members(
        engine, {"metric": "activity", "kind": "promo_created", "window": "7d", "eq": 0}, world
    ) == {2}


def test_segments_inline_their_references(engine, project_dir):
    write_files(
        project_dir / "segments",
        {
            "tests.yaml": "rules:\n  any:\n    - field: attributes.test_account\n      eq: true\n"
            "    - field: email\n      contains: '@tokoku-internal.id'\n",
            "sellers.yaml": "rules:\n  all:\n    - metric: orders\n      window: 14d\n      gte: 1\n"
            "    - not:\n        segment: tests\n",
        },
    )
    segments = load_segments(project_dir / "segments")
    world = World(
        merchants=[
            merchant(1),
            merchant(2, attributes={"test_account": True}),
            merchant(3, email="qa+3@tokoku-internal.id"),
            merchant(4),
        ],
        orders=[order(i, "o", 10, NOW - DAY) for i in (1, 2, 3)],
    )
    load_world(engine, world)
    assert count_segment(engine, segments, "sellers", now=NOW) == 1
    assert count_segment(engine, segments, "tests", now=NOW) == 2
    assert [m["id"] for m in segment_members(engine, segments, "sellers", now=NOW)] == [1]
    assert [
        m["external_id"] for m in segment_members(engine, segments, "tests", now=NOW, limit=1)
    ] == ["m2"]
    # Usable as a cursor-paged condition, as the sender does.
    cond = rule_condition(segments["tests"].rule, now=NOW, segments=segments)
    with engine.connect() as conn:
        page = conn.execute(
            sa.select(merchants.c.id)
            .where(cond)
            .where(merchants.c.id > 2)
            .order_by(merchants.c.id)
            .limit(10)
        ).scalars()
        assert list(page) == [3]
    explanation = explain_segment(engine, segments, "sellers", now=NOW)
    assert "FROM merchants" in explanation.sql and "orders" in explanation.sql
    assert INJECTION not in explanation.sql
    assert explanation.plan


# --- the command line ----------------------------------------------------------------------


@pytest.fixture
def cli_project(project, project_dir, project_env):
    write_files(
        project_dir / "segments",
        {
            "sellers.yaml": "description: Sold in the last 14 days\nrules:\n  metric: orders\n"
            "  window: 14d\n  gte: 1\n",
            "pro.yaml": "description: On the pro plan\nrules:\n  field: plan\n  eq: pro\n",
        },
    )
    world = World(
        merchants=[merchant(1, plan="pro", store_name="Toko Satu"), merchant(2, plan="basic")],
        orders=[order(1, "o", 10, NOW - DAY), order(2, "o", 10, NOW - 20 * DAY)],
    )
    load_world(project.engine, world)
    return project_dir


def run(env, *args) -> object:
    return CliRunner().invoke(cli, [*args], env=env, catch_exceptions=False)


def test_segment_commands_print_the_json_forms(cli_project, project_env):
    base = ["--project", str(cli_project), "--now", NOW.isoformat()]
    result = run(project_env, "segment", "count", "sellers", *base, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"segment": "sellers", "count": 1}
    result = run(project_env, "segment", "count", "sellers", *base[:2], "--now", "2025-06-01")
    assert result.output.strip() == "sellers: 1 merchant"  # merchant 2's order, 20 days before NOW

    result = run(project_env, "segment", "show", "sellers", *base, "--format", "json")
    (row,) = json.loads(result.output)
    assert {k: row[k] for k in ("id", "external_id", "email", "store_name")} == {
        "id": 1,
        "external_id": "m1",
        "email": "m1@shop.id",
        "store_name": "Toko Satu",
    }
    result = run(project_env, "segment", "show", "pro", *base, "--format", "csv", "--limit", "5")
    assert result.output.splitlines()[0].startswith("id,external_id,email")
    assert "m1@shop.id" in result.output
    result = run(project_env, "segment", "show", "pro", *base)
    assert "Toko Satu" in result.output

    result = run(project_env, "segment", "list", *base, "--format", "json")
    assert json.loads(result.output) == [
        {"segment": "pro", "description": "On the pro plan", "count": 1},
        {"segment": "sellers", "description": "Sold in the last 14 days", "count": 1},
    ]
    result = run(project_env, "segment", "explain", "sellers", *base)
    assert result.exit_code == 0
    assert "-- query plan" in result.output and "orders" in result.output


def test_segment_commands_report_mistakes_in_one_sentence(cli_project, project_env):
    base = ["--project", str(cli_project)]
    result = run(project_env, "segment", "count", "nope", *base)
    assert result.exit_code == 1
    assert "no segment named 'nope' (segments: pro, sellers)" in result.output
    result = run(project_env, "segment", "count", "pro", *base, "--now", "soon")
    assert result.exit_code == 1 and "--now 'soon'" in result.output
    for far in ("0001-01-02", "0001-01-01T00:00+07:00", "9999-12-31"):
        result = run(project_env, "segment", "count", "sellers", *base, "--now", far)
        assert result.exit_code == 1, far
        assert f"--now '{far}' is out of range" in result.output
    (cli_project / "segments" / "bad.yaml").write_text("rules:\n  field: plan\n  before: 3d\n")
    result = run(project_env, "segment", "list", *base)
    assert result.exit_code == 1
    assert (
        f"{cli_project / 'segments' / 'bad.yaml'}:3: operator 'before' does not fit"
        in result.output
    )
    assert "Traceback" not in result.output


def test_segment_list_outside_a_project_leaves_no_database_behind(tmp_path, project_env):
    """Run in the wrong folder, `segment list` says so and creates nothing there."""
    folder = tmp_path / "not-a-project"
    folder.mkdir()
    env = {**project_env, "CAMPAIGN_DATABASE_URL": ""}
    result = run(env, "segment", "list", "--project", str(folder))
    assert result.exit_code == 0
    assert f"there is no folder {folder / 'segments'}" in result.output
    assert list(folder.iterdir()) == []
    result = run(env, "segment", "list", "--project", str(folder), "--format", "json")
    assert json.loads(result.output) == []
    assert list(folder.iterdir()) == []
