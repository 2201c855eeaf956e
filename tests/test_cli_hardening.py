"""What a hostile or unlucky user found: huge numbers, wrong exits, misleading help and notes."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_files
from test_cli import COMMANDS
from test_send import FILES, add_merchants

from engine.cli import cli
from engine.config import DeliverySettings
from engine.sending import retry_unknown, send_campaign
from engine.times import parse_rate

REPO = Path(__file__).resolve().parent.parent
HUGE = "9" * 40


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


@pytest.fixture
def shop(project, project_dir):
    write_files(project_dir, FILES)
    add_merchants(project, 4)
    return project


def test_huge_numbers_are_refused_with_one_sentence(shop, project_env):
    base = ["--project", str(shop.root)]
    limit = run(["send", "news", "--dry-run", "--limit", HUGE, *base], env=project_env)
    assert limit.exit_code == 2 and "--limit" in limit.output and "Traceback" not in limit.output
    merchant = run(["render", "news", "--merchant", HUGE, *base], env=project_env)
    assert merchant.exit_code == 1
    assert f"no merchant '{HUGE}' in the database" in merchant.output
    step = run(["render", "welcome", "--merchant", "1", "--step", HUGE, *base], env=project_env)
    assert step.exit_code == 2 and "--step" in step.output


def test_retry_unknown_of_a_campaign_that_does_not_exist_fails(shop, project_env):
    result = run(["retry", "--unknown", "nosuch", "--project", str(shop.root)], env=project_env)
    assert result.exit_code == 1
    assert "no campaign named 'nosuch'" in result.output


def test_retry_unknown_exits_0_when_every_resent_message_went(shop, smtp_server):
    shop.settings = dataclasses.replace(
        shop.settings,
        smtp=smtp_server.settings(),
        delivery=DeliverySettings(connections=1, rate=parse_rate("2000/s")),
    )
    smtp_server.drop("body", recipient="m2@example.id")
    smtp_server.reply("rcpt", "554 5.7.1 rejected", recipient="m3@example.id")
    first = send_campaign(shop, "news")
    assert first.states.get("unknown") == 1 and first.failed  # the drop after the body
    assert any("campaign retry --unknown news" in note for note in first.notes)
    smtp_server.clear_rules()
    again = retry_unknown(shop, "news")
    # One unknown resent fine; the campaign's earlier 554 is not this command's failure.
    assert again.would_send == 1 and again.states == {"sent": 1} and not again.failed


def test_check_on_a_folder_that_is_not_a_project_fails(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    result = run(["check", "--project", str(empty)])
    assert result.exit_code == 1
    assert "is not a campaign project" in result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_offers_only_the_formats_a_command_accepts(path, command):
    for param in getattr(command, "params", []):
        if param.name == "output_format":
            offered = set(re.findall(r"\b(table|json|csv|html)\b", param.help or ""))
            assert offered <= set(param.type.choices), (path, param.help, param.type.choices)


def test_notes_and_errors_name_only_commands_that_exist():
    """Every "`campaign X ...`" the engine prints must be a real command."""
    known = {" ".join(p) for p, _ in COMMANDS}
    named = set()
    for source in (REPO / "engine").rglob("*.py"):
        for match in re.finditer(
            r"`campaign ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", source.read_text()
        ):
            words = match.group(1).split()
            named.add(" ".join(words[:2]) if " ".join(words[:2]) in known else words[0])
    unknown = {name for name in named if name not in known}
    assert not unknown, f"commands named in messages that do not exist: {unknown}"


def test_the_demo_and_the_commands_after_it_count_on_one_clock(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    for name in ("segments", "campaigns", "templates"):
        import shutil

        shutil.copytree(REPO / name, folder / name)
    now = "2026-11-20T08:17:41"
    demo = run(["demo", "--merchants", "200", "--now", now, "--project", str(folder)])
    assert demo.exit_code == 0, demo.output
    counted = run(
        [
            "segment",
            "count",
            "dormant-sellers",
            "--now",
            now,
            "--format",
            "json",
            "--project",
            str(folder),
        ]
    )
    count = json.loads(counted.output)["count"]
    assert "dormant-sellers" in demo.output and count > 0
    shown = [line for line in demo.output.splitlines() if "dormant-sellers" in line]
    assert any(re.search(rf"\b{count}\b", line) for line in shown), (count, shown)


def test_demo_without_now_lays_its_data_out_around_the_real_time(tmp_path):
    """No start-of-the-hour clock: `segment count` right after the demo counts the same."""
    folder = tmp_path / "demo"
    folder.mkdir()
    import shutil

    for name in ("segments", "campaigns", "templates"):
        shutil.copytree(REPO / name, folder / name)
    demo = run(["demo", "--merchants", "200", "--project", str(folder)])
    assert demo.exit_code == 0, demo.output
    for segment in ("new-not-selling", "dormant-sellers", "revenue-dropped"):
        counted = run(["segment", "count", segment, "--format", "json", "--project", str(folder)])
        count = json.loads(counted.output)["count"]
        shown = [line for line in demo.output.splitlines() if f" {segment} " in line]
        assert shown and any(re.search(rf"\b{count}\b", line) for line in shown), (segment, shown)


def test_segment_show_with_a_huge_limit_is_one_sentence(shop, project_env):
    result = run(
        ["segment", "show", "everyone", "--limit", HUGE, "--project", str(shop.root)],
        env=project_env,
    )
    assert result.exit_code == 2 and "--limit" in result.output and "Traceback" not in result.output


def test_check_warns_of_an_activity_kind_that_never_occurs(shop, project_env):
    write_files(
        shop.root,
        {
            "segments/logged.yaml": "rules:\n  metric: activity\n  kind: logn\n  window: 7d\n  gte: 1\n"
        },
    )
    result = CliRunner().invoke(cli, ["check", "--project", str(shop.root)], env=project_env)
    assert "no activity of kind 'logn'" in result.output
    assert "segments/logged.yaml:2" in result.output or "logged.yaml" in result.output
