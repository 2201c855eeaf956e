"""Segment files: validation with file and line, references, cycles, the JSON Schema."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, write_files

from engine.cli import cli
from engine.errors import CampaignFileError, ProblemList, SegmentError
from engine.segments import (
    AllOf,
    Check,
    FieldRule,
    MetricRule,
    Not,
    SegmentRef,
    load_segments,
    parse_rule,
)
from engine.segments.rules import FIELD_TYPES, OPERATORS_BY_TYPE
from engine.segments.schema import SCHEMA_FILE, schema_text, segment_schema
from engine.yamlfile import parse_yaml


def problems_of(tmp_path: Path, files: dict[str, str]) -> list[SegmentError]:
    write_files(tmp_path / "segments", files)
    with pytest.raises(ProblemList) as info:
        load_segments(tmp_path / "segments")
    return info.value.problems


def one_problem(tmp_path: Path, text: str) -> SegmentError:
    problems = problems_of(tmp_path, {"s.yaml": text})
    assert len(problems) == 1, [str(p) for p in problems]
    assert isinstance(problems[0], SegmentError)
    return problems[0]


def test_a_valid_file_becomes_a_rule_tree(tmp_path):
    write_files(
        tmp_path / "segments",
        {
            "quiet.yaml": """\
description: Sold last quarter, quiet for 30 days
rules:
  all:
    - field: plan
      in: [basic, pro]
    - metric: revenue
      window: 90d
      gte: 1000000
    - field: Email
      eq: x
