"""The command line as a whole: help text everywhere, documented in the README."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from engine.cli import cli

REPO = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


COMMANDS = list(_commands(cli))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help_and_is_in_the_readme(path, command):
    assert command.help and command.help.strip(), f"campaign {' '.join(path)} has no help text"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"campaign {' '.join(path)}" in readme or (
        isinstance(command, click.Group) and f"campaign {path[0]}" in readme
    ), f"campaign {' '.join(path)} is not in README.md"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_leaf_command_takes_project(path, command):
    if isinstance(command, click.Group):
        return
    assert "project_dir" in {p.name for p in command.params}, (
        f"campaign {' '.join(path)} lacks --project"
    )


def test_demo_builds_a_database_and_prints_a_summary(tmp_path):
    """The README's first line, minus the install: a fresh folder gets campaign.db and demo data."""
    project = tmp_path / "p"
    project.mkdir()
    result = CliRunner().invoke(
        cli,
        ["demo", "--merchants", "60", "--project", str(project)],
        env={"CAMPAIGN_DATABASE_URL": ""},
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    assert (project / "campaign.db").exists()
    assert "merchants" in result.output and "60" in result.output


def test_a_piped_table_keeps_every_cell_whole(capsys):
    """Piped output is not squeezed into 80 columns: long names are never cut to `promo…`."""
    from engine.cli.output import print_table

    long_name = "promo-harbolnas-1212-with-a-long-name"
    columns = ("campaign", "step", "sent", "deferred", "failed", "suppressed", "unknown", "queued")
    print_table([(long_name, 1, 175, 0, 0, 0, 0, 0)], columns, title="campaign report")
    out = capsys.readouterr().out
    assert long_name in out
    for column in columns:
        assert column in out
    assert "…" not in out


def test_report_of_a_campaign_that_does_not_exist_says_so(tmp_path, project_env, example_dir):
    """A typo in `report NAME` is named as such, not as "nothing has been sent yet"."""
    base = ["--project", str(example_dir)]
    result = CliRunner().invoke(cli, ["report", "promo-harbolnas-121", *base], env=project_env)
    assert result.exit_code == 1
    assert "no campaign named 'promo-harbolnas-121'" in result.stderr
    # A campaign that exists but has sent nothing yet: its row of zeros, not an error.
    result = CliRunner().invoke(
        cli, ["report", "promo-harbolnas-1212", "--format", "json", *base], env=project_env
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["campaign"], row["run"], row["sent"], row["conversions"]) == (
        "promo-harbolnas-1212",
        "manual",
        0,
        0,
    )


def test_an_output_path_that_cannot_be_written_is_one_sentence(tmp_path):
    """--out in a folder that does not exist: the path and the reason, exit 1, no traceback."""
    target = tmp_path / "missing" / "segment.schema.json"
    result = CliRunner().invoke(
        cli, ["schema", "segment", "--out", str(target), "--project", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {target}: No such file or directory"
    assert "Traceback" not in result.output


def test_running_demo_again_keeps_the_suppression_list(tmp_path):
    """Reloading the demo data replaces merchants and the outbox, never who must not be emailed."""
    project = tmp_path / "p"
    project.mkdir()
    env = {"CAMPAIGN_DATABASE_URL": ""}
    base = ["--project", str(project)]
    runner = CliRunner()
    assert runner.invoke(cli, ["demo", "--merchants", "30", *base], env=env).exit_code == 0
    result = runner.invoke(cli, ["suppress", "add", "complained@example.id", *base], env=env)
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["demo", "--merchants", "30", *base], env=env).exit_code == 0
    result = runner.invoke(cli, ["suppress", "list", "--format", "json", *base], env=env)
    assert [row["email"] for row in json.loads(result.stdout)] == ["complained@example.id"]


def test_csv_and_json_write_times_the_same_way(capsys):
    from datetime import datetime

    from engine.cli.output import print_csv, print_json

    row = {"email": "a@example.id", "created_at": datetime(2026, 11, 30, 5, 48, 43, 810271)}
    print_csv([row], ("email", "created_at"))
    print_json([row])
    out = capsys.readouterr().out
    assert "a@example.id,2026-11-30T05:48:43.810271\r\n" in out
    assert '"created_at": "2026-11-30T05:48:43.810271"' in out


def test_a_table_title_wider_than_its_columns_stays_on_one_line(capsys):
    from engine.cli.output import print_table

    print_table([("sent", 27)], ("state", "messages"), title="partner-logistics: outbox")
    assert "partner-logistics: outbox" in capsys.readouterr().out
