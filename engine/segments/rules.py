"""The segment rule language: its vocabulary, the rule tree, and validation with line numbers.

The vocabulary (fields, metrics, operators and which operators fit which type)
is declared once here; the validator and the JSON Schema (``engine.segments.schema``)
are both built from it, so the editor's autocompletion and the loader never disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.errors import ProblemList, ProjectFileError, SegmentError
from engine.models import MERCHANT_COLUMNS, merchants
from engine.times import parse_duration, parse_timestamp, to_utc
from engine.yamlfile import YamlDocument

# --- vocabulary -------------------------------------------------------------------------

TEXT, NUMBER, TIMESTAMP, JSON = "text", "number", "timestamp", "json"

ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_]+$")
WINDOW_UNITS = "hdw"
# Longer spans mean nothing for merchants and would overflow the clock arithmetic (now - span).
MAX_SPAN = timedelta(days=36500)
# Values are bound as 64-bit integers by both databases.
MAX_INT = 2**63 - 1
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _column_type(column: sa.Column) -> str | None:
    if isinstance(column.type, sa.DateTime):
        return TIMESTAMP
    if isinstance(column.type, sa.Integer):
        return NUMBER
    if isinstance(column.type, sa.String):
        return TEXT
    return None  # the JSON column itself: reached through attributes.KEY


FIELD_TYPES: dict[str, str] = {
    name: kind for name in MERCHANT_COLUMNS if (kind := _column_type(merchants.c[name])) is not None
}
"""Every merchant column a rule may name, with its type (``attributes.KEY`` is JSON)."""

METRICS: dict[str, str] = {
    "revenue": "sum of paid order amounts in the window (0 when there are none)",
    "orders": "count of paid orders in the window",
    "aov": "average paid order value in the window (null when there are no paid orders)",
    "activity": "count of activities of `kind` in the window",
    "revenue_change": (
        "revenue in the window against the window just before it, as a ratio "
        "(-0.4 = down 40%; null when the earlier revenue is 0)"
    ),
}
NULLABLE_METRICS = frozenset({"aov", "revenue_change"})

OPERATORS: dict[str, str] = {
    "eq": "equal to",
    "ne": "not equal to (a null value never matches)",
    "lt": "less than",
    "lte": "less than or equal to",
    "gt": "greater than",
    "gte": "greater than or equal to",
    "in": "one of a list",
    "not_in": "none of a list (a null value never matches)",
    "between": "[a, b], both ends included",
    "contains": "text containing this (case-sensitive)",
    "is_null": "true: has no value; false: has a value",
    "before": "earlier than a duration ago (14d) or an ISO date",
    "after": "later than a duration ago (14d) or an ISO date",
    "within": "in the last duration (7d), up to now",
}

OPERATORS_BY_TYPE: dict[str, tuple[str, ...]] = {
    TEXT: ("eq", "ne", "in", "not_in", "contains", "is_null"),
    NUMBER: ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between", "is_null"),
    TIMESTAMP: ("before", "after", "within", "is_null"),
    JSON: ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between", "contains", "is_null"),
}

GROUPS = ("all", "any", "not")
SEGMENT_KEYS = ("description", "rules")


def field_type(name: str) -> str | None:
    """The type of a field name, or None when it is not a field a rule may use."""
    if name in FIELD_TYPES:
        return FIELD_TYPES[name]
    prefix, _, key = name.partition(".")
    if prefix == "attributes" and ATTRIBUTE_KEY.match(key):
        return JSON
    return None


def valid_fields_text() -> str:
    return ", ".join([*FIELD_TYPES, "attributes.KEY"])


# --- the rule tree ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A node of a rule tree. ``line`` is where it was written (not part of equality)."""

    line: int = field(default=0, compare=False, kw_only=True)


@dataclass(frozen=True)
class AllOf(Rule):
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Not(Rule):
    rule: Rule


@dataclass(frozen=True)
class Check:
    """One operator and its value, normalised.

    ``before``/``after`` hold a timedelta (a duration ago) or a naive UTC datetime;
    ``within`` a timedelta; ``between`` a pair; ``in``/``not_in`` a tuple;
    text values of ``email`` are lower-cased (addresses are stored that way).
    """

    op: str
    value: Any


@dataclass(frozen=True)
class FieldRule(Rule):
    field: str
    checks: tuple[Check, ...]

    @property
    def type(self) -> str:
        return field_type(self.field) or TEXT


@dataclass(frozen=True)
class MetricRule(Rule):
    metric: str
    window: timedelta
    checks: tuple[Check, ...]
    kind: str | None = None