""".replace("Email", "email").replace("eq: x", "eq: Budi@Example.COM"),
            "tests.yaml": "rules:\n  field: attributes.test_account\n  eq: true\n",
            "main.yaml": "description: d\nrules:\n  not:\n    segment: tests\n",
        },
    )
    segments = load_segments(tmp_path / "segments")
    assert list(segments) == ["main", "quiet", "tests"]
    quiet = segments["quiet"]
    assert quiet.description == "Sold last quarter, quiet for 30 days"
    assert quiet.rule == AllOf(
        (
            FieldRule("plan", (Check("in", ("basic", "pro")),)),
            MetricRule("revenue", timedelta(days=90), (Check("gte", 1000000),)),
            FieldRule("email", (Check("eq", "budi@example.com"),)),  # addresses are lower-case
        )
    )
    assert quiet.rule.rules[1].line == 6
    assert segments["main"].rule == Not(SegmentRef("tests"))
    assert segments["tests"].description == ""


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("rules:\n  field: plan\n   eq: pro\n", 3, ["not valid YAML"]),
        (
            "rules:\n  field: plan\n  eq: pro\nowner: me\n",
            4,
            ["unknown key 'owner'", "description, rules"],
        ),
        ("description: d\n", 1, ["needs 'rules:'"]),
        (
            "rules:\n  field: plann\n  eq: pro\n",
            2,
            ["unknown field 'plann'", "plan", "attributes.KEY", "last_login_at"],
        ),
        (
            "rules:\n  field: attributes.a-b\n  eq: 1\n",
            2,
            ["unknown field", "letters, digits and _"],
        ),
        (
            "rules:\n  metric: revenu\n  window: 30d\n  eq: 0\n",
            2,
            ["unknown metric 'revenu'", "revenue, orders, aov, activity, revenue_change"],
        ),
        (
            "rules:\n  field: plan\n  before: 14d\n",
            3,
            ["'before' does not fit field 'plan' (text)", "eq, ne, in, not_in, contains, is_null"],
        ),
        (
            "rules:\n  field: created_at\n  gte: 3\n",
            3,
            ["'gte' does not fit field 'created_at' (timestamp)", "before, after, within"],
        ),
        (
            "rules:\n  metric: orders\n  window: soon\n  eq: 0\n",
            3,
            ["window 'soon'", "Nh, Nd or Nw"],
        ),
        ("rules:\n  metric: orders\n  window: 0d\n  eq: 0\n", 3, ["window '0d'"]),
        ("rules:\n  metric: orders\n  eq: 0\n", 2, ["needs a window"]),
        ("rules:\n  metric: activity\n  window: 7d\n  gte: 1\n", 2, ["needs a kind"]),
        (
            "rules:\n  metric: orders\n  kind: login\n  window: 7d\n  gte: 1\n",
            3,
            ["'kind' only goes with metric 'activity'"],
        ),
        (
            "rules:\n  metric: orders\n  window: 7d\n  gte: lots\n",
            4,
            ["gte on metric 'orders'", "expected a number", "the text 'lots'"],
        ),
        ("rules:\n  field: plan\n  eq: 5\n", 3, ["expected text, found the number 5", "quotes"]),
        ("rules:\n  field: plan\n  in: []\n", 3, ["non-empty list"]),
        ("rules:\n  field: plan\n  eq: null\n", 3, ["found nothing", "use is_null: true"]),
        (
            "rules:\n  metric: revenue\n  window: 7d\n  between: [5, 1]\n",
            4,
            ["low end 5 is above the high end 1"],
        ),
        ("rules:\n  field: plan\n  is_null: maybe\n", 3, ["expected true or false"]),
        ("rules:\n  field: last_login_at\n  before: yesterday\n", 3, ["duration", "ISO date"]),
        ("rules:\n  field: plan\n  equals: pro\n", 3, ["unknown operator 'equals'", "eq, ne"]),
        ("rules:\n  field: plan\n", 2, ["needs an operator"]),
        ("rules:\n  all: []\n", 2, ["'all' takes a non-empty list"]),
        ("rules:\n  not:\n    - field: plan\n      eq: pro\n", 2, ["'not' takes one rule"]),
        (
            "rules:\n  all:\n    - field: plan\n      eq: pro\n  any:\n    - field: plan\n      eq: x\n",
            5,
            ["must stand alone"],
        ),
        (
            "rules:\n  any:\n    - plan: pro\n",
            3,
            ["unknown key 'plan'", "all, any, not, field, metric, segment"],
        ),
        (
            "rules:\n  any:\n    - segment: nowhere\n",
            3,
            ["no segment named 'nowhere'", "segments: s"],
        ),
        ("rules:\n  field: plan\n  metric: orders\n  eq: 1\n", 2, ["not field and metric"]),
        ("- just\n- a list\n", 1, ["a segment file is a mapping"]),
        ("description: [1]\nrules:\n  field: plan\n  eq: pro\n", 1, ["description must be text"]),
        # Values YAML itself cannot build, and values the clock or the database cannot hold:
        # each one sentence with its line, never a traceback.
        (
            "rules:\n  field: last_login_at\n  after: 2026-13-45\n",
            3,
            ["not valid YAML", "'2026-13-45' is not a valid timestamp"],
        ),
        ("rules: &loop\n  all:\n    - *loop\n", 1, ["an alias refers to itself"]),
        (
            "rules:\n  metric: orders\n  window: 1000000000d\n  eq: 0\n",
            3,
            ["window '1000000000d' is too long", "36500d"],
        ),
        (
            "rules:\n  field: last_login_at\n  after: 999999d\n",
            3,
            ["after on field 'last_login_at'", "'999999d' is too long"],
        ),
        (
            "rules:\n  field: last_login_at\n  within: 99999999999w\n",
            3,
            ["within on field 'last_login_at'", "too long"],
        ),
        (
            "rules:\n  field: last_login_at\n  after: '0001-01-01T00:00:00+07:00'\n",
            3,
            ["is out of range"],
        ),
        (
            "rules:\n  field: id\n  eq: 99999999999999999999999\n",
            3,
            ["eq on field 'id'", "the number 99999999999999999999999 is too large"],
        ),
        (
            "rules:\n  field: attributes.products\n  in: [1, -99999999999999999999999]\n",
            3,
            ["too large"],
        ),
        (
            "rules:\n  metric: revenue\n  window: 30d\n  gte: .nan\n",
            4,
            ["expected a finite number, found nan"],
        ),
    ],
)
def test_every_mistake_names_the_file_the_line_and_what_is_valid(tmp_path, text, line, words):
    problem = one_problem(tmp_path, text)
    assert problem.path == tmp_path / "segments" / "s.yaml"
    assert problem.line == line, str(problem)
    for word in words:
        assert word in str(problem)
    assert str(problem).startswith(f"{problem.path}:{line}: ")


def test_several_mistakes_in_several_files_are_reported_together(tmp_path):
    problems = problems_of(
        tmp_path,
        {
            "a.yaml": "rules:\n  all:\n    - field: plann\n      eq: x\n    - metric: orders\n      window: soon\n      eq: 0\n",
            "b.yaml": "rules:\n  field: created_at\n  contains: x\n",
            "c.yaml": "rules:\n  field: plan\n  eq: ok\n",
        },
    )
    assert [(p.path.name, p.line) for p in problems] == [
        ("a.yaml", 3),
        ("a.yaml", 6),
        ("b.yaml", 3),
    ]


def test_cycles_are_errors_with_the_line_that_closes_them(tmp_path):
    problems = problems_of(
        tmp_path,
        {
            "a.yaml": "rules:\n  any:\n    - field: plan\n      eq: x\n    - segment: b\n",
            "b.yaml": "rules:\n  not:\n    segment: a\n",
            "self.yaml": "rules:\n  segment: self\n",
            "ok.yaml": "rules:\n  segment: a\n",
        },
    )
    messages = sorted((p.path.name, p.line, p.detail) for p in problems)
    assert messages == [
        ("b.yaml", 3, "segments refer to each other in a cycle: a → b → a"),
        ("self.yaml", 2, "segments refer to each other in a cycle: self → self"),
    ]


def test_values_of_every_kind_are_normalised(tmp_path):
    doc = parse_yaml(
        """\
