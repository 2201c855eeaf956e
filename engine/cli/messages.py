"""Commands for messages: ``render`` (one message to look at) and ``check`` (the whole project)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from engine.cli.main import cli, load_project, now_option, parse_now, project_option
from engine.errors import CampaignError, ProblemList
from engine.times import utcnow

# Used by `check` when the database has no merchant of a locale (or no database yet).
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


def _find_merchant(conn, who: str) -> dict[str, Any]:
    from engine.addresses import normalize_email
    from engine.models import merchants

    if who.strip().isdigit():
        where = merchants.c.id == int(who)
    else:
        try:
            where = merchants.c.email == normalize_email(who)
        except ValueError:
            raise CampaignError(
                f"--merchant {who!r} is neither a merchant id nor an email address"
            ) from None
    row = (
        conn.execute(sa.select(merchants).where(where).order_by(merchants.c.id).limit(1))
        .mappings()
        .first()
    )
    if row is None:
        raise CampaignError(f"no merchant {who!r} in the database")
    return dict(row)


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


@cli.command()
@click.argument("campaign")
@click.option("--merchant", "who", required=True, help="The merchant's id or email address.")
@click.option("--step", type=click.IntRange(1), default=None, help="The drip step (default: 1).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the message as .eml and its HTML as .html in this folder.",
)
@now_option
@project_option
def render(
    campaign: str,
    who: str,
    step: int | None,
    out_dir: Path | None,
    now_text: str | None,
    project_dir: Path,
) -> None:
    """Render one message of CAMPAIGN for one merchant, exactly as it would be sent."""
    from engine.campaigns import load_campaign
    from engine.messages import MessageBuilder, RenderFailure
    from engine.segments import load_segments
    from engine.templates import TemplateSet

    project = load_project(project_dir)
    settings = project.settings
    now = parse_now(now_text) or utcnow()
    segments = load_segments(settings.segments_dir)
    loaded = load_campaign(settings, campaign, segments)
    template = loaded.template_for(step)
    builder = MessageBuilder(
        settings, loaded, TemplateSet(settings.templates_dir, settings.project.default_locale)
    )
    with project.database().connect() as conn:
        merchant = _find_merchant(conn, who)
        result = builder.render_batch(
            conn,
            [merchant],
            now=now,
            template=template,
            step=step if loaded.kind == "drip" else None,
        )[0]
    if isinstance(result, RenderFailure):
        # Header checks already name the merchant ("merchant 7: subject contains ..."): once is enough.
        reason = result.reason.removeprefix(f"merchant {result.merchant_id}: ")
        raise CampaignError(f"merchant {result.merchant_id} ({result.email}): {reason}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = _file_stem(result.key)
        eml, html = out_dir / f"{stem}.eml", out_dir / f"{stem}.html"
        eml.write_bytes(result.data)
        html.write_text(result.html, encoding="utf-8")
        click.echo(f"{eml}\n{html}")
        return
    import email
    import email.policy

    message = email.message_from_bytes(result.data, policy=email.policy.default)
    for name in (
        "From",
        "To",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Id",
    ):
        if message[name] is not None:
            click.echo(f"{name}: {message[name]}")
    click.echo(
        f"Template: {template} ({', '.join(p.get_content_type() for p in message.iter_parts())})"
    )
    click.echo("")
    click.echo(result.text)


@cli.command()
@now_option
@project_option
def check(now_text: str | None, project_dir: Path) -> None:
    """Validate every segment, campaign and template; render each template for sample merchants."""
    project = load_project(project_dir)
    now = parse_now(now_text) or utcnow()
    problems, summary = run_check(project, now=now)
    for problem in problems:
        click.echo(problem)
    if problems:
        click.echo(f"{len(problems)} problem(s) found.", err=True)
        raise click.exceptions.Exit(1)
    click.echo(summary)


def run_check(project, *, now: datetime) -> tuple[list[str], str]:
    """Every problem of the project (one line each, with file and line) and a one-line summary."""
    from engine.campaigns import Campaign, Step, load_campaigns
    from engine.messages import MessageBuilder, RenderFailure
    from engine.segments import load_segments
    from engine.templates import LOCALES, TemplateSet

    settings = project.settings
    problems: list[str] = []

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
    rendered = 0
    for name in names:
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
                result = builder.render_one(merchant, stats, now=now, template=name, step=1)
            except CampaignError as exc:
                collect(exc)
                continue
            rendered += 1
            if isinstance(result, RenderFailure):
                problems.append(
                    f"{result.reason} (rendering for merchant {result.merchant_id}, locale {locale})"
                )
    summary = (
        f"OK: {len(segments or {})} segments, {len(campaigns or {})} campaigns, "
        f"{len(names)} templates ({rendered} renders for locales {', '.join(LOCALES)})."
    )
    return problems, summary


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
        from engine.stats import batch_stats

        try:
            query = sa.select(merchants).where(merchants.c.locale == locale)
            if campaign is not None and segments is not None and campaign.segment in segments:
                from engine.segments import segment_condition

                query = query.where(segment_condition(segments, campaign.segment, now=now))
            with engine.connect() as conn:
                row = conn.execute(query.order_by(merchants.c.id).limit(1)).mappings().first()
                if row is not None:
                    return dict(row), batch_stats(conn, [row["id"]], now=now)[row["id"]]
        except (sa.exc.SQLAlchemyError, CampaignError):
            pass
    return dict(SAMPLE_MERCHANTS[locale]), _sample_stats(now)
