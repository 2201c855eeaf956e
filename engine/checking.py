"""``campaign check``: every segment, campaign and template validated, each template rendered.

Each template is rendered for a merchant of each locale: a real one from the
database (from the segment of a campaign that uses it) when there is one, else a
sample merchant. ``check`` never creates a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.config import LOCALES
from engine.errors import CampaignError, ProblemList, UsageError

# Used when the database has no merchant of a locale (or there is no database yet).
SAMPLE_MERCHANTS: dict[str, dict[str, Any]] = {
    "id": {
        "id": 900001, "external_id": "sample-id", "email": "siti.rahma@contoh.id",
        "name": "Siti Rahmawati", "store_name": "Batik Sari Solo", "store_url": "https://batiksari.tokoku.id",
        "plan": "basic", "category": "fashion", "city": "Surakarta", "locale": "id",
        "timezone": "Asia/Jakarta", "status": "active", "created_at": None, "last_login_at": None,
        "attributes": {"tier": "silver", "payment_setup": True, "products": 42},
    },
    "en": {
        "id": 900002, "external_id": "sample-en", "email": "made.wijaya@example.id",
        "name": "Made Wijaya", "store_name": "Bali Craft Corner", "store_url": "https://balicraft.tokoku.id",
        "plan": "pro", "category": "handicraft", "city": "Denpasar", "locale": "en",
        "timezone": "Asia/Makassar", "status": "active", "created_at": None, "last_login_at": None,
        "attributes": {"tier": "gold", "payment_setup": True, "products": 120},
    },
}  # fmt: skip


def _sample_stats(now: datetime) -> dict[str, Any]:
    return {
        "revenue_30d": 4_350_000, "revenue_prev_30d": 7_250_000, "revenue_change_30d": -0.4,
        "orders_30d": 29, "orders_prev_30d": 48, "last_order_at": now - timedelta(days=9),
    }  # fmt: skip


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)  # one line each, with file and line
    warnings: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_project(project, *, now: datetime) -> CheckResult:
    """Every problem of the project and a one-line summary."""
    from engine.campaigns import Campaign, Step, load_campaigns
    from engine.messages import MessageBuilder, RenderFailure
    from engine.segments import load_segments
    from engine.templates import TemplateSet

    settings = project.settings
    folders = (settings.segments_dir, settings.campaigns_dir, settings.templates_dir)
    if not any(folder.is_dir() for folder in folders):
        raise UsageError(
            f"{settings.project_dir} is not a campaign project: it has no segments/, "
            "campaigns/ or templates/ folder (use --project DIR)"
        )
    result = CheckResult()
    problems = result.problems

    def collect(exc: CampaignError) -> None:
        if isinstance(exc, ProblemList):
            problems.extend(str(p) for p in exc.problems)
        else:
            problems.append(str(exc))

    segments = campaigns = None
    try:
        segments = load_segments(settings.segments_dir)
    except CampaignError as exc:
        collect(exc)
    if segments is not None:
        try:
            campaigns = load_campaigns(settings, segments)
        except CampaignError as exc:
            collect(exc)
    else:
        problems.append(f"{settings.campaigns_dir}: not checked, because the segments have errors")

    templates = TemplateSet(settings.templates_dir, settings.project.default_locale)
    names = templates.names()
    used_by: dict[str, Campaign] = {}
    for campaign in (campaigns or {}).values():
        wanted = (
            [campaign.template]
            if campaign.kind == "broadcast"
            else [s.template for s in campaign.steps]
        )
        for name in wanted:
            if name and not templates.files(name):
                problems.append(
                    f"{campaign.path}: template {name!r} does not exist in {templates.root}"
                )
            elif name:
                used_by.setdefault(name, campaign)

    engine = _database(project)
    if engine is not None and segments is not None:
        result.warnings.extend(_activity_warnings(engine, segments))
    rendered = 0
    for name in names:
        # A template no campaign uses is rendered as the step of a stand-in drip.
        campaign = used_by.get(name) or Campaign(
            name="check",
            path=Path("check"),
            kind="drip",
            topic="retention",
            segment="",
            sender="User Success <success@example.id>",
            steps=(Step(number=1, template=name, delay=timedelta(0), when=None),),
        )
        try:
            builder = MessageBuilder(settings, campaign, templates)
        except CampaignError as exc:
            collect(exc)
            continue
        # Each locale a merchant can have, so that every variant and every fallback is exercised.
        for locale in LOCALES:
            try:
                templates.get(name, locale)
            except CampaignError as exc:
                message = str(exc)
                if message not in problems:
                    problems.append(message)
                continue
            merchant, stats = _sample(
                engine, segments, campaign if name in used_by else None, locale, now
            )
            try:
                outcome = builder.render_one(merchant, stats, now=now, template=name, step=1)
            except CampaignError as exc:
                collect(exc)
                continue
            rendered += 1
            if isinstance(outcome, RenderFailure):
                problems.append(
                    f"{outcome.reason} (rendering for merchant {outcome.merchant_id}, locale {locale})"
                )
    result.summary = (
        f"OK: {len(segments or {})} segments, {len(campaigns or {})} campaigns, "
        f"{len(names)} templates ({rendered} renders for locales {', '.join(LOCALES)})."
    )
    return result


def _activity_warnings(engine, segments) -> list[str]:
    """Rules on an activity kind that no activity in the database has (they match nothing)."""
    from engine.segments import unknown_activity_kinds

    try:
        with engine.connect() as conn:
            return unknown_activity_kinds(conn, segments, list(segments))
    except sa.exc.SQLAlchemyError:
        return []


def _database(project):
    """The engine if a database with merchants is there; ``check`` never creates one."""
    url = project.settings.database_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        return None
    try:
        engine = project.engine
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("merchants"):
                return None
        return engine
    except sa.exc.SQLAlchemyError:
        return None


def _sample(
    engine, segments, campaign, locale: str, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real merchant of ``locale`` (from the campaign's segment when it has one), else a sample one."""
    if engine is not None:
        from engine.models import merchants
        from engine.segments import segment_condition
        from engine.stats import batch_stats

        try:
            query = sa.select(merchants).where(merchants.c.locale == locale)
            if campaign is not None and segments is not None and campaign.segment in segments:
                query = query.where(segment_condition(segments, campaign.segment, now=now))
            with engine.connect() as conn:
                row = conn.execute(query.order_by(merchants.c.id).limit(1)).mappings().first()
                if row is not None:
                    return dict(row), batch_stats(conn, [row["id"]], now=now)[row["id"]]
        except (sa.exc.SQLAlchemyError, CampaignError):
            pass
    return dict(SAMPLE_MERCHANTS[locale]), _sample_stats(now)
