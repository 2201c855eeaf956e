"""The command line as a whole: help text everywhere, documented in the README."""

from __future__ import annotations

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