@dataclass(frozen=True)
class SegmentRef(Rule):
    name: str


def referenced_segments(rule: Rule) -> list[SegmentRef]:
    """Every ``segment:`` leaf of a rule tree, in order."""
    if isinstance(rule, SegmentRef):
        return [rule]
    if isinstance(rule, AllOf | AnyOf):
        return [ref for child in rule.rules for ref in referenced_segments(child)]
    if isinstance(rule, Not):
        return referenced_segments(rule.rule)
    return []


# --- validation -------------------------------------------------------------------------


class _Invalid(Exception):
    """One problem found while validating a node (collected, never escapes)."""


def _names(values: Sequence[str]) -> str:
    return ", ".join(values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_range(value: Any) -> Any:
    """A number the databases can compare: finite, and a 64-bit integer when whole."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"expected a finite number, found {value}")
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise _Invalid(f"the number {value} is too large (at most {MAX_INT:,} either way)")
    return value


def _span(text: str) -> timedelta:
    """``14d`` → timedelta; ``ValueError`` when not a duration, ``_Invalid`` when too long."""
    try:
        span = parse_duration(text, WINDOW_UNITS)
    except ValueError:
        if not re.fullmatch(rf"\s*\d+\s*[{WINDOW_UNITS}]\s*", text):
            raise
        span = None  # well formed, but beyond what a timedelta holds
    if span is None or span > MAX_SPAN:
        raise _Invalid(f"the duration {text!r} is too long (at most {MAX_SPAN.days}d)")
    return span


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if _is_number(value):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


class _RuleParser:
    def __init__(
        self,
        doc: YamlDocument,
        known_segments: Collection[str] | None,
        error_cls: type[ProjectFileError],
    ) -> None:
        self.doc = doc
        self.known = known_segments
        self.error_cls = error_cls
        self.problems: list[ProjectFileError] = []

    def fail(self, line: int, message: str) -> None:
        self.problems.append(self.error_cls(self.doc.path, line, message))

    def value_at(self, loc: tuple) -> Any:
        data = self.doc.data
        for part in loc:
            data = data[part]
        return data

    # A node is a group or one leaf.
    def node(self, loc: tuple) -> Rule | None:
        value = self.value_at(loc)
        line = self.doc.line(loc)
        if not isinstance(value, dict) or not value:
            self.fail(
                line,
                f"a rule must be a mapping with one of: {_names([*GROUPS, 'field', 'metric', 'segment'])}"
                f" (found {_describe(value)})",
            )
            return None
        groups = [k for k in value if k in GROUPS]
        leaves = [k for k in value if k in ("field", "metric", "segment")]
        if groups and (len(value) > 1):
            other = next(k for k in value if k != groups[0])
            self.fail(
                self.doc.key_line((*loc, other)),
                f"{groups[0]!r} must stand alone in its mapping; move {other!r} into a rule of its own",
            )
            return None
        if groups:
            return self.group(loc, groups[0])
        if len(leaves) > 1:
            self.fail(
                line, f"a rule has one of field, metric or segment, not {' and '.join(leaves)}"
            )
            return None
        if not leaves:
            unknown = next(iter(value))
            self.fail(
                self.doc.key_line((*loc, unknown)),
                f"unknown key {unknown!r}; a rule starts with one of: "
                f"{_names([*GROUPS, 'field', 'metric', 'segment'])}",
            )
            return None
        return {"field": self.field_leaf, "metric": self.metric_leaf, "segment": self.segment_leaf}[
            leaves[0]
        ](loc, value, line)

    def group(self, loc: tuple, key: str) -> Rule | None:
        inner = (*loc, key)
        value = self.value_at(inner)
        line = self.doc.key_line(inner)
        if key == "not":
            if isinstance(value, list):
                self.fail(line, "'not' takes one rule (a mapping); wrap several in 'all' or 'any'")
                return None
            child = self.node(inner)
            return Not(child, line=line) if child is not None else None
        if not isinstance(value, list) or not value:
            self.fail(line, f"{key!r} takes a non-empty list of rules (found {_describe(value)})")
            return None
        children = [self.node((*inner, i)) for i in range(len(value))]
        if any(c is None for c in children):
            return None
        cls = AllOf if key == "all" else AnyOf
        return cls(tuple(children), line=line)

    def segment_leaf(self, loc: tuple, value: dict, line: int) -> Rule | None:
        extra = [k for k in value if k != "segment"]
        if extra:
            self.fail(
                self.doc.key_line((*loc, extra[0])),
                f"a segment rule takes only 'segment: NAME', not {extra[0]!r}",
            )
            return None
        name = value["segment"]
        where = self.doc.line((*loc, "segment"))
        if not isinstance(name, str) or not SEGMENT_NAME.match(name):
            self.fail(where, f"'segment' names another segment file (found {_describe(name)})")
            return None
        if self.known is not None and name not in self.known:
            known = sorted(self.known)
            self.fail(
                where,
                f"no segment named {name!r} (segments: {_names(known) if known else 'none'})",
            )
            return None
        return SegmentRef(name, line=where)

    def field_leaf(self, loc: tuple, value: dict, line: int) -> Rule | None:
        name = value["field"]
        where = self.doc.line((*loc, "field"))
        kind = field_type(name) if isinstance(name, str) else None
        if kind is None:
            hint = ""
            if isinstance(name, str) and name.startswith("attributes."):
                hint = " (attribute keys use letters, digits and _)"
            self.fail(where, f"unknown field {name!r}{hint}; valid fields: {valid_fields_text()}")
            return None
        ops = {k: v for k, v in value.items() if k != "field"}
        checks = self.checks(loc, ops, kind, f"field {name!r}", allowed_extra=())
        if checks is None:
            return None
        if name == "email":
            checks = tuple(_lower_email(t) for t in checks)
        return FieldRule(name, checks, line=where)

    def metric_leaf(self, loc: tuple, value: dict, line: int) -> Rule | None:
        name = value["metric"]
        where = self.doc.line((*loc, "metric"))
        if name not in METRICS:
            self.fail(where, f"unknown metric {name!r}; valid metrics: {_names(list(METRICS))}")
            return None
        ok = True
        window = None
        if "window" not in value:
            self.fail(where, f"metric {name!r} needs a window (e.g. window: 30d; units h, d, w)")
            ok = False
        else:
            window = self.window((*loc, "window"), value["window"])
            ok = ok and window is not None
        kind = None
        if name == "activity":
            kind = value.get("kind")
            if not isinstance(kind, str) or not kind.strip():
                self.fail(
                    self.doc.line((*loc, "kind")) if "kind" in value else where,
                    "metric 'activity' needs a kind (e.g. kind: login)",
                )
                ok = False
        elif "kind" in value:
            self.fail(
                self.doc.key_line((*loc, "kind")),
                f"'kind' only goes with metric 'activity', not {name!r}",
            )
            ok = False
        ops = {k: v for k, v in value.items() if k not in ("metric", "window", "kind")}
        checks = self.checks(loc, ops, NUMBER, f"metric {name!r}", allowed_extra=("window", "kind"))
        if checks is None or not ok:
            return None
        return MetricRule(name, window, checks, kind=kind, line=where)

    def window(self, loc: tuple, value: Any) -> timedelta | None:
        try:
            span = _span(str(value)) if isinstance(value, str) else None
        except ValueError:
            span = None
        except _Invalid:
            self.fail(
                self.doc.line(loc), f"window {value!r} is too long (at most {MAX_SPAN.days}d)"
            )
            return None
        if span is None or span <= timedelta(0):
            self.fail(
                self.doc.line(loc),
                f"window {value!r} is not a duration; use Nh, Nd or Nw with N above 0 (e.g. 30d)",
            )
            return None
        return span

    def checks(
        self, loc: tuple, ops: dict, kind: str, subject: str, allowed_extra: tuple[str, ...]
    ) -> tuple[Check, ...] | None:
        allowed = OPERATORS_BY_TYPE[kind]
        if not ops:
            self.fail(
                self.doc.line(loc),
                f"{subject} needs an operator; use one of: {_names(allowed)}",
            )
            return None
        checks = []
        ok = True
        for op, raw in ops.items():
            op_line = self.doc.key_line((*loc, op))
            if op not in OPERATORS:
                self.fail(
                    op_line,
                    f"unknown operator {op!r} for {subject}; use one of: {_names(allowed)}",
                )
                ok = False
                continue
            if op not in allowed:
                self.fail(
                    op_line,
                    f"operator {op!r} does not fit {subject} ({kind}); use one of: {_names(allowed)}",
                )
                ok = False
                continue
            try:
                checks.append(Check(op, _check_value(kind, op, raw)))
            except _Invalid as exc:
                self.fail(self.doc.line((*loc, op)), f"{op} on {subject}: {exc}")
                ok = False
        return tuple(checks) if ok else None


def _lower_email(check: Check) -> Check:
    value = check.value
    if isinstance(value, str):
        return Check(check.op, value.lower())
    if isinstance(value, tuple):
        return Check(check.op, tuple(v.lower() if isinstance(v, str) else v for v in value))
    return check


def _scalar(kind: str, value: Any) -> Any:
    if value is None:
        raise _Invalid(
            "expected a value, found nothing (to match a missing value, use is_null: true)"
        )
    if kind == TEXT:
        if not isinstance(value, str):
            hint = " (put it in quotes)" if not isinstance(value, list | dict) else ""
            raise _Invalid(f"expected text, found {_describe(value)}{hint}")
        return value
    if kind == NUMBER:
        if not _is_number(value):
            raise _Invalid(f"expected a number, found {_describe(value)}")
        return _in_range(value)
    # JSON attribute: compared as a JSON value of the same type.
    if not (isinstance(value, str | bool) or _is_number(value)):
        raise _Invalid(f"expected text, a number or true/false, found {_describe(value)}")
    return _in_range(value) if _is_number(value) else value


def _when(value: Any) -> timedelta | datetime:
    """A duration ago (``14d``) or an ISO date/time (naive UTC)."""
    try:
        if isinstance(value, datetime):
            return to_utc(value)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day)
    except OverflowError:
        raise _Invalid(f"the time {value} is out of range") from None
    if isinstance(value, str):
        try:
            return _span(value)
        except ValueError:
            pass
        try:
            return parse_timestamp(value)
        except OverflowError:
            raise _Invalid(f"the time {value!r} is out of range") from None
        except ValueError:
            pass
    raise _Invalid(
        f"expected a duration (Nh, Nd, Nw, e.g. 14d) or an ISO date (2025-01-31), found {_describe(value)}"
    )


def _check_value(kind: str, op: str, value: Any) -> Any:
    if op == "is_null":
        if not isinstance(value, bool):
            raise _Invalid(f"expected true or false, found {_describe(value)}")
        return value
    if op in ("before", "after"):
        return _when(value)
    if op == "within":
        try:
            span = _span(value) if isinstance(value, str) else None
        except ValueError:
            span = None
        if span is None:
            raise _Invalid(f"expected a duration (Nh, Nd, Nw, e.g. 7d), found {_describe(value)}")
        return span
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise _Invalid(f"expected a non-empty list, found {_describe(value)}")
        return tuple(_scalar(kind, v) for v in value)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise _Invalid(f"expected a list of two numbers [low, high], found {_describe(value)}")
        low, high = (_scalar(NUMBER, v) for v in value)
        if low > high:
            raise _Invalid(f"the low end {low} is above the high end {high}")
        return (low, high)
    if op == "contains":
        return _scalar(TEXT, value)
    if op in ("lt", "lte", "gt", "gte"):
        return _scalar(NUMBER, value)
    return _scalar(kind, value)  # eq, ne


def parse_rule(
    doc: YamlDocument,
    loc: tuple = (),
    *,
    known_segments: Collection[str] | None = None,
    error_cls: type[ProjectFileError] = SegmentError,
) -> Rule:
    """Validate the rule node at ``loc`` of ``doc`` (a group or a single leaf).

    Raises ``ProblemList`` of ``error_cls`` with every mistake found, each naming
    ``doc.path`` and a line. ``known_segments`` (when given) are the names a
    ``segment:`` leaf may refer to.
    """
    parser = _RuleParser(doc, known_segments, error_cls)
    rule = parser.node(tuple(loc))
    if parser.problems or rule is None:
        raise ProblemList(parser.problems)
    return rule


def check_segment_keys(doc: YamlDocument) -> list[SegmentError]:
    """Top-level checks of a segment file (the rule itself is checked by ``parse_rule``)."""
    problems = []
    data = doc.data
    if not isinstance(data, Mapping):
        return [
            SegmentError(
                doc.path,
                doc.line(),
                f"a segment file is a mapping with {_names(SEGMENT_KEYS)} (found {_describe(data)})",
            )
        ]
    for key in data:
        if key not in SEGMENT_KEYS:
            problems.append(
                SegmentError(
                    doc.path,
                    doc.key_line((key,)),
                    f"unknown key {key!r}; a segment file has: {_names(SEGMENT_KEYS)}",
                )
            )
    if "description" in data and not isinstance(data["description"], str):
        problems.append(
            SegmentError(
                doc.path,
                doc.line(("description",)),
                f"description must be text (found {_describe(data['description'])})",
            )
        )
    if "rules" not in data:
        problems.append(SegmentError(doc.path, doc.line(), "a segment file needs 'rules:'"))
    return problems
