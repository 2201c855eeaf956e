"""The JSON Schema of segment files, generated from the vocabulary the validator uses.

Shipped as ``engine/schemas/segment.schema.json`` and written by ``campaign schema
segment``, so YAML editors autocomplete fields, metrics and operators.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.segments.rules import (
    FIELD_TYPES,
    GROUPS,
    JSON,
    METRICS,
    NUMBER,
    OPERATORS,
    OPERATORS_BY_TYPE,
    TEXT,
    TIMESTAMP,
    WINDOW_UNITS,
)

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "segment.schema.json"

_DURATION = {
    "type": "string",
    "pattern": rf"^\s*[0-9]+\s*[{WINDOW_UNITS}]\s*$",
    "description": "a duration: Nh, Nd or Nw (e.g. 30d)",
}
_WHEN = {
    "anyOf": [
        {"$ref": "#/definitions/duration"},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
    ],
    "description": "a duration ago (14d) or an ISO date (2025-01-31)",
}
_SCALAR = {"type": ["string", "number", "boolean"]}


def _value_schema(kind: str, op: str) -> dict[str, Any]:
    if op == "is_null":
        return {"type": "boolean"}
    if op in ("before", "after"):
        return {"$ref": "#/definitions/when"}
    if op == "within":
        return {"$ref": "#/definitions/duration"}
    if op == "between":
        return {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    if op == "contains":
        return {"type": "string"}
    if op in ("lt", "lte", "gt", "gte"):
        return {"type": "number"}
    item = {TEXT: {"type": "string"}, NUMBER: {"type": "number"}}.get(kind, _SCALAR)
    if op in ("in", "not_in"):
        return {"type": "array", "items": item, "minItems": 1}
    return dict(item)


def _operators(kind: str) -> dict[str, Any]:
    return {
        op: {**_value_schema(kind, op), "description": OPERATORS[op]}
        for op in OPERATORS_BY_TYPE[kind]
    }


def _field_leaf(kind: str) -> dict[str, Any]:
    if kind == JSON:
        name = {
            "type": "string",
            "pattern": r"^attributes\.[A-Za-z0-9_]+$",
            "description": "a key of the merchant's attributes, compared as a JSON value",
        }
    else:
        name = {"enum": [f for f, k in FIELD_TYPES.items() if k == kind]}
    return {
        "type": "object",
        "title": f"{kind} field",
        "properties": {"field": name, **_operators(kind)},
        "required": ["field"],
        "minProperties": 2,
        "additionalProperties": False,
    }


def _metric_leaf(metric: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "metric": {"const": metric, "description": METRICS[metric]},
        "window": {"$ref": "#/definitions/duration"},
    }
    required = ["metric", "window"]
    if metric == "activity":
        properties["kind"] = {
            "type": "string",
            "description": "the activity kind (login, product_added, promo_created, ...)",
        }
        required.append("kind")
    properties.update(_operators(NUMBER))
    return {
        "type": "object",
        "title": f"metric {metric}",
        "properties": properties,
        "required": required,
        "minProperties": len(required) + 1,
        "additionalProperties": False,
    }


def rule_schema() -> dict[str, Any]:
    """The ``definitions`` of a rule node (for embedding, e.g. a campaign's ``exit:``)."""
    group_items = {"type": "array", "items": {"$ref": "#/definitions/rule"}, "minItems": 1}
    groups = {
        "all": {"properties": {"all": {**group_items, "description": "every rule matches"}}},
        "any": {"properties": {"any": {**group_items, "description": "at least one rule matches"}}},
        "not": {
            "properties": {
                "not": {"$ref": "#/definitions/rule", "description": "the rule does not match"}
            }
        },
    }
    definitions: dict[str, Any] = {"duration": _DURATION, "when": _WHEN}
    variants = []
    for name in GROUPS:
        definitions[f"group_{name}"] = {
            "type": "object",
            **groups[name],
            "required": [name],
            "additionalProperties": False,
        }
        variants.append({"$ref": f"#/definitions/group_{name}"})
    for kind in (TEXT, NUMBER, TIMESTAMP, JSON):
        definitions[f"field_{kind}"] = _field_leaf(kind)
        variants.append({"$ref": f"#/definitions/field_{kind}"})
    for metric in METRICS:
        definitions[f"metric_{metric}"] = _metric_leaf(metric)
        variants.append({"$ref": f"#/definitions/metric_{metric}"})
    definitions["segment_ref"] = {
        "type": "object",
        "properties": {"segment": {"type": "string", "description": "another segment (file stem)"}},
        "required": ["segment"],
        "additionalProperties": False,
    }
    variants.append({"$ref": "#/definitions/segment_ref"})
    definitions["rule"] = {"anyOf": variants}
    return definitions


def segment_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a ``segments/NAME.yaml`` file."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "campaign segment",
        "description": "segments/NAME.yaml: who is in the segment, as rules over merchants",
        "type": "object",
        "properties": {
            "description": {"type": "string", "description": "what the segment is, for marketers"},
            "rules": {"$ref": "#/definitions/rule"},
        },
        "required": ["rules"],
        "additionalProperties": False,
        "definitions": rule_schema(),
    }


def schema_text() -> str:
    return json.dumps(segment_schema(), indent=2, ensure_ascii=False) + "\n"
