"""Import speed: `campaign import merchants` against a plain sqlite3 executemany.

Generates CSV files of 100,000 and 1,000,000 merchants, imports each with the real
command (a subprocess, so peak memory is its own) into a fresh SQLite database,
and in the same run inserts the same rows with plain `sqlite3.executemany` (no
validation, no upsert) into a table of the same shape. Prints rows/s, the ratio
(target: at most 3x), the command's CPU seconds (both its processes: steadier than
the wall clock on a busy machine) and its peak memory (flat but for the keys kept to
count a repeated key once, about 130 bytes a merchant). The command's
fixed start-up (a one-row import: interpreter, SQLAlchemy, the schema check) is
printed too: it is a quarter of the time at 100,000 rows and noise at 1,000,000.

    python benchmarks/import_merchants.py [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CITIES = [("Jakarta", "Asia/Jakarta"), ("Denpasar", "Asia/Makassar"), ("Jayapura", "Asia/Jayapura")]
HEADER = [
    "external_id",
    "email",
    "name",
    "store_name",
    "plan",
    "category",
    "city",
    "locale",
    "timezone",
    "created_at",
    "last_login_at",
    "attributes",
]


def write_csv(path: Path, count: int) -> None:
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(count):
            city, zone = CITIES[i % 3]
            writer.writerow(
                [
                    f"m{i:07d}",
                    f"owner{i}@toko{i}.id",
                    f"Pemilik {i}",
                    f"Toko {i}",
                    rng.choice(["free", "basic", "pro"]),
                    rng.choice(["fashion", "food", "beauty"]),
                    city,
                    "id" if i % 7 else "en",
                    zone,
                    f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00+07:00",
                    f"2026-11-{1 + i % 28:02d}T08:00:00Z",
                    json.dumps({"tier": rng.choice(["gold", "silver"]), "products": i % 50}),
                ]
            )


def plain_executemany(csv_path: Path, db_path: Path) -> float:
    """The baseline: read the same CSV and insert it with sqlite3, nothing else."""
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE merchants (id INTEGER PRIMARY KEY, external_id TEXT UNIQUE NOT NULL, "
        "email TEXT NOT NULL, name TEXT, store_name TEXT, plan TEXT, category TEXT, city TEXT, "
        "locale TEXT, timezone TEXT, created_at TEXT, last_login_at TEXT, attributes TEXT)"
    )
    conn.execute("CREATE INDEX ix_merchants_email ON merchants (email)")
    start = time.perf_counter()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        placeholders = ",".join("?" * len(HEADER))
        with conn:
            batch = []
            for row in reader:
                batch.append(row)
                if len(batch) == 5000:
                    conn.executemany(
                        f"INSERT INTO merchants ({','.join(HEADER)}) VALUES ({placeholders})", batch
                    )
                    batch = []
            if batch:
                conn.executemany(
                    f"INSERT INTO merchants ({','.join(HEADER)}) VALUES ({placeholders})", batch
                )
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def campaign_import(csv_path: Path, project: Path) -> tuple[float, float, float]:
    """Run the real command; returns (seconds, peak MiB of the child, its CPU seconds)."""
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{project / 'campaign.db'}"}
    exe = Path(sys.executable).with_name("campaign")
    subprocess.run(
        [str(exe), "db", "upgrade", "--project", str(project)],
        env=env,
        check=True,
        capture_output=True,
    )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    done = subprocess.run(
        [str(exe), "import", "merchants", str(csv_path), "--project", str(project)],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"import failed: {done.stderr}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    return elapsed, max(usage.ru_maxrss, before) / 1024, cpu


def start_up_seconds(tmp_path: Path) -> float:
    """The command's fixed cost (interpreter, SQLAlchemy, schema check): a one-row file."""
    tmp_path.mkdir()
    one = tmp_path / "one.csv"
    write_csv(one, 1)
    return campaign_import(one, tmp_path)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    print(
        f"{'rows':>9}  {'campaign import':>16}  {'plain executemany':>18}  {'ratio':>6}  "
        f"{'cpu s':>6}  {'peak MiB':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            csv_path = tmp_path / "merchants.csv"
            write_csv(csv_path, size)
            base = plain_executemany(csv_path, tmp_path / "plain.db")
            ours, peak, cpu = campaign_import(csv_path, tmp_path)
            fixed = start_up_seconds(tmp_path / "start-up")
            print(
                f"{size:>9}  {size / ours:>11,.0f} r/s  {size / base:>13,.0f} r/s  "
                f"{ours / base:>5.2f}x  {cpu:>6.1f}  {peak:>8.0f}   ({ours:.1f} s vs {base:.1f} s; "
                f"of the {ours:.1f} s, {fixed:.1f} s is the command's start-up)"
            )


if __name__ == "__main__":
    main()
