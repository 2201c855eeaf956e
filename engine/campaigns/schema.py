"""The JSON Schema of campaign files, generated from the definitions the validator uses.

Written by ``campaign schema campaign`` (and shipped as
``engine/schemas/campaign.schema.json``), so YAML editors autocomplete keys,
topics, days and rules. The validator stays the authority: it also checks what a
schema cannot (templates and segments that exist, cron expressions, hours in order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.campaigns.files import HOURS_PATTERN, KEYS, STEP_KEYS, WINDOW_KEYS
from engine.campaigns.values import DAYS, KINDS, MAX_HOLDOUT
from engine.config import TOPICS
from engine.segments.schema import rule_schema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "campaign.schema.json"

_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DESCRIPTIONS = {
    "kind": "drip (timed steps) or broadcast (one message, by hand or on a schedule)",
    "topic": "the unsubscribe scope",
    "segment": "who enters (drip) or receives (broadcast): a segment file's name",
    "from": 'the sender, e.g. "User Success <success@example.id>"',
    "reply_to": "where replies go",
    "send_window": "days and hours in the merchant's own time zone",
    "holdout": "the control group, never emailed: a percentage such as 10%",
    "exit": "drip: leave the sequence when this rule matches (the goal)",
    "steps": "drip: each delay counts from the previous step (the first, from entry)",
    "reenter_after": "drip: a merchant who finished or exited may enter again after this long",
    "template": "broadcast: the template, e.g. promo/harbolnas-1212",
    "schedule": 'broadcast: a 5-field cron expression with day names, e.g. "0 9 * * mon"',
    "timezone": "broadcast: the IANA time zone of the schedule (default: the project's)",
    "track_clicks": "links go through the signed click redirect of campaign serve (true/false)",
}


def _duration() -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": r"^\s*[0-9]+\s*[hdw]\s*$",
        "description": "Nh, Nd or Nw, e.g. 3d",
    }


def _properties() -> dict[str, Any]:
    template = {"type": "string", "pattern": r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"}
    step = {
        "type": "object",
        "properties": {
            "template": template,
            "delay": {"$ref": "#/definitions/duration"},
            "when": {"$ref": "#/definitions/rule"},
        },
        "required": ["template"],
        "additionalProperties": False,
    }
    assert set(step["properties"]) == set(STEP_KEYS)
    window = {
        "type": "object",
        "properties": {
            "days": {
                "type": "array",
                "items": {"enum": [*DAYS, *_FULL_DAYS]},
                "minItems": 1,
            },
            "hours": {"type": "string", "pattern": HOURS_PATTERN, "examples": ["09:00-17:00"]},
        },
        "minProperties": 1,
        "additionalProperties": False,
    }
    assert set(window["properties"]) == set(WINDOW_KEYS)
    values: dict[str, Any] = {
        "kind": {"enum": list(KINDS)},
        "topic": {"enum": list(TOPICS)},
        "segment": {"type": "string"},
        "from": {"type": "string"},
        "reply_to": {"type": "string"},
        "send_window": window,
        "holdout": {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"},
                {"type": "number", "minimum": 0, "maximum": MAX_HOLDOUT},
            ]
        },
        "exit": {"$ref": "#/definitions/rule"},
        "steps": {"type": "array", "items": step, "minItems": 1},
        "reenter_after": {"$ref": "#/definitions/duration"},
        "template": template,
        "schedule": {"type": "string"},
        "timezone": {"type": "string", "examples": ["Asia/Jakarta", "Asia/Makassar"]},
        "track_clicks": {"type": "boolean"},
    }
    every_key = [k for keys in KEYS.values() for k in keys]
    assert sorted(values) == sorted(every_key)  # one definition per key the validator knows
    return {key: {**values[key], "description": _DESCRIPTIONS[key]} for key in every_key}


def campaign_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a ``campaigns/NAME.yaml`` file."""
    definitions = rule_schema()
    definitions["duration"] = _duration()

    def only(kind: str) -> dict[str, Any]:
        other = "broadcast" if kind == "drip" else "drip"
        required = ["steps"] if kind == "drip" else ["template"]
        return {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {
                "required": required,
                "not": {"anyOf": [{"required": [k]} for k in KEYS[other]]},
            },
        }

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "campaign",
        "description": "campaigns/NAME.yaml: a drip sequence or a broadcast",
        "type": "object",
        "properties": _properties(),
        "required": ["kind", "topic", "segment", "from"],
        "additionalProperties": False,
        "allOf": [only("drip"), only("broadcast")],
        "definitions": definitions,
    }


def schema_text() -> str:
    return json.dumps(campaign_schema(), indent=2, ensure_ascii=False) + "\n"
