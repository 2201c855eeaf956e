"""End-to-end send throughput against the plain smtplib loop, to the same local sink.

    .venv/bin/python benchmarks/send.py [--count 20000] [--connections 4] [--rounds 3] [--database URL]

1. builds a project in a temporary folder: the example templates, one segment
   (every active merchant) and one broadcast using ``promo/harbolnas-1212``;
2. loads ``--count`` demo merchants with their orders and activities
   (``engine.demo``), all active, into SQLite (default) or ``--database``;
3. times ``send_campaign`` end to end — segment query, skips, stats, render,
   MIME, outbox writes, claims, SMTP over K connections — to a fast SMTP sink
   running in its own process (``benchmarks/smtp_baseline.py``);
4. times the plain smtplib loop sending the same number of pre-built messages
   over the same K connections to a fresh sink, and prints both and the ratios;
5. repeats 3-4 ``--rounds`` times (the outbox emptied in between) and reports the
   medians: on a shared two-core machine one round varies by 20% or more.

Targets (issue 5): end to end at least half the smtplib throughput with the
same connections, and at least 10 times a mail-merge tool's 65-130 messages/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import sqlalchemy as sa  # noqa: E402
from smtp_baseline import build_messages, smtplib_baseline, start_sink  # noqa: E402

from engine.config import parse_smtp_url  # noqa: E402
from engine.demo import load_demo  # noqa: E402
from engine.models import (  # noqa: E402
    attempts,
    campaign_runs,
    merchants,
    message_bodies,
    messages,
)
from engine.project import open_project  # noqa: E402
from engine.sending import send_campaign  # noqa: E402
from engine.times import utcnow  # noqa: E402

MAIL_MERGE = (65, 130)  # messages/s of a popular mail-merge command-line tool (issue 5)

SEGMENT = "description: every active merchant\nrules:\n  field: status\n  eq: active\n"
CAMPAIGN = """kind: broadcast
topic: promo
segment: everyone
from: "Tokoku Seller <kampanye@tokoku.id>"
reply_to: success@tokoku.id
template: promo/harbolnas-1212
"""
TOML = """[delivery]
connections = {connections}
rate = "1000000/s"
batch_size = 500

[limits]
frequency_cap = "off"
"""


def build_project(folder: Path, connections: int) -> None:
    shutil.copytree(REPO / "templates", folder / "templates")
    (folder / "segments").mkdir()
    (folder / "segments" / "everyone.yaml").write_text(SEGMENT)
    (folder / "campaigns").mkdir()
    (folder / "campaigns" / "bench.yaml").write_text(CAMPAIGN)
    (folder / "campaign.toml").write_text(TOML.format(connections=connections))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--database", help="a database URL (default: SQLite in a temporary folder)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of (end to end, baseline) measured in turn; the medians are reported",
    )
    parser.add_argument(
        "--render-workers",
        type=int,
        default=None,
        help="child processes that render (default: automatic; 0: render in the sending process)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="campaign-bench-") as tmp:
        folder = Path(tmp)
        build_project(folder, args.connections)
        env = {
            "CAMPAIGN_DATABASE_URL": args.database or f"sqlite:///{folder / 'bench.db'}",
            "CAMPAIGN_SECRET_KEY": "benchmark-secret",
        }
        project = open_project(folder, env=env)
        engine = project.database()
        started = time.perf_counter()
        now = utcnow().replace(microsecond=0)
        load_demo(engine, merchants_count=args.count, seed=7, now=now)
        with engine.begin() as conn:
            conn.execute(merchants.update().values(status="active"))
        print(f"demo data: {args.count} merchants in {time.perf_counter() - started:.1f}s")
        # Send as `campaign send` would, from a process that did not just load the
        # data: the database at rest (closing checkpoints SQLite's WAL) and none
        # of the loader's objects left for the garbage collector to walk.
        project.close()
        gc.collect()
        project = open_project(folder, env=env)
        engine = project.database()

        rounds = []
        built: list[tuple[str, str, bytes]] = []
        size = 0.0
        for number in range(1, args.rounds + 1):
            if number > 1:
                _empty_outbox(engine)
                project.close()  # at rest again, as before the first round
                gc.collect()
                project = open_project(folder, env=env)
                engine = project.database()
            end_to_end = _send_once(project, args, now)
            if not built:
                size, built = _built_messages(engine)
            with start_sink() as sink:
                same = smtplib_baseline(sink.host, sink.port, built, args.connections)
                sink.stop()
            with start_sink() as sink:
                synthetic = smtplib_baseline(
                    sink.host, sink.port, build_messages(args.count), args.connections
                )
                sink.stop()
            rounds.append((end_to_end, same.per_second, synthetic.per_second))
            print(
                f"round {number}: end to end {end_to_end:,.0f}/s; plain smtplib, the same "
                f"{size:,.0f}-byte messages pre-built: {same.per_second:,.0f}/s "
                f"(ratio {end_to_end / same.per_second:.2f}); synthetic ~5 KB messages: "
                f"{synthetic.per_second:,.0f}/s (ratio {end_to_end / synthetic.per_second:.2f})"
            )
        project.close()

    ours = statistics.median(r[0] for r in rounds)
    print(
        f"median of {len(rounds)} round(s), {args.count} messages over {args.connections} "
        f"connection(s): end to end (segment, render, MIME, outbox, SMTP) {ours:,.0f}/s"
    )
    print(
        "ratio end to end / smtplib (same messages): "
        f"{statistics.median(r[0] / r[1] for r in rounds):.2f}, (5 KB messages): "
        f"{statistics.median(r[0] / r[2] for r in rounds):.2f} (target >= 0.5)"
    )
    low, high = MAIL_MERGE
    print(
        f"ratio to a mail-merge tool ({low}-{high}/s): {ours / high:.1f}x-{ours / low:.1f}x "
        "(target >= 10x)"
    )


def _send_once(project, args, now) -> float:
    """``send_campaign`` end to end into a fresh sink; messages per second."""
    with start_sink() as sink:
        project.settings = dataclasses.replace(project.settings, smtp=parse_smtp_url(sink.url))
        started = time.perf_counter()
        report = send_campaign(project, "bench", now=now, render_workers=args.render_workers)
        seconds = time.perf_counter() - started
        accepted = sink.stop()
    sent = report.states.get("sent", 0)
    if sent != args.count or accepted != sent:
        print(f"warning: sent {sent}, sink accepted {accepted}, states {report.states}")
    return sent / seconds


def _built_messages(engine) -> tuple[float, list[tuple[str, str, bytes]]]:
    """The very messages the pipeline built (and their mean size), for the baseline."""
    with engine.connect() as conn:
        size = conn.execute(sa.select(sa.func.avg(sa.func.length(message_bodies.c.data)))).scalar()
        built = [
            ("kampanye@tokoku.id", email, bytes(data))
            for email, data in conn.execute(
                sa.select(messages.c.email, message_bodies.c.data).join(
                    message_bodies, message_bodies.c.message_id == messages.c.id
                )
            )
        ]
    return float(size or 0), built


def _empty_outbox(engine) -> None:
    """Forget the previous round's messages, so the next round sends them all again."""
    with engine.begin() as conn:
        for table in (attempts, message_bodies, messages, campaign_runs):
            conn.execute(table.delete())


if __name__ == "__main__":
    main()
