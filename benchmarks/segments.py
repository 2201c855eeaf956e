"""Segment counting speed: our compiled query vs hand-written SQL vs filtering in Python.

    .venv/bin/python benchmarks/segments.py                   # 1,000,000 merchants, 10,000,000 orders, SQLite
    .venv/bin/python benchmarks/segments.py --merchants 200000
    .venv/bin/python benchmarks/segments.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/bench

The data is generated inside the database (a recursive CTE on SQLite,
generate_series on PostgreSQL) on a fixed clock, and kept for the next run
(``--db``; rebuilt when the size differs). For each example segment it prints
the time of ``count_segment`` (what ``campaign segment count`` runs), the time
of a hand-written SQL query for the same question, their ratio, and checks that
both give the same count. Then it times one segment filtered in Python (loading
merchants and their orders), to show why that is never done.
Targets: ratio <= 1.5; each segment < 5 s on SQLite at full size.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.db import ensure_schema, make_engine  # noqa: E402
from engine.models import merchants  # noqa: E402
from engine.segments import count_segment, load_segments  # noqa: E402

NOW = datetime(2025, 6, 15, 12, 0, 0)
ORDERS_PER_MERCHANT = 10
NEVER_SOLD_EVERY = 5  # one merchant in 5 has no orders at all
TEST_EVERY = 100  # one merchant in 100 is an internal test account

# --- building the data ---------------------------------------------------------------------

# Shapes by merchant id % 7: 0-2 steady, 3 dormant, 4 declining, 5 growing, 6 recent only.
_OFFSET_DAYS = """
CASE m % 7
  WHEN 3 THEN 35 + r1 % 330
  WHEN 4 THEN CASE WHEN r2 % 5 = 0 THEN r1 % 30 ELSE 30 + r1 % 335 END
  WHEN 5 THEN (r1 % 365) * (r2 % 365) / 365 / 4
  WHEN 6 THEN r1 % 120
  ELSE r1 % 365
END"""

SQLITE_MERCHANTS = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO merchants (id, external_id, email, name, store_name, plan, category, city,
                       locale, timezone, status, created_at, last_login_at, attributes)
SELECT x, 'm' || x,
  CASE WHEN x % :test_every = 0 THEN 'qa+' || x || '@tokoku-internal.id' ELSE 'owner' || x || '@shop.id' END,
  'Owner ' || x, 'Toko ' || x,
  CASE abs(random()) % 10 WHEN 0 THEN 'business' WHEN 1 THEN 'pro' WHEN 2 THEN 'pro' WHEN 3 THEN 'free'
       WHEN 4 THEN 'free' WHEN 5 THEN 'free' ELSE 'basic' END,
  'fashion', 'Jakarta', 'id', 'Asia/Jakarta',
  CASE WHEN abs(random()) % 25 = 0 THEN 'paused' ELSE 'active' END,
  strftime('%Y-%m-%d %H:%M:%S', :now_epoch - abs(random()) % (730 * 86400), 'unixepoch') || '.000000',
  CASE WHEN abs(random()) % 6 = 0 THEN NULL
       ELSE strftime('%Y-%m-%d %H:%M:%S', :now_epoch - abs(random()) % (120 * 86400), 'unixepoch') || '.000000' END,
  CASE WHEN x % :test_every = 0
    THEN json_object('tier', 'bronze', 'products', abs(random()) % 400, 'test_account', json('true'))
    WHEN abs(random()) % 8 = 0
    THEN json_object('tier', CASE abs(random()) % 10 WHEN 0 THEN 'gold' WHEN 1 THEN 'silver' ELSE 'bronze' END,
                     'products', abs(random()) % 400, 'partner_programme', 'interested')
    ELSE json_object('tier', CASE abs(random()) % 10 WHEN 0 THEN 'gold' WHEN 1 THEN 'silver' ELSE 'bronze' END,
                     'products', abs(random()) % 400)
  END
FROM c
"""

SQLITE_ORDERS = f"""
WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < :slots - 1),
s AS (SELECT x, x * 2 / 25 + 1 AS m, abs(random()) AS r1, abs(random()) AS r2, abs(random()) AS r3 FROM c)
INSERT INTO orders (merchant_id, order_ref, amount, status, placed_at)
SELECT m, 'o' || x, 10000 + r3 % 500000,
  CASE WHEN r3 % 100 < 88 THEN 'paid' WHEN r3 % 100 < 96 THEN 'cancelled' ELSE 'refunded' END,
  strftime('%Y-%m-%d %H:%M:%S', :now_epoch - ({_OFFSET_DAYS}) * 86400 - r2 % 86400, 'unixepoch') || '.000000'
FROM s WHERE m % :never_sold != 0
"""

