"""The suppression list: library and `campaign suppress`, on both backends."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.suppressions import (
    SuppressionError,
    add_suppression,
    is_suppressed,
    list_suppressions,
    remove_suppression,
)

NOW = datetime(2026, 12, 1, 9, 0)  # the clock of suppression entries here


def test_add_list_remove(engine):
    assert add_suppression(
        engine, " Siti@Example.ID ", topic="promo", reason="unsubscribe", source="link", now=NOW
    )
    assert not add_suppression(engine, "siti@example.id", topic="promo", now=NOW)  # already there
    assert add_suppression(engine, "siti@example.id", reason="complaint", now=NOW)  # all topics
    assert [(r["email"], r["topic"], r["reason"]) for r in list_suppressions(engine)] == [
        ("siti@example.id", "promo", "unsubscribe"),
        ("siti@example.id", "*", "complaint"),
    ]
    assert is_suppressed(engine, "siti@example.id", "retention")  # via '*'
    assert remove_suppression(engine, "siti@example.id", topic="all") == 1
    assert not is_suppressed(engine, "siti@example.id", "retention")
    assert is_suppressed(engine, "siti@example.id", "promo")
    assert remove_suppression(engine, "siti@example.id") == 1
    assert list_suppressions(engine) == []


def test_mistakes_are_one_sentence(engine):
    with pytest.raises(SuppressionError, match="not a valid email"):
        add_suppression(engine, "not-an-address", now=NOW)
    with pytest.raises(SuppressionError, match="unknown topic 'promos'"):
        add_suppression(engine, "a@example.id", topic="promos", now=NOW)


def test_cli_suppress(project, project_dir, project_env):
    runner = CliRunner()
    env = dict(project_env)
    base = ["--project", str(project_dir)]
    result = runner.invoke(
        cli,
        [
            "suppress",
            "add",
            "budi@example.id",
            "--topic",
            "promo",
            "--reason",
            "unsubscribe",
            *base,
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "suppressed for topic promo" in result.output
    result = runner.invoke(cli, ["suppress", "add", "rina@example.id", *base], env=env)
    assert "suppressed for all topics" in result.output
    result = runner.invoke(cli, ["suppress", "list", "--format", "json", *base], env=env)
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [(r["email"], r["topic"], r["reason"]) for r in listed] == [
        ("budi@example.id", "promo", "unsubscribe"),
        ("rina@example.id", "all", "manual"),  # stored as "*", shown as the word users type
    ]
    assert {"email", "reason", "topic", "created_at"} <= set(listed[0])
    result = runner.invoke(cli, ["suppress", "list", "--format", "csv", *base], env=env)
    assert result.output.splitlines()[0] == "email,reason,topic,created_at,source"
    result = runner.invoke(cli, ["suppress", "remove", "budi@example.id", *base], env=env)
    assert result.exit_code == 0 and "removed 1" in result.output
    result = runner.invoke(cli, ["suppress", "remove", "budi@example.id", *base], env=env)
    assert result.exit_code == 1
    assert "not on the suppression list" in result.output
    result = runner.invoke(cli, ["suppress", "add", "nope", *base], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
