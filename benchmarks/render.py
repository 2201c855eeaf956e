"""Render complete MIME messages for demo merchants and compare with bare Jinja2 rendering.

    .venv/bin/python benchmarks/render.py [--merchants 20000] [--project .]

Loads the demo data (engine.demo) into a temporary SQLite database, then, on one
core, for every merchant: the batch's stats query (one per batch of 100), the
sandboxed render of subject, HTML (CSS inlined once per template beforehand) and
text part, header checks, the signed unsubscribe link and the MIME bytes. The
merchants take turns over the example templates.

Baseline, in the same run: bare Jinja2 (a plain ``jinja2.Environment``, no sandbox,
no inlining, no text part, no MIME) rendering the same template files for the same
merchants and contexts. Targets (issue 4): at least 1,000 messages/s, and at most
4 times the bare-render time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import jinja2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.campaigns import Campaign, Step  # noqa: E402
from engine.config import load_settings  # noqa: E402
from engine.db import ensure_schema, make_engine  # noqa: E402
from engine.demo import load_demo  # noqa: E402
from engine.messages import MessageBuilder, RenderedMessage  # noqa: E402
from engine.models import merchants  # noqa: E402
from engine.stats import batch_stats  # noqa: E402
from engine.templates import TemplateSet, _Loader, _make_env  # noqa: E402
from engine.times import utcnow  # noqa: E402

BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--merchants", type=int, default=20_000)
    parser.add_argument("--project", type=Path, default=REPO)
    parser.add_argument(
        "--database", type=Path, default=None,
        help="Keep the demo SQLite database in this file and reuse it on the next run.",
    )  # fmt: skip
    args = parser.parse_args()

    import sqlalchemy as sa

    with tempfile.TemporaryDirectory() as tmp:
        path = args.database or Path(tmp) / "bench.db"
        engine = make_engine(f"sqlite:///{path}")
        ensure_schema(engine)
        now = utcnow().replace(microsecond=0)
        with engine.connect() as conn:
            present = conn.execute(sa.select(sa.func.count()).select_from(merchants)).scalar()
        if present != args.merchants:
            started = time.perf_counter()
            load_demo(engine, merchants_count=args.merchants, now=now)
            print(
                f"demo data: {args.merchants:,} merchants loaded in {time.perf_counter() - started:.1f} s"
            )
        with engine.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(sa.select(merchants).order_by(merchants.c.id)).mappings()
            ]

        settings = load_settings(args.project, env={"CAMPAIGN_SECRET_KEY": "benchmark-key"})
        templates = TemplateSet(settings.templates_dir, settings.project.default_locale)
        names = templates.names()
        if not names:
            sys.exit(f"no templates in {settings.templates_dir}")
        campaign = Campaign(
            name="benchmark", path=Path("benchmark.yaml"), kind="drip", topic="retention",
            segment="all", sender="User Success <success@tokoku.id>", reply_to="success@tokoku.id",
            steps=tuple(Step(i + 1, n, timedelta(0), None) for i, n in enumerate(names)),
        )  # fmt: skip
        builder = MessageBuilder(settings, campaign, templates)

        started = time.perf_counter()
        variants = templates.variants()
        for name, locale in variants:
            templates.get(name, locale or settings.project.default_locale)
        prepare = time.perf_counter() - started
        print(f"prepare (front matter, flatten, CSS inlined once, text template): "
              f"{len(variants)} template files in {prepare * 1000:.0f} ms")  # fmt: skip

        by_template: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_template[names[row["id"] % len(names)]].append(row)

        # The baseline: bare Jinja2 over the same files (front matter stripped the same way).
        bare_env = jinja2.Environment(
            loader=_Loader(str(templates.root)), autoescape=True, undefined=jinja2.StrictUndefined
        )
        bare_env.filters.update(_make_env(templates.root, True).filters)

        # Both are timed batch by batch, interleaved, so that other load on the
        # machine falls on both alike.
        results = []
        full = bare = stats_time = 0.0
        with engine.connect() as conn:
            for name, group in by_template.items():
                for offset in range(0, len(group), BATCH):
                    batch = group[offset : offset + BATCH]
                    started = time.perf_counter()
                    results.extend(
                        builder.render_batch(conn, batch, now=now, template=name, step=1)
                    )
                    full += time.perf_counter() - started
                    started = time.perf_counter()
                    stats = batch_stats(conn, [r["id"] for r in batch], now=now)
                    stats_time += time.perf_counter() - started  # the same query, timed apart
                    jobs = []
                    for row in batch:
                        prepared = templates.get(name, row["locale"])
                        context = {
                            "merchant": row, "stats": stats[row["id"]],
                            "campaign": {"name": campaign.name, "topic": campaign.topic}, "step": 1,
                            "unsubscribe_url": "https://crm.example.id/u/x", "now": now,
                            "locale": prepared.locale or row["locale"], "subject": "", "preheader": "",
                        }  # fmt: skip
                        jobs.append((bare_env.get_template(prepared.relative), context))
                    started = time.perf_counter()
                    for template, context in jobs:
                        template.render(context)
                    bare += time.perf_counter() - started
        ok = sum(isinstance(r, RenderedMessage) for r in results)
        failed = [r for r in results if not isinstance(r, RenderedMessage)]
        size = sum(len(r.data) for r in results if isinstance(r, RenderedMessage))

    count = len(results)
    print(f"templates: {', '.join(names)}")
    print(f"complete messages: {count:,} ({ok:,} rendered, {len(failed)} failures) in {full:.2f} s "
          f"= {count / full:,.0f} messages/s, {full / count * 1000:.3f} ms each, "
          f"average {size / max(ok, 1) / 1024:.1f} KiB")  # fmt: skip
    print(
        f"  of which the stats queries (one per batch of {BATCH}): {stats_time / count * 1000:.3f} ms per message"
    )
    print(
        f"baseline, bare Jinja2 HTML render: {count / bare:,.0f} renders/s, {bare / count * 1000:.3f} ms each"
    )
    ratio = full / bare
    print(f"ratio full / bare: {ratio:.2f} (target <= 4); "
          f"throughput target >= 1,000 messages/s: {'met' if count / full >= 1000 else 'NOT met'}")  # fmt: skip
    for failure in failed[:5]:
        print(f"  failure: merchant {failure.merchant_id}: {failure.reason}")


if __name__ == "__main__":
    main()
