"""`campaign schema campaign`: generated from the validator's definitions, shipped, and true to the examples."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner
from conftest import REPO

from engine.campaigns.files import KEYS, STEP_KEYS
from engine.campaigns.schema import SCHEMA_FILE, campaign_schema, schema_text
from engine.cli import cli


def test_the_shipped_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text()


def test_the_command_prints_and_writes_it(tmp_path):
    printed = CliRunner().invoke(cli, ["schema", "campaign", "--project", str(tmp_path)])
    assert printed.exit_code == 0 and json.loads(printed.output) == campaign_schema()
    written = CliRunner().invoke(
        cli, ["schema", "campaign", "--out", "c.json", "--project", str(tmp_path)]
    )
    assert written.exit_code == 0
    assert json.loads((tmp_path / "c.json").read_text()) == campaign_schema()


def test_every_key_the_validator_knows_is_in_the_schema():
    schema = campaign_schema()
    assert set(schema["properties"]) == {k for keys in KEYS.values() for k in keys}
    step = schema["properties"]["steps"]["items"]
    assert set(step["properties"]) == set(STEP_KEYS)
    # a broadcast may not have steps, a drip may not have a template
    rules = {json.dumps(r["if"]): r["then"] for r in schema["allOf"]}
    assert any("steps" in json.dumps(t["not"]) for t in rules.values())


def test_the_example_campaigns_use_only_what_the_schema_allows():
    schema = campaign_schema()
    for path in sorted(Path(REPO / "campaigns").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert set(data) <= set(schema["properties"]), path.name
        assert set(schema["required"]) <= set(data), path.name
        assert data["kind"] in schema["properties"]["kind"]["enum"]
        assert data["topic"] in schema["properties"]["topic"]["enum"]
        for step in data.get("steps", []):
            assert set(step) <= set(STEP_KEYS)
