"""What the ``segment`` commands show: usable segments counted, listed or explained, with warnings.

A broken segment file does not stop the commands about other segments: its
problems come back as warnings, and only the segments that depend on it are
refused (with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.project import Project
from engine.segments.activity_kinds import unknown_activity_kinds
from engine.segments.loader import (
    Explanation,
    SegmentSet,
    count_segment,
    explain_segment,
    load_usable_segments,
    segment_members,
)


@dataclass(frozen=True)
class SegmentListing:
    """What `segment list` shows. Warnings go to stderr."""

    rows: list[dict[str, Any]]  # segment, description, count
    warnings: list[str] = field(default_factory=list)
    problems: int = 0  # how many of the warnings are mistakes in segment files


@dataclass(frozen=True)
class SegmentCount:
    """What `segment count` shows. Warnings go to stderr."""

    name: str
    count: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SegmentMembers:
    """What `segment show` shows. Warnings go to stderr."""

    name: str
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SegmentExplanation:
    """What `segment explain` shows. Warnings go to stderr."""

    name: str
    explanation: Explanation
    warnings: list[str] = field(default_factory=list)


def _usable(project: Project, name: str | None) -> tuple[SegmentSet, list[str]]:
    """The usable segments and the problems of the others; ``name`` must be usable."""
    loaded = load_usable_segments(project.settings.segments_dir)
    if name is not None:
        loaded.segments.get_segment(name)  # SegmentError: missing, or why it is refused
    return loaded.segments, [f"warning: {problem}" for problem in loaded.problems]


def _kind_warnings(project: Project, segments: SegmentSet, names: list[str]) -> list[str]:
    with project.database().connect() as conn:
        return unknown_activity_kinds(conn, segments, names)


def list_segments(project: Project, *, now: datetime) -> SegmentListing:
    """Every usable segment with its description and how many merchants are in it at ``now``."""
    segments, warnings = _usable(project, None)
    if not segments:
        # No segments, no database: run in the wrong folder, this must not leave a campaign.db behind.
        return SegmentListing([], warnings, len(warnings))
    engine = project.database()
    rows = [
        {
            "segment": name,
            "description": seg.description,
            "count": count_segment(engine, segments, name, now=now),
        }
        for name, seg in segments.items()
    ]
    kinds = _kind_warnings(project, segments, list(segments))
    return SegmentListing(rows, warnings + kinds, len(warnings))


def count_members(project: Project, name: str, *, now: datetime) -> SegmentCount:
    """How many merchants are in segment ``name`` at ``now``, and what to warn about."""
    segments, warnings = _usable(project, name)
    count = count_segment(project.database(), segments, name, now=now)
    return SegmentCount(name, count, warnings + _kind_warnings(project, segments, [name]))


def show_members(
    project: Project, name: str, *, now: datetime, limit: int | None = None
) -> SegmentMembers:
    """The merchants of segment ``name`` at ``now`` (every column, by id), and what to warn about."""
    segments, warnings = _usable(project, name)
    rows = segment_members(project.database(), segments, name, now=now, limit=limit)
    return SegmentMembers(name, rows, warnings + _kind_warnings(project, segments, [name]))


def explain_members(project: Project, name: str, *, now: datetime) -> SegmentExplanation:
    """The SQL and plan of segment ``name``'s count at ``now``."""
    segments, warnings = _usable(project, name)
    return SegmentExplanation(
        name, explain_segment(project.database(), segments, name, now=now), warnings
    )
