"""Preparing a campaign for sending, rendering or checking: its file, segment, rules and builder.

``send``, ``render`` and ``check`` (and the drip engine) all start here, so that a
campaign is read, validated and turned into SQL conditions and a message builder
in one way only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import current_revision, head_revision
from engine.errors import DeliveryError, UsageError
from engine.send_report import MANUAL_RUN

if TYPE_CHECKING:
    from engine.campaigns import Campaign
    from engine.config import Settings
    from engine.messages import MessageBuilder


@dataclass
class PreparedCampaign:
    """Everything fixed before the first batch: campaign, step or run, rules, builder."""

    campaign: Campaign
    step: int | None
    run: str | None
    template: str
    condition: sa.ColumnElement[bool]  # the audience: the campaign's segment
    builder: MessageBuilder
    # Drip rules checked per member, so that those they leave out are counted:
    exit: sa.ColumnElement[bool] | None = None
    when: sa.ColumnElement[bool] | None = None
    cycle: int = 1  # a drip's entry number (reenter_after): its messages have keys of their own
    # Keys of this run/step still waiting in the outbox when the send began: the
    # delivery pass resumes them; the audience loop neither renders nor skips them.
    resumed: frozenset[str] = field(default_factory=frozenset)

    @property
    def sender(self) -> str:
        """The envelope sender (MAIL FROM): ``from:`` without the name."""
        return self.builder.sender


def prepare_campaign(
    settings: Settings,
    name: str,
    *,
    now: datetime,
    run: str | None = None,
    step: int | None = None,
    sending: bool = False,
    cycle: int = 1,
) -> PreparedCampaign:
    """Load and check campaign ``name`` for one step (drip) or run (broadcast) at ``now``."""
    from engine.campaigns import load_campaign
    from engine.messages import MessageBuilder
    from engine.segments import load_segments, rule_condition, segment_condition
    from engine.templates import shared_template_set

    segments = load_segments(settings.segments_dir)
    campaign = load_campaign(settings, name, segments)
    condition = segment_condition(segments, campaign.segment, now=now)
    exit_rule = when_rule = None
    if campaign.kind == "broadcast":
        if step not in (None, 1):
            raise UsageError(f"campaign {name!r} is a broadcast and has no step {step}")
        step_number, run_label = None, run or MANUAL_RUN
    else:
        if run is not None:
            raise UsageError(f"campaign {name!r} is a drip: --run is for broadcasts")
        step_number, run_label = step or 1, None
        if campaign.exit is not None:
            exit_rule = rule_condition(campaign.exit, now=now, segments=segments)
        when = campaign.step(step_number).when
        if when is not None:
            when_rule = rule_condition(when, now=now, segments=segments)
    templates = shared_template_set(settings.templates_dir, settings.project.default_locale)
    builder = MessageBuilder(settings, campaign, templates, sending=sending, cycle=cycle)
    return PreparedCampaign(
        campaign,
        step_number,
        run_label,
        campaign.template_for(step_number),
        condition,
        builder,
        exit=exit_rule,
        when=when_rule,
        cycle=cycle,
    )


def check_database(engine: Engine) -> None:
    """A dry run must not create or migrate anything: the schema has to be there already."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not Path(database).exists():
            raise DeliveryError(
                f"no database at {database}: run `campaign db upgrade` or `campaign demo` first"
            )
    if current_revision(engine) != head_revision():
        raise DeliveryError(
            "the database schema is not up to date: run `campaign db upgrade` first"
        )