all:
  - field: last_login_at
    before: 2025-01-31
  - field: created_at
    after: 2025-01-31T10:00:00+07:00
  - field: created_at
    within: 2w
  - field: attributes.score
    between: [1, 2.5]
  - field: attributes.tier
    not_in: [gold, 5, true]
""",
        "inline.yaml",
    )
    rule = parse_rule(doc)
    tests = [leaf.checks[0].value for leaf in rule.rules]
    assert tests == [
        datetime(2025, 1, 31),
        datetime(2025, 1, 31, 3, 0),
        timedelta(weeks=2),
        (1, 2.5),
        ("gold", 5, True),
    ]


def test_parse_rule_works_inside_any_document_with_its_own_error_type():
    doc = parse_yaml(
        "name: x\nexit:\n  segment: active-sellers\nsteps:\n  - when:\n      metric: orders\n      window: 10dd\n      eq: 0\n",
        "campaigns/x.yaml",
    )
    assert parse_rule(doc, ("exit",), known_segments={"active-sellers"}) == SegmentRef(
        "active-sellers"
    )
    with pytest.raises(ProblemList) as info:
        parse_rule(doc, ("steps", 0, "when"), error_cls=CampaignFileError)
    (problem,) = info.value.problems
    assert isinstance(problem, CampaignFileError)
    assert str(problem).startswith("campaigns/x.yaml:7: window '10dd'")
    with pytest.raises(ProblemList, match="no segment named 'active-sellers'"):
        parse_rule(doc, ("exit",), known_segments=set())


def test_a_missing_folder_is_no_segments(tmp_path):
    assert len(load_segments(tmp_path / "nowhere")) == 0


def test_the_example_segments_are_valid_and_described():
    segments = load_segments(REPO / "segments")
    expected = {
        "test-accounts",
        "new-not-selling",
        "dormant-sellers",
        "revenue-dropped",
        "never-logged-in",
        "high-potential",
        "partner-candidates",
        "active-sellers",
    }
    assert expected <= set(segments)
    for name, segment in segments.items():
        assert len(segment.description) > 30, name
        if name != "test-accounts":
            assert Not(SegmentRef("test-accounts")) in segment.rule.rules, name


# --- the JSON Schema ---------------------------------------------------------------------


def test_the_shipped_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text()


def test_the_schema_lists_every_field_metric_and_operator():
    definitions = segment_schema()["definitions"]
    assert set(definitions["field_text"]["properties"]) == {"field", *OPERATORS_BY_TYPE["text"]}
    assert set(definitions["field_timestamp"]["properties"]["field"]["enum"]) == {
        "created_at",
        "last_login_at",
    }
    named = {
        f
        for kind in ("text", "number", "timestamp")
        for f in definitions[f"field_{kind}"]["properties"]["field"]["enum"]
    }
    assert named == set(FIELD_TYPES)
    assert definitions["metric_activity"]["required"] == ["metric", "window", "kind"]
    assert "kind" not in definitions["metric_revenue"]["properties"]


def test_campaign_schema_segment_writes_the_schema(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["schema", "segment"])
    assert result.exit_code == 0
    assert json.loads(result.output) == segment_schema()
    out = tmp_path / "segment.schema.json"
    result = runner.invoke(cli, ["schema", "segment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == schema_text()


def test_nested_aliases_that_expand_without_end_are_refused(tmp_path):
    """A "billion laughs" file is one error, not minutes of work and gigabytes of memory."""
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    problem = one_problem(tmp_path, "\n".join([*lines, "rules: {field: plan, eq: pro}", ""]))
    assert "expands to more than 100,000 values" in str(problem)
