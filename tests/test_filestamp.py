"""Prepared templates and segments are kept between ticks, and an edit is seen at the next tick."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from conftest import write_files
from drip_fixtures import FILES, MONDAY, add_merchants, make_project

from engine.clock import FixedClock
from engine.drips import tick
from engine.filestamp import FolderCache, folder_stamp
from engine.models import drip_enrolments, messages
from engine.segments import load_segments
from engine.templates import shared_template_set

DAY = timedelta(days=1)


def test_a_rewrite_of_the_same_size_at_once_changes_the_stamp(tmp_path):
    write_files(tmp_path, {"a/one.html": "Two", "b.yaml": "x: 1"})
    before = folder_stamp(tmp_path)
    assert folder_stamp(tmp_path) == before
    (tmp_path / "a/one.html").write_text("Dua")  # same size, same millisecond
    assert folder_stamp(tmp_path) != before
    changed = folder_stamp(tmp_path)
    (tmp_path / "a/new.txt").write_text("")
    assert folder_stamp(tmp_path) != changed
    assert folder_stamp(tmp_path / "missing") == ()


def test_the_cache_keeps_a_build_only_while_the_folder_is_unchanged(tmp_path):
    cache, builds = FolderCache(), []

    def build():
        builds.append(1)
        return len(builds)

    write_files(tmp_path, {"f": "1"})
    assert cache.get(tmp_path, "k", build) == 1
    assert cache.get(tmp_path, "k", build) == 1
    (tmp_path / "f").write_text("2")
    assert cache.get(tmp_path, "k", build) == 2

    def broken():
        raise ValueError("bad file")

    (tmp_path / "f").write_text("3")
    for _ in range(2):  # a failed build is not kept: the error comes every time
        try:
            cache.get(tmp_path, "k", broken)
        except ValueError:
            pass
        else:
            raise AssertionError("the broken build was not run")
    assert cache.get(tmp_path, "k", build) == 3


def test_shared_sets_are_the_same_object_until_a_file_changes(project, project_dir):
    make_project(project, project_dir)
    folder = project.settings.templates_dir
    first = shared_template_set(folder, "id")
    assert shared_template_set(folder, "id") is first
    assert shared_template_set(folder, "en") is not first
    assert load_segments(project.settings.segments_dir) is load_segments(
        project.settings.segments_dir
    )
    (folder / "d/two.html").write_text(FILES["templates/d/two.html"].replace("Two", "Dua"))
    assert shared_template_set(folder, "id") is not first


def test_ticks_in_one_process_use_an_edited_template_and_segment(project, project_dir):
    make_project(project, project_dir)
    add_merchants(project, 2)
    tick(project, clock=FixedClock(MONDAY), deliver=False)
    # Between ticks, as an operator would while the worker runs: the same sizes,
    # so only the content tells the files apart.
    write_files(
        project_dir,
        {
            "templates/d/two.html": FILES["templates/d/two.html"].replace("Two", "Dua"),
            "segments/everyone.yaml": FILES["segments/everyone.yaml"].replace("active", "paused"),
        },
    )
    add_merchants(project, 2, start=3)  # active: no longer in the edited segment
    tick(project, clock=FixedClock(MONDAY + 2 * DAY), deliver=False)
    with project.engine.connect() as conn:
        subjects = conn.execute(
            sa.select(messages.c.merchant_id, messages.c.step, messages.c.subject).order_by(
                messages.c.merchant_id, messages.c.step
            )
        ).all()
        enrolled = conn.execute(sa.select(drip_enrolments.c.merchant_id)).scalars().all()
    assert sorted(enrolled) == [1, 2]
    assert [tuple(row) for row in subjects] == [
        (1, 1, "One Toko 1"),
        (1, 2, "Dua"),
        (2, 1, "One Toko 2"),
        (2, 2, "Dua"),
    ]


def test_a_large_file_is_stamped_without_being_read(tmp_path):
    from engine.filestamp import DIGEST_UP_TO

    big = tmp_path / "logo.png"
    big.write_bytes(b"x" * (DIGEST_UP_TO + 1))
    before = folder_stamp(tmp_path)
    info = big.stat()
    assert before == ((big.as_posix(), f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"),)
    big.write_bytes(b"y" * (DIGEST_UP_TO + 2))  # another size: another stamp
    assert folder_stamp(tmp_path) != before
