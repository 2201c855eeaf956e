"""`campaign report` speed: conversions and lift over a large outbox and order history.

    .venv/bin/python benchmarks/report.py                       # 1,000,000 merchants, 10,000,000 orders
    .venv/bin/python benchmarks/report.py --merchants 100000 --orders 1000000
    .venv/bin/python benchmarks/report.py --merchants 5000 --orders 50000 --keep /tmp/shop   # a demo project

Builds a project on SQLite (kept in ``--keep DIR`` when given, else a temporary
folder): a win-back drip of three steps with a 10% holdout, sent to every
merchant over five days, and a broadcast without holdout to half of them;
a year of orders, paid, cancelled and refunded, most from the tenth of the merchants
who sell every week, and one more order from 4% of the merchants written to
in the week after step 1 (the effect the report should find).
Everything is generated inside the database (``INSERT ... SELECT`` over a
recursive CTE) and the build time is printed.

Then it runs the real command in a fresh process, as a user would:
``campaign report --format json`` (target < 10 s) and ``campaign report --html``
(target < 20 s), prints the figures of the win-back's step 1, and, as the
baseline measured in the same run, the time of the outbox's message counts
alone (one GROUP BY: the report before conversions existed) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.db import ensure_schema, make_engine  # noqa: E402

T0 = "2026-11-02 02:00:00"  # step 1 starts going out (09:00 in Jakarta)
CAMPAIGN = Path(sys.executable).with_name("campaign")  # the console script of this venv

FILES = {
    "segments/everyone.yaml": "description: every merchant\nrules:\n  field: status\n  eq: active\n",
    "campaigns/winback-dormant.yaml": (
        "kind: drip\ntopic: retention\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\nholdout: 10%\nsteps:\n'
        "  - template: t/a\n    delay: 0d\n  - template: t/a\n    delay: 3d\n"
        "  - template: t/a\n    delay: 7d\n"
    ),
    "campaigns/promo-harbolnas-1212.yaml": (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: t/a\n'
    ),
    "templates/t/a.html": '---\nsubject: "Halo"\n---\n<p>Halo</p>\n',
}


def _at(seconds: str) -> str:
    """SQL for T0 + ``seconds`` in SQLAlchemy's SQLite text form (microseconds included)."""
    return f"strftime('%Y-%m-%d %H:%M:%S', '{T0}', ({seconds}) || ' seconds') || '.000000'"


MERCHANTS = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO merchants (id, external_id, email, locale, timezone, status, attributes)
SELECT x, 'm' || x, 'owner' || x || '@shop.id', 'id', 'Asia/Jakarta', 'active', '{}' FROM c
"""

# Step s of the drip: every merchant for step 1, 60% for step 2, 30% for step 3, sent over
# five days from T0 + delay; merchants with id % 10 = 0 are the holdout; 1 in 200 fails,
# 1 in 500 is deferred. The broadcast: odd ids, on day 8, no holdout.
DRIP = f"""
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO messages (key, campaign, step, run, topic, merchant_id, email, sender, state,
                      attempts, last_error, created_at, updated_at, sent_at)
SELECT 'winback-dormant:' || :step || ':' || x, 'winback-dormant', :step, NULL, 'retention', x,
  'owner' || x || '@shop.id', 'halo@tokoku.id',
  CASE WHEN x % 10 = 0 THEN 'holdout' WHEN x % 200 = 7 THEN 'failed'
       WHEN x % 500 = 3 THEN 'deferred' ELSE 'sent' END,
  CASE WHEN x % 10 = 0 THEN 0 ELSE 1 END,
  CASE WHEN x % 200 = 7 THEN CASE WHEN x % 400 = 7 THEN '550 5.1.1 recipient unknown'
                                   ELSE 'gave up after 6 attempts: 421 4.7.0 try again later' END
       WHEN x % 500 = 3 THEN '451 4.3.0 mailbox busy' END,
  {_at(":delay + (x * 86413) % 432000")}, {_at(":delay + (x * 86413) % 432000")},
  CASE WHEN x % 10 <> 0 AND x % 200 <> 7 AND x % 500 <> 3 THEN {_at(":delay + (x * 86413) % 432000")} END
FROM c WHERE x % 10 < :share
"""

BROADCAST = f"""
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO messages (key, campaign, step, run, topic, merchant_id, email, sender, state,
                      attempts, created_at, updated_at, sent_at)
SELECT 'promo-harbolnas-1212:manual:' || x, 'promo-harbolnas-1212', NULL, 'manual', 'promo', x,
  'owner' || x || '@shop.id', 'news@tokoku.id', 'sent', 1,
  {_at("691200 + x % 21600")}, {_at("691200 + x % 21600")}, {_at("691200 + x % 21600")}
FROM c WHERE x % 2 = 1
"""

# Orders over the year up to T0 + 35 days; 85% paid, the rest cancelled or refunded. Most
# come from the 10% of merchants who sell every week; the others order rarely (dormant).
ORDERS = f"""
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :orders),
r AS (SELECT x, abs(random()) AS r1, abs(random()) AS r2, abs(random()) AS r3 FROM c)
INSERT INTO orders (merchant_id, order_ref, amount, status, placed_at)
SELECT CASE WHEN r1 % 100 < 97 THEN 1 + r2 % max(1, :n / 10) ELSE 1 + r2 % :n END,
  'o' || x, 10000 + r3 % 490000,
  CASE r3 % 20 WHEN 0 THEN 'cancelled' WHEN 1 THEN 'refunded' ELSE 'paid' END,
  {_at("r1 / 100 % 31536000 - 28512000")}
