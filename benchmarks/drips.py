"""Drip tick speed: one tick of the example drips without delivery, and a 30-day simulate.

    .venv/bin/python benchmarks/drips.py                          # 100,000 and 1,000,000 merchants, SQLite
    .venv/bin/python benchmarks/drips.py --sizes 100000
    .venv/bin/python benchmarks/drips.py --sizes 100000 --pg postgresql+psycopg://postgres@127.0.0.1:5432/bench

The merchants, orders and activities are generated in the database by
``benchmarks/segments.py`` (kept in /tmp/campaign-bench-N.db and copied for each
run, since a tick writes). For each size it times, on a fixed clock and without
delivery (enrol, exit, advance, enqueue):

- the first tick (a Sunday evening: everyone who matches enters, every send
  window is closed: the set-based statements only),
- a steady tick an hour later (nothing newly due),
- Monday 10:00 WIB, when the windows open and every step 1 is rendered and
  queued (rendering is most of it; renderer processes' statements are not counted;
  by default only up to 100,000 merchants: ``--render-up-to 1000000`` for the
  1,000,000 one, about 80 s),

with the number of SQL statements this process sent, which for the first and the
steady tick must be the same at every size (the Monday tick's grows with the
batches it renders); the baseline is counting the drips' segments once (``count_segment``),
measured in the same run. Then ``simulate`` of onboarding-welcome over 30 days.
Targets (SQLite): 100,000 merchants under 10 s, 1,000,000 under 60 s, simulate under 30 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from engine.clock import FixedClock  # noqa: E402
from engine.db import ensure_schema, make_engine  # noqa: E402
from engine.drips import tick  # noqa: E402
from engine.drips.simulate import simulate  # noqa: E402
from engine.project import Project, open_project  # noqa: E402
from engine.segments import count_segment, load_segments  # noqa: E402
from segments import NOW, build, row_counts  # noqa: E402

DRIPS = ("onboarding-welcome", "winback-dormant", "retention-revenue-drop")


class Counter:
    """SQL statements sent by this process's engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args) -> None:
        self.count += 1


def _project(url: str) -> Project:
    return open_project(REPO, env={"CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_SECRET_KEY": "bench"})


def _prepared(n: int, pg: str | None) -> str:
    if pg:
        engine = make_engine(pg)
        ensure_schema(engine)
        with engine.begin() as conn:
            for table in (
                "schedule_fires",
                "drip_enrolments",
                "attempts",
                "message_bodies",
                "messages",
            ):
                conn.execute(sa.text(f"DELETE FROM {table}"))
        if row_counts(engine)["merchants"] != n:
            build(engine, n)
        engine.dispose()
        return pg
    source = Path(f"/tmp/campaign-bench-{n}.db")
    engine = make_engine(f"sqlite:///{source}")
    ensure_schema(engine)
    if row_counts(engine)["merchants"] != n:
        print(f"Building {n:,} merchants ...", flush=True)
        build(engine, n)
    engine.dispose()
    copy = Path(f"/tmp/campaign-drips-{n}.db")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copy(source, copy)
    return f"sqlite:///{copy}"


def one_size(n: int, pg: str | None, due: bool) -> dict[str, float]:
    url = _prepared(n, pg)
    project = _project(url)
    engine = project.database()
    segments = load_segments(project.settings.segments_dir)
    started = time.perf_counter()
    for name in ("new-not-selling", "dormant-sellers", "revenue-dropped"):
        count_segment(engine, segments, name, now=NOW)
    baseline = time.perf_counter() - started
    counter = Counter(engine)
    figures: dict[str, float] = {"baseline": baseline}
    # NOW is a Sunday evening in Jakarta: the first tick enrols but every window is
    # closed; the steady tick an hour later has nothing new; Monday 10:00 WIB the
    # windows open and every step 1 is rendered and queued.
    moments = (
        ("first", NOW),
        ("steady", NOW + timedelta(hours=1)),
        ("monday", NOW + timedelta(hours=15)),
    )
    for label, at in moments if due else moments[:2]:
        counter.count = 0
        started = time.perf_counter()
        report = tick(project, clock=FixedClock(at), deliver=False)
        took = time.perf_counter() - started
        figures[label] = took
        figures[f"{label}_statements"] = counter.count
        print(
            f"  {label:<6} tick: {took:7.2f} s, {counter.count:5} statements, "
            f"enrolled {report.enrolled:,}, queued {report.queued:,}, "
            f"{took / baseline:5.1f}x the baseline ({baseline:.2f} s to count the drips' segments)",
            flush=True,
        )
    project.close()
    return figures


def simulate_size(n: int) -> float:
    project = _project(_prepared(n, None))
    started = time.perf_counter()
    result = simulate(project, "onboarding-welcome", days=30, now=NOW)
    took = time.perf_counter() - started
    print(
        f"  simulate onboarding-welcome 30 days: {took:.1f} s, {len(result.planned):,} planned "
        f"messages, {len(result.ticks)} ticks",
        flush=True,
    )
    project.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument(
        "--pg", default=None, help="also run on this PostgreSQL URL (its tables are replaced)"
    )
    parser.add_argument("--no-simulate", action="store_true")
    parser.add_argument(
        "--render-up-to",
        type=int,
        default=100_000,
        help="run the Monday tick (which renders every step 1) only up to this many merchants",
    )
    parser.add_argument("--only-simulate", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    steady = {}
    if args.only_simulate:
        simulate_size(min(sizes))
        return
    for backend in ["sqlite", *(["postgresql"] if args.pg else [])]:
        for n in sizes:
            print(f"{backend}: {n:,} merchants, now = {NOW.isoformat()}", flush=True)
            figures = one_size(
                n, args.pg if backend == "postgresql" else None, n <= args.render_up_to
            )
            steady[(backend, n)] = figures["steady_statements"]
    for backend in {b for b, _ in steady}:
        counts = {n: c for (b, n), c in steady.items() if b == backend}
        same = len(set(counts.values())) == 1
        print(
            f"{backend}: steady-tick statements per size {counts}: {'the same' if same else 'DIFFERENT'}"
        )
    if not args.no_simulate:
        simulate_size(min(sizes))


if __name__ == "__main__":
    main()
