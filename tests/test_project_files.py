"""Project files that leave their folder or are too large are refused, naming the file; one broken
segment file refuses only the segments that depend on it; activity kinds that never occur warn."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from conftest import write_files
from template_fixtures import context, make_templates
from test_segments_property import World, load_world

from engine.campaigns import load_campaigns
from engine.cli import cli
from engine.config import load_settings
from engine.errors import ProblemList, SegmentError, TemplateError
from engine.segments import load_segments, load_usable_segments, unknown_activity_kinds
from engine.templates import TemplateSet
from engine.yamlfile import MAX_FILE_BYTES, YamlFileRefused, load_yaml

NOW = datetime(2025, 6, 15, 12, 0, 0)
SECRET_FILE = "secret: the database password\n"


@pytest.fixture
def outside(tmp_path):
    """A file outside the project, which links must not reach."""
    path = tmp_path / "outside" / "secret.html"
    path.parent.mkdir()
    path.write_text('---\nsubject: "x"\n---\n<p>the database password</p>\n', encoding="utf-8")
    return path


# --- templates -------------------------------------------------------------------------


def test_an_email_template_that_links_out_of_templates_is_refused(tmp_path, outside):
    root = make_templates(tmp_path / "p")
    (root / "leak.id.html").symlink_to(outside)
    with pytest.raises(TemplateError) as info:
        TemplateSet(root, "id").get("leak", "id")
    message = str(info.value)
    assert info.value.path.name == "leak.id.html" and "symbolic link" in message, message
    assert "outside" in message and len(message.splitlines()) == 1


def test_a_partial_that_links_out_of_templates_is_refused(tmp_path, outside):
    root = make_templates(tmp_path / "p")
    (root / "partials" / "button.html").unlink()
    (root / "partials" / "button.html").symlink_to(outside)
    with pytest.raises(TemplateError, match=r"button\.html: a symbolic link to .*outside"):
        TemplateSet(root, "id").get("hello", "id").render(context())


def test_a_layout_in_a_linked_folder_out_of_templates_is_refused(tmp_path):
    root = make_templates(tmp_path / "p")
    elsewhere = tmp_path / "elsewhere"
    (root / "layouts").rename(elsewhere)
    (root / "layouts").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(TemplateError, match=r"base\.html: a symbolic link to .*outside"):
        TemplateSet(root, "id").get("hello", "id")


def test_links_that_stay_inside_templates_still_work(tmp_path):
    root = make_templates(tmp_path / "p")
    (root / "hello-again.id.html").symlink_to(root / "hello.id.html")
    rendered = TemplateSet(root, "id").get("hello-again", "id").render(context())
    assert "Halo" in rendered.html


# --- YAML files ----------------------------------------------------------------------------


def test_a_segment_file_that_links_out_of_segments_is_refused(tmp_path):
    (tmp_path / "segments").mkdir()
    (tmp_path / "elsewhere.yaml").write_text("rules:\n  field: plan\n  eq: pro\n")
    (tmp_path / "segments" / "pro.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(ProblemList) as info:
        load_segments(tmp_path / "segments")
    (problem,) = info.value.problems
    assert problem.path.name == "pro.yaml" and "symbolic link" in str(problem), str(problem)


def test_a_campaign_file_that_links_out_of_campaigns_is_refused(tmp_path):
    write_files(tmp_path, {"segments/pro.yaml": "rules:\n  field: plan\n  eq: pro\n"})
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "secret.yaml").write_text(SECRET_FILE)
    (tmp_path / "campaigns" / "leak.yaml").symlink_to(tmp_path / "secret.yaml")
    settings = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": "k"})
    with pytest.raises(ProblemList) as info:
        load_campaigns(settings, load_segments(settings.segments_dir))
    (problem,) = info.value.problems
    assert problem.path.name == "leak.yaml" and "symbolic link" in str(problem), str(problem)
    assert "database password" not in str(problem)


def test_a_yaml_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    big = tmp_path / "segments" / "huge.yaml"
    big.parent.mkdir()
    # 50 MB of valid YAML: parsing it would take tens of seconds.
    line = "# " + "x" * 1000 + "\n"
    with big.open("w") as out:
        out.write("rules:\n  field: plan\n  eq: pro\n")
        for _ in range(50_000):
            out.write(line)
    started = time.monotonic()
    with pytest.raises(ProblemList) as info:
        load_segments(big.parent)
    assert time.monotonic() - started < 2
    (problem,) = info.value.problems
    size = f"{big.stat().st_size / 2**20:.1f} MiB"
    assert problem.path == big and "the 1 MiB" in str(problem) and size in str(problem)
    with pytest.raises(YamlFileRefused):
        load_yaml(big)
    # Just under the limit is read as usual.
    fine = tmp_path / "fine.yaml"
    fine.write_text("a: 1\n" + "#" * (MAX_FILE_BYTES - 10) + "\n")
    assert load_yaml(fine).data == {"a": 1}


# --- one broken segment file ------------------------------------------------------------------

SEGMENTS = {
    "segments/pro.yaml": "rules:\n  field: plan\n  eq: pro\n",
    "segments/broken.yaml": "rules:\n  field: plan\n  before: 3d\n",
    "segments/uses-broken.yaml": "rules:\n  all:\n    - field: plan\n      eq: pro\n    - segment: broken\n",
    "segments/uses-uses-broken.yaml": "rules:\n  not:\n    segment: uses-broken\n",
    "segments/loop-a.yaml": "rules:\n  segment: loop-b\n",
    "segments/loop-b.yaml": "rules:\n  segment: loop-a\n",
    "segments/uses-pro.yaml": "rules:\n  any:\n    - segment: pro\n    - field: city\n      eq: Bandung\n",
}


def test_a_broken_file_refuses_only_the_segments_that_depend_on_it(tmp_path):
    write_files(tmp_path, SEGMENTS)
    loaded = load_usable_segments(tmp_path / "segments")
    assert sorted(loaded.segments) == ["pro", "uses-pro"]
    assert {p.path.name for p in loaded.problems} == {"broken.yaml", "loop-b.yaml"}
    refused = loaded.segments.refused
    assert sorted(refused) == ["broken", "loop-a", "loop-b", "uses-broken", "uses-uses-broken"]
    with pytest.raises(SegmentError) as info:
        loaded.segments.get_segment("uses-uses-broken")
    assert info.value.path.name == "uses-uses-broken.yaml" and info.value.line == 3
    assert "refers to segment 'uses-broken'" in str(info.value)
    assert "broken.yaml:3" in str(refused["uses-broken"])
    # The strict loader still refuses the whole folder, with every problem.
    with pytest.raises(ProblemList) as strict:
        load_segments(tmp_path / "segments")
    assert [p.path.name for p in strict.value.problems] == [p.path.name for p in loaded.problems]


def _run(env, *args):
    return CliRunner().invoke(cli, [*args], env=env, catch_exceptions=False)


def test_segment_count_of_an_unrelated_segment_works_beside_a_broken_file(
    project, project_dir, project_env
):
    write_files(project_dir, SEGMENTS)
    load_world(project.engine, World(merchants=[_merchant(1, plan="pro")]))
    base = ["--project", str(project_dir), "--now", NOW.isoformat()]
    result = _run(project_env, "segment", "count", "uses-pro", *base)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "uses-pro: 1 merchant"
    assert "broken.yaml:3: operator 'before' does not fit" in result.stderr
    result = _run(project_env, "segment", "show", "pro", *base, "--format", "json")
    assert result.exit_code == 0 and '"plan": "pro"' in result.stdout
    for name in ("uses-broken", "uses-uses-broken", "loop-a"):
        result = _run(project_env, "segment", "count", name, *base)
        assert result.exit_code == 1, name
        assert f"segment {name!r} cannot be used" in result.output or "cycle" in result.output
        assert "Traceback" not in result.output
    # `check` still reports every problem.
    result = _run(project_env, "check", *base)
    assert result.exit_code == 1
    assert "broken.yaml:3" in result.output and "loop-b.yaml" in result.output


# --- activity kinds that never occur ------------------------------------------------------------


def _merchant(merchant_id: int, **columns) -> dict:
    return {
        "id": merchant_id,
        "external_id": f"m{merchant_id}",
        "email": f"m{merchant_id}@shop.id",
        "attributes": {},
        **columns,
    }


def _activity(merchant_id: int, kind: str, days_ago: int) -> dict:
    return {
        "merchant_id": merchant_id,
        "kind": kind,
        "occurred_at": NOW - timedelta(days=days_ago),
    }


KIND_SEGMENTS = {
    "segments/typo.yaml": (
        "description: logged in lately\nrules:\n  all:\n    - field: plan\n      eq: pro\n"
        "    - metric: activity\n      kind: logn\n      window: 7d\n      gte: 1\n"
    ),
    "segments/through-typo.yaml": "rules:\n  not:\n    segment: typo\n",
    "segments/fine.yaml": "rules:\n  metric: activity\n  kind: login\n  window: 7d\n  gte: 1\n",
}


def test_unknown_activity_kinds_are_named_with_file_line_and_the_known_kinds(project, project_dir):
    write_files(project_dir, KIND_SEGMENTS)
    world = World(
        merchants=[_merchant(1), _merchant(2)],
        activities=[_activity(1, "login", 1), _activity(2, "promo_created", 2)],
    )
    load_world(project.engine, world)
    segments = load_segments(project_dir / "segments")
    with project.engine.connect() as conn:
        assert unknown_activity_kinds(conn, segments, ["fine"]) == []
        (warning,) = unknown_activity_kinds(conn, segments, ["through-typo"])
        assert warning.startswith(f"{project_dir / 'segments' / 'typo.yaml'}:6: warning:"), warning
        assert "'logn'" in warning and "known kinds: login, promo_created" in warning
        assert unknown_activity_kinds(conn, segments, ["typo", "through-typo"]) == [warning]


def test_segment_count_and_show_warn_on_stderr_about_a_kind_that_never_occurs(
    project, project_dir, project_env
):
    write_files(project_dir, KIND_SEGMENTS)
    load_world(
        project.engine, World(merchants=[_merchant(1)], activities=[_activity(1, "login", 1)])
    )
    base = ["--project", str(project_dir), "--now", NOW.isoformat()]
    for command in ("count", "show"):
        result = _run(project_env, "segment", command, "typo", *base)
        assert result.exit_code == 0, result.output
        assert "typo.yaml:6: warning: no activity of kind 'logn'" in result.stderr
        assert "known kinds: login" in result.stderr and "logn" not in result.stdout
    result = _run(project_env, "segment", "count", "fine", *base)
    assert result.exit_code == 0 and result.stderr == "" and "fine: 1 merchant" in result.stdout