SQLITE_ACTIVITIES = """
WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < :slots - 1)
INSERT OR IGNORE INTO activities (merchant_id, kind, occurred_at)
SELECT x / 3 + 1,
  CASE abs(random()) % 3 WHEN 0 THEN 'login' WHEN 1 THEN 'product_added' ELSE 'promo_created' END,
  strftime('%Y-%m-%d %H:%M:%S', :now_epoch - abs(random()) % (180 * 86400), 'unixepoch') || '.000000'
FROM c
"""

PG_MERCHANTS = """
INSERT INTO merchants (id, external_id, email, name, store_name, plan, category, city,
                       locale, timezone, status, created_at, last_login_at, attributes)
SELECT x, 'm' || x,
  CASE WHEN x % :test_every = 0 THEN 'qa+' || x || '@tokoku-internal.id' ELSE 'owner' || x || '@shop.id' END,
  'Owner ' || x, 'Toko ' || x,
  (ARRAY['business','pro','pro','free','free','free','basic','basic','basic','basic'])[1 + floor(random() * 10)::int],
  'fashion', 'Jakarta', 'id', 'Asia/Jakarta',
  CASE WHEN random() < 0.04 THEN 'paused' ELSE 'active' END,
  date_trunc('second', CAST(:now AS timestamp) - random() * interval '730 days'),
  CASE WHEN random() < 0.17 THEN NULL
       ELSE date_trunc('second', CAST(:now AS timestamp) - random() * interval '120 days') END,
  CASE WHEN x % :test_every = 0
    THEN jsonb_build_object('tier', 'bronze', 'products', floor(random() * 400)::int, 'test_account', true)
    WHEN random() < 0.125
    THEN jsonb_build_object('tier', (ARRAY['gold','silver','bronze','bronze','bronze','bronze','bronze','bronze','bronze','bronze'])[1 + floor(random() * 10)::int],
                            'products', floor(random() * 400)::int, 'partner_programme', 'interested')
    ELSE jsonb_build_object('tier', (ARRAY['gold','silver','bronze','bronze','bronze','bronze','bronze','bronze','bronze','bronze'])[1 + floor(random() * 10)::int],
                            'products', floor(random() * 400)::int)
  END
FROM generate_series(1, :n) AS x
"""

PG_ORDERS = f"""
INSERT INTO orders (merchant_id, order_ref, amount, status, placed_at)
SELECT m, 'o' || x, 10000 + r3 % 500000,
  CASE WHEN r3 % 100 < 88 THEN 'paid' WHEN r3 % 100 < 96 THEN 'cancelled' ELSE 'refunded' END,
  CAST(:now AS timestamp) - (({_OFFSET_DAYS}) * 86400 + r2 % 86400) * interval '1 second'
FROM (SELECT x, x * 2 / 25 + 1 AS m, floor(random() * 1e9)::bigint AS r1,
             floor(random() * 1e9)::bigint AS r2, floor(random() * 1e9)::bigint AS r3
      FROM generate_series(0, :slots - 1) AS x) s
WHERE m % :never_sold != 0
"""

PG_ACTIVITIES = """
INSERT INTO activities (merchant_id, kind, occurred_at)
SELECT x / 3 + 1, (ARRAY['login','product_added','promo_created'])[1 + floor(random() * 3)::int],
  date_trunc('second', CAST(:now AS timestamp) - random() * interval '180 days')
FROM generate_series(0, :slots - 1) AS x
ON CONFLICT DO NOTHING
"""


