"""``campaign render``: one message of a campaign for one merchant, exactly as it would be sent."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.addresses import normalize_email
from engine.errors import NotFoundError, UsageError
from engine.messages import RenderedMessage, RenderFailure
from engine.models import merchants
from engine.preparation import prepare_campaign

SHOWN_HEADERS = (
    "From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Id",
)  # fmt: skip
_MAX_ID = 2**63 - 1  # the largest id either database can hold


@dataclass
class Preview:
    message: RenderedMessage
    template: str

    @property
    def headers(self) -> list[tuple[str, str]]:
        parsed = email.message_from_bytes(self.message.data, policy=email.policy.default)
        return [(name, str(parsed[name])) for name in SHOWN_HEADERS if parsed[name] is not None]

    @property
    def parts(self) -> list[str]:
        parsed = email.message_from_bytes(self.message.data, policy=email.policy.default)
        return [part.get_content_type() for part in parsed.iter_parts()]

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """The message as ``.eml`` and its HTML as ``.html`` in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.message.key)
        eml, html = out_dir / f"{stem}.eml", out_dir / f"{stem}.html"
        eml.write_bytes(self.message.data)
        html.write_text(self.message.html, encoding="utf-8")
        return eml, html


def find_merchant(conn: Connection, who: str) -> dict[str, Any]:
    """A merchant by id, email address or external id (``--merchant``); one sentence if none."""
    text = who.strip()
    if text.isdigit():
        if int(text) > _MAX_ID:
            raise NotFoundError(f"no merchant {who!r} in the database")
        where = merchants.c.id == int(text)
    else:
        try:
            where = merchants.c.email == normalize_email(text)
        except ValueError:
            where = merchants.c.external_id == text
        else:
            where = sa.or_(where, merchants.c.external_id == text)
    row = (
        conn.execute(sa.select(merchants).where(where).order_by(merchants.c.id).limit(1))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError(f"no merchant {who!r} in the database")
    return dict(row)


def render_preview(
    project, campaign: str, who: str, *, now: datetime, step: int | None = None
) -> Preview:
    """Render ``campaign`` (its ``step``, default 1) for merchant ``who`` (id or email)."""
    settings = project.settings
    plan = prepare_campaign(settings, campaign, now=now, step=step)
    with project.database().connect() as conn:
        merchant = find_merchant(conn, who)
        result = plan.builder.render_batch(
            conn, [merchant], now=now, template=plan.template, step=plan.step
        )[0]
    if isinstance(result, RenderFailure):
        # Header checks already name the merchant ("merchant 7: subject contains ..."): once is enough.
        reason = result.reason.removeprefix(f"merchant {result.merchant_id}: ")
        raise UsageError(f"merchant {result.merchant_id} ({result.email}): {reason}")
    return Preview(result, plan.template)
