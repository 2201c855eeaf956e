"""Segments: YAML rules over merchants, validated with line numbers, compiled to one SQL query."""

from engine.segments.compiler import metric_expression, rule_condition
from engine.segments.loader import (
    Explanation,
    Segment,
    SegmentSet,
    count_segment,
    count_statement,
    explain_segment,
    load_segments,
    members_statement,
    segment_condition,
    segment_members,
)
from engine.segments.rules import (
    METRICS,
    OPERATORS,
    AllOf,
    AnyOf,
    Check,
    FieldRule,
    MetricRule,
    Not,
    Rule,
    SegmentRef,
    parse_rule,
    referenced_segments,
)
from engine.segments.schema import rule_schema, segment_schema

__all__ = [
    "METRICS",
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Check",
    "Explanation",
    "FieldRule",
    "MetricRule",
    "Not",
    "Rule",
    "Segment",
    "SegmentRef",
    "SegmentSet",
    "count_segment",
    "count_statement",
    "explain_segment",
    "load_segments",
    "members_statement",
    "metric_expression",
    "parse_rule",
    "referenced_segments",
    "rule_condition",
    "rule_schema",
    "segment_condition",
    "segment_members",
    "segment_schema",
]