FROM r
ORDER BY 1  -- by merchant: the (merchant_id, ...) indexes grow at their end, not at random
"""

# The effect of the emails: 4% of merchants written to in step 1 order again 1-6 days later.
EFFECT = f"""
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO orders (merchant_id, order_ref, amount, status, placed_at)
SELECT x, 'e' || x, 50000 + (x * 31) % 200000, 'paid', {_at("(x * 86413) % 432000 + 86400 + (x * 13) % 432000")}
FROM c WHERE x % 10 <> 0 AND x % 25 = 4
"""

ATTEMPTS = """
INSERT INTO attempts (message_id, at, smtp_code, enhanced_status, reply, outcome)
SELECT id, created_at, CAST(substr(last_error, instr(last_error, ' ') - 3, 3) AS INTEGER),
  CASE WHEN last_error LIKE '%5.1.1%' THEN '5.1.1' WHEN last_error LIKE '%4.7.0%' THEN '4.7.0' ELSE '4.3.0' END,
  last_error, CASE WHEN last_error LIKE '%5.1.1%' THEN 'bounced' ELSE 'deferred' END
FROM messages WHERE last_error IS NOT NULL
"""


def build(folder: Path, merchants: int, orders: int) -> float:
    """Write the project files and the database; returns the seconds it took."""
    for name, text in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    db = folder / "campaign.db"
    db.unlink(missing_ok=True)
    started = time.perf_counter()
    engine = make_engine(f"sqlite:///{db}")
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("PRAGMA synchronous = OFF"))
        # Index pages stay in memory while 10M rows go in (the default cache is 2 MB).
        conn.execute(sa.text("PRAGMA cache_size = -2000000"))
        conn.execute(sa.text(MERCHANTS), {"n": merchants})
        for step, delay, share in ((1, 0, 10), (2, 3 * 86400, 6), (3, 10 * 86400, 3)):
            conn.execute(
                sa.text(DRIP), {"n": merchants, "step": step, "delay": delay, "share": share}
            )
        conn.execute(sa.text(BROADCAST), {"n": merchants})
        conn.execute(sa.text(ORDERS), {"n": merchants, "orders": orders})
        conn.execute(sa.text(EFFECT), {"n": merchants})
        conn.execute(sa.text(ATTEMPTS))
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(folder: Path, *args: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``campaign report`` process, and what it printed."""
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{folder / 'campaign.db'}"}
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(
        [str(CAMPAIGN), "report", *args, "--project", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return time.perf_counter() - started, _children_cpu() - cpu, done.stdout


def baseline(folder: Path) -> tuple[float, float]:
    """The outbox's counts by campaign, step, run and state: what the report did before."""
    engine = make_engine(f"sqlite:///{folder / 'campaign.db'}")
    started, cpu = time.perf_counter(), time.process_time()
    with engine.connect() as conn:
        conn.execute(
            sa.text("SELECT campaign, step, run, state, count(*) FROM messages GROUP BY 1, 2, 3, 4")
        ).all()
    engine.dispose()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument(
        "--keep", type=Path, default=None, help="Build the project in this folder and keep it."
    )
    parser.add_argument("--reuse", action="store_true", help="Use the --keep folder as it is.")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="report-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if not args.reuse:
            seconds = build(folder, args.merchants, args.orders)
            print(f"built {args.merchants:,} merchants, {args.orders:,} orders in {seconds:.1f} s")
        base, base_cpu = baseline(folder)
        json_s, json_cpu, out = run(folder, "--format", "json")
        rows = json.loads(out)
        html = folder / "report.html"
        html_s, html_cpu, _ = run(folder, "--format", "json", "--html", str(html), "--locale", "en")
        step1 = next(r for r in rows if r["campaign"] == "winback-dormant" and r["step"] == 1)
        print(
            f"winback-dormant step 1: sent {step1['sent']:,}, holdout {step1['holdout']:,}, "
            f"conversions {step1['conversions']:,} ({step1['conversion_rate']:.2%}) against "
            f"{step1['holdout_conversions']:,} ({step1['holdout_conversion_rate']:.2%}), "
            f"lift {step1['lift'] * 100:+.2f} points (95% CI {step1['lift_ci_low'] * 100:+.2f} "
            f"to {step1['lift_ci_high'] * 100:+.2f}), revenue Rp{step1['revenue']:,}"
        )
        # CPU seconds as well: on a shared machine the wall clock also counts the others' work.
        print(f"baseline (message counts only, in process): {base:.2f} s, {base_cpu:.2f} s CPU")
        print(
            f"report --format json: {json_s:.2f} s, {json_cpu:.2f} s CPU (target < 10 s), "
            f"{json_s / base:.1f}x the baseline"
        )
        print(
            f"report --html: {html_s:.2f} s, {html_cpu:.2f} s CPU (target < 20 s), "
            f"{html.stat().st_size / 1024:.0f} KB, {html_s / base:.1f}x the baseline"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