def build(engine: sa.Engine, n: int) -> None:
    """Fill the tables with ``n`` merchants and ~10 orders each (80% of merchants sell)."""
    sqlite = engine.dialect.name == "sqlite"
    # 12.5 order slots per merchant (m = x * 2 / 25 + 1), and 1 merchant in 5 has none:
    # 10 orders per merchant on average.
    assert ORDERS_PER_MERCHANT * NEVER_SOLD_EVERY / (NEVER_SOLD_EVERY - 1) == 25 / 2
    params = {
        "n": n,
        "test_every": TEST_EVERY,
        "never_sold": NEVER_SOLD_EVERY,
        "now_epoch": int((NOW - datetime(1970, 1, 1)).total_seconds()),
        "now": NOW,
    }
    with engine.begin() as conn:
        for table in ("activities", "orders", "merchants"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    steps = [
        ("merchants", SQLITE_MERCHANTS if sqlite else PG_MERCHANTS, {}),
        ("orders", SQLITE_ORDERS if sqlite else PG_ORDERS, {"slots": n * 25 // 2}),
        ("activities", SQLITE_ACTIVITIES if sqlite else PG_ACTIVITIES, {"slots": n * 3}),
    ]
    for name, sql, extra in steps:
        started = time.perf_counter()
        with engine.begin() as conn:
            if sqlite:
                conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.execute(sa.text(sql), {**params, **extra})
        print(f"  built {name} in {time.perf_counter() - started:.1f} s", flush=True)
    # VACUUM too on PostgreSQL: fresh rows need the visibility map for index-only scans.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE" if sqlite else "VACUUM ANALYZE")


def row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("merchants", "orders", "activities")
        }


# --- hand-written SQL for the same questions -----------------------------------------------


def hand_written(dialect: str) -> dict[str, str]:
    if dialect == "sqlite":
        is_test = "json_extract(m.attributes, '$.test_account') = 1"
        products = "json_extract(m.attributes, '$.products')"
        text = "json_extract(m.attributes, '$.{}')"
        ratio = "CAST(cur - prev AS REAL) / prev"
    else:
        is_test = "m.attributes -> 'test_account' = 'true'::jsonb"
        products = "(m.attributes ->> 'products')::numeric"
        text = "m.attributes ->> '{}'"
        ratio = "(cur - prev)::float8 / prev"
    test_account = (
        f"(coalesce({is_test}, false) OR m.email LIKE '%@tokoku-internal.id' "
        "OR m.email LIKE '%@example-test.id')"
    )
    real = f"NOT {test_account}"

    def paid(low: str) -> str:
        return (
            "FROM orders o WHERE o.merchant_id = m.id AND o.status = 'paid' "
            f"AND o.placed_at >= :{low} AND o.placed_at <= :now"
        )

    return {
        "test-accounts": f"SELECT count(*) FROM merchants m WHERE {test_account}",
        "active-sellers": f"SELECT count(*) FROM merchants m WHERE {real} AND EXISTS (SELECT 1 {paid('d14')})",
        "new-not-selling": (
            "SELECT count(*) FROM merchants m WHERE m.status = 'active' AND m.created_at >= :d30 "
            f"AND m.created_at <= :now AND NOT EXISTS (SELECT 1 {paid('d30')}) AND {real}"
        ),
        "dormant-sellers": (
            f"SELECT count(*) FROM merchants m WHERE m.status = 'active' AND {real} "
            f"AND NOT EXISTS (SELECT 1 {paid('d30')}) AND EXISTS (SELECT 1 {paid('d180')})"
        ),
        "never-logged-in": (
            "SELECT count(*) FROM merchants m WHERE m.status = 'active' AND m.last_login_at IS NULL "
            f"AND m.created_at < :d3 AND {real}"
        ),
        "revenue-dropped": (
            "SELECT count(*) FROM merchants m JOIN ("
            "  SELECT merchant_id, count(*) AS n,"
            "    sum(CASE WHEN placed_at >= :d30 THEN amount ELSE 0 END) AS cur,"
            "    sum(CASE WHEN placed_at < :d30 THEN amount ELSE 0 END) AS prev"
            "  FROM orders WHERE status = 'paid' AND placed_at >= :d60 AND placed_at <= :now"
            "  GROUP BY merchant_id) r ON r.merchant_id = m.id "
            f"WHERE m.status = 'active' AND {real} AND r.n >= 3 AND r.prev > 0 AND {ratio} < -0.3"
        ),
        "high-potential": (
            "SELECT count(*) FROM merchants m WHERE m.status = 'active' "
            f"AND {products} >= 20 AND {real} "
            "AND NOT EXISTS (SELECT 1 FROM activities a WHERE a.merchant_id = m.id "
            "  AND a.kind = 'promo_created' AND a.occurred_at >= :d60 AND a.occurred_at <= :now) "
            f"AND ((SELECT coalesce(sum(o.amount), 0) {paid('d30')}) >= 5000000 OR "
            f"  (SELECT CASE WHEN prev > 0 THEN {ratio} END FROM ("
            "    SELECT coalesce(sum(CASE WHEN placed_at >= :d30 THEN amount ELSE 0 END), 0) AS cur,"
            "      coalesce(sum(CASE WHEN placed_at < :d30 THEN amount ELSE 0 END), 0) AS prev"
            "    FROM orders o WHERE o.merchant_id = m.id AND o.status = 'paid'"
            "      AND o.placed_at >= :d60 AND o.placed_at <= :now) t) >= 0.2)"
        ),
        "partner-candidates": (
            f"SELECT count(*) FROM merchants m WHERE m.status = 'active' AND {real} "
            f"AND (SELECT count(*) {paid('d90')}) >= 5 "
            f"AND ({text.format('partner_programme')} = 'interested' OR "
            f"  ({text.format('tier')} = 'gold' AND (SELECT sum(o.amount) {paid('d90')}) >= 10000000))"
        ),
    }


def hand_params(dialect: str) -> dict[str, object]:
    days = {"now": 0, "d3": 3, "d14": 14, "d30": 30, "d60": 60, "d90": 90, "d180": 180}
    values = {k: NOW - timedelta(days=d) for k, d in days.items()}
    if dialect == "sqlite":  # the text form SQLAlchemy stores
        return {k: v.strftime("%Y-%m-%d %H:%M:%S.%f") for k, v in values.items()}
    return values


# --- Python-side filtering (what is never done) ---------------------------------------------


def python_dormant_sellers(engine: sa.Engine) -> int:
    """dormant-sellers computed in Python from loaded rows (the slow way)."""
    d30, d180 = NOW - timedelta(days=30), NOW - timedelta(days=180)
    with engine.connect() as conn:
        people = conn.execute(
            sa.select(merchants.c.id, merchants.c.email, merchants.c.status, merchants.c.attributes)
        ).all()
        recent: dict[int, list[datetime]] = {}
        rows = conn.execute(
            sa.text(
                "SELECT merchant_id, placed_at FROM orders WHERE status = 'paid' "
                "AND placed_at >= :low AND placed_at <= :now"
            ).columns(sa.column("merchant_id", sa.Integer), sa.column("placed_at", sa.DateTime)),
            {
                "low": hand_params(engine.dialect.name)["d180"],
                "now": hand_params(engine.dialect.name)["now"],
            },
        )
        for merchant_id, placed_at in rows:
            recent.setdefault(merchant_id, []).append(placed_at)
    count = 0
    for merchant_id, email, status, attributes in people:
        if status != "active" or attributes.get("test_account") is True:
            continue
        if email.endswith(("@tokoku-internal.id", "@example-test.id")):
            continue
        times = recent.get(merchant_id, [])
        if any(d180 <= t <= NOW for t in times) and not any(d30 <= t <= NOW for t in times):
            count += 1
    return count


# --- running ---------------------------------------------------------------------------------


def timed(func, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - started)
    return best, result


def run(url: str, n: int, repeat: int, segments_dir: Path) -> bool:
    engine = make_engine(url)
    ensure_schema(engine)
    counts = row_counts(engine)
    if counts["merchants"] != n:
        print(f"Building {n:,} merchants in {engine.dialect.name} ...", flush=True)
        started = time.perf_counter()
        build(engine, n)
        print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
        counts = row_counts(engine)
    print(
        f"{engine.dialect.name}: {counts['merchants']:,} merchants, {counts['orders']:,} orders, "
        f"{counts['activities']:,} activities; now = {NOW.isoformat()}",
        flush=True,
    )
    segments = load_segments(segments_dir)
    queries = hand_written(engine.dialect.name)
    params = hand_params(engine.dialect.name)
    ok = True
    print(f"{'segment':<20} {'count':>9} {'ours s':>8} {'hand s':>8} {'ratio':>6}")
    for name in segments:
        ours_s, ours = timed(
            lambda name=name: count_segment(engine, segments, name, now=NOW), repeat
        )
        if name in queries:
            with engine.connect() as conn:
                hand_s, hand = timed(
                    lambda name=name: conn.execute(sa.text(queries[name]), params).scalar_one(),
                    repeat,
                )
            note = "" if hand == ours else f"  MISMATCH: hand-written counts {hand}"
            ok = ok and hand == ours
            print(
                f"{name:<20} {ours:>9,} {ours_s:>8.2f} {hand_s:>8.2f} {ours_s / hand_s:>6.2f}{note}",
                flush=True,
            )
        else:
            print(f"{name:<20} {ours:>9,} {ours_s:>8.2f}        -      -", flush=True)
    if "dormant-sellers" in segments:
        sql_s, sql_count = timed(
            lambda: count_segment(engine, segments, "dormant-sellers", now=NOW), 1
        )
        py_s, py_count = timed(lambda: python_dormant_sellers(engine), 1)
        ok = ok and py_count == sql_count
        print(
            f"Python-side filtering of dormant-sellers: {py_s:.2f} s vs {sql_s:.2f} s in the database "
            f"= {py_s / sql_s:.0f}x slower (counts {py_count} / {sql_count})"
        )
    engine.dispose()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=1_000_000)
    parser.add_argument(
        "--db", type=Path, default=None, help="SQLite file (default /tmp/campaign-bench-N.db)"
    )
    parser.add_argument(
        "--pg", default=None, help="also run on this PostgreSQL URL (its tables are replaced)"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL")
    parser.add_argument("--repeat", type=int, default=1, help="best of N timings")
    parser.add_argument("--segments", type=Path, default=REPO / "segments")
    args = parser.parse_args()
    ok = True
    if not args.no_sqlite:
        db = args.db or Path(f"/tmp/campaign-bench-{args.merchants}.db")
        ok = run(f"sqlite:///{db}", args.merchants, args.repeat, args.segments) and ok
    if args.pg:
        ok = run(args.pg, args.merchants, args.repeat, args.segments) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
