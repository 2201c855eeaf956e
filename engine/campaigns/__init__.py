"""Campaign files (``campaigns/NAME.yaml``): loaded, validated and turned into ``Campaign`` values.

Every file is checked before anything runs, and every mistake in every file is
reported together (a ``ProblemList`` of ``CampaignFileError``), each naming the
file and line. Rules inside a campaign (a drip's ``exit`` and a step's ``when``)
use the segment rule language and are parsed by ``engine.segments.parse_rule``.
The values live in ``values``, the reading of files in ``files``, the JSON Schema
for editors in ``schema``.
"""

from engine.campaigns.files import campaign_files, load_campaign, load_campaigns
from engine.campaigns.values import (
    DAYS,
    KINDS,
    MAX_HOLDOUT,
    Campaign,
    SendWindow,
    Step,
    check_cron,
    fire_times,
    in_holdout,
)
from engine.config import TOPICS  # the topics campaigns may name

__all__ = [
    "DAYS",
    "KINDS",
    "MAX_HOLDOUT",
    "TOPICS",
    "Campaign",
    "SendWindow",
    "Step",
    "campaign_files",
    "check_cron",
    "fire_times",
    "in_holdout",
    "load_campaign",
    "load_campaigns",
]
