"""Reading ``segments/*.yaml``: every file validated, references and cycles checked, then queries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.errors import ProblemList, SegmentError
from engine.filestamp import FolderCache
from engine.models import merchants
from engine.segments.compiler import rule_condition
from engine.segments.rules import (
    Rule,
    SegmentRef,
    check_segment_keys,
    parse_rule,
    referenced_segments,
)
from engine.segments.sqlfuncs import Explain
from engine.yamlfile import YamlSyntaxError, load_yaml


@dataclass(frozen=True)
class Segment:
    name: str
    description: str
    rule: Rule
    path: Path


class SegmentSet(Mapping[str, Segment]):
    """The project's segments by name (the file stem), all valid and free of cycles.

    ``refused`` names the segments left out because of a problem (their own file's,
    or one of a segment they refer to), each with the problem to report.
    """

    def __init__(
        self,
        segments: Mapping[str, Segment],
        directory: Path | None = None,
        refused: Mapping[str, SegmentError] | None = None,
    ) -> None:
        self._segments = dict(sorted(segments.items()))
        self.directory = directory
        self.refused = dict(refused or {})

    def __getitem__(self, name: str) -> Segment:
        return self._segments[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._segments)

    def __len__(self) -> int:
        return len(self._segments)

    def get_segment(self, name: str) -> Segment:
        """The segment ``name``, or a ``SegmentError`` saying why it cannot be used."""
        if name in self.refused:
            # The set is kept between ticks (engine.filestamp): a fresh traceback each
            # time, rather than one that grows with every raise.
            raise self.refused[name].with_traceback(None)
        if name not in self._segments:
            known = ", ".join(self._segments) or "none"
            raise SegmentError(
                self.directory or Path("segments"),
                None,
                f"no segment named {name!r} (segments: {known})",
            )
        return self._segments[name]


@dataclass(frozen=True)
class SegmentLoad:
    """What ``load_usable_segments`` found: the usable segments and every problem."""

    segments: SegmentSet
    problems: list[SegmentError]  # every mistake of every file, by file and line


def segment_files(segments_dir: Path) -> list[Path]:
    if not segments_dir.is_dir():
        return []
    return sorted(p for p in segments_dir.glob("*.yaml") if p.is_file())


def load_segments(segments_dir: Path) -> SegmentSet:
    """Load and validate every ``*.yaml`` in ``segments_dir``.

    Raises ``ProblemList`` of ``SegmentError`` with every mistake of every file
    (bad YAML, unknown keys, fields, metrics or operators, wrong values, missing
    segments, cycles, files too large or linked from outside), each with its file
    and line. A missing folder is an empty set.
    """
    loaded = load_usable_segments(segments_dir)
    if loaded.problems:
        raise ProblemList(loaded.problems)
    return loaded.segments


def load_usable_segments(segments_dir: Path) -> SegmentLoad:
    """Every segment that can be used, and every problem, without raising for them.

    A broken file refuses only its own segment and the segments that refer to it,
    directly or through other ``segment:`` references; the others stay usable.
    Read again only when a file in the folder changed (``engine.filestamp``).
    """
    segments_dir = Path(segments_dir)
    return _LOADED.get(segments_dir, segments_dir, lambda: _read_segments(segments_dir))


_LOADED = FolderCache()


def _read_segments(segments_dir: Path) -> SegmentLoad:
    files = segment_files(segments_dir)
    names = {path.stem for path in files}
    problems: list[SegmentError] = []
    found: dict[str, Segment] = {}
    refused: dict[str, SegmentError] = {}
    for path in files:
        file_problems = _read_segment(path, segments_dir, names, found)
        if file_problems:
            problems.extend(file_problems)
            refused[path.stem] = _first(file_problems)
    for error, members in _cycles(found):
        problems.append(error)
        for name in members:
            refused.setdefault(name, error)
    _refuse_dependents(found, refused)
    problems.sort(key=lambda p: (str(p.path), p.line or 0))
    usable = {name: seg for name, seg in found.items() if name not in refused}
    return SegmentLoad(SegmentSet(usable, segments_dir, refused), problems)


def _first(problems: list[SegmentError]) -> SegmentError:
    return min(problems, key=lambda p: p.line or 0)


def _read_segment(
    path: Path, segments_dir: Path, names: set[str], found: dict[str, Segment]
) -> list[SegmentError]:
    """The problems of one file; a valid segment goes into ``found``."""
    try:
        doc = load_yaml(path, segments_dir)
    except YamlSyntaxError as exc:
        return [SegmentError(path, exc.line, str(exc))]
    except (OSError, UnicodeDecodeError) as exc:
        return [SegmentError(path, None, f"cannot be read: {exc}")]
    file_problems = check_segment_keys(doc)
    rule = None
    if isinstance(doc.data, dict) and "rules" in doc.data:
        try:
            rule = parse_rule(doc, ("rules",), known_segments=names)
        except ProblemList as exc:
            file_problems.extend(exc.problems)
    if rule is not None and not file_problems:
        description = doc.data.get("description") or ""
        found[path.stem] = Segment(path.stem, description.strip(), rule, path)
    return file_problems


def _refuse_dependents(found: Mapping[str, Segment], refused: dict[str, SegmentError]) -> None:
    """Refuse every segment that refers, at any depth, to a refused one (naming the first link)."""
    changed = True
    while changed:
        changed = False
        for name, segment in found.items():
            if name in refused:
                continue
            for ref in referenced_segments(segment.rule):
                if ref.name in refused:
                    cause = refused[ref.name]
                    refused[name] = SegmentError(
                        segment.path,
                        ref.line or None,
                        f"segment {name!r} cannot be used: it refers to segment {ref.name!r}, "
                        f"which has a problem ({cause.location}: {cause.detail})",
                    )
                    changed = True
                    break


def _cycles(segments: Mapping[str, Segment]) -> list[tuple[SegmentError, list[str]]]:
    """One error per cycle, at the ``segment:`` line that closes it, with the cycle's members."""
    problems = []
    state: dict[str, str] = {}  # "active" while on the path, "done" after
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        """``path``: the segments being visited, ``name`` last."""
        state[name] = "active"
        for ref in referenced_segments(segments[name].rule):
            if ref.name not in segments:
                continue
            if state.get(ref.name) == "active":
                cycle = path[path.index(ref.name) :]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    chain = " → ".join([*cycle, ref.name])
                    error = SegmentError(
                        segments[name].path,
                        ref.line or None,
                        f"segments refer to each other in a cycle: {chain}",
                    )
                    problems.append((error, cycle))
            elif ref.name not in state:
                visit(ref.name, [*path, ref.name])
        state[name] = "done"

    for name in segments:
        if name not in state:
            visit(name, [name])
    return problems


# --- queries ----------------------------------------------------------------------------


def segment_condition(
    segments: Mapping[str, Segment], name: str, *, now: datetime
) -> sa.ColumnElement[bool]:
    """The condition of segment ``name`` over ``merchants`` (never NULL)."""
    if isinstance(segments, SegmentSet):
        segments.get_segment(name)
    return rule_condition(SegmentRef(name), now=now, segments=segments)


def count_statement(segments: Mapping[str, Segment], name: str, *, now: datetime) -> sa.Select:
    return (
        sa.select(sa.func.count())
        .select_from(merchants)
        .where(segment_condition(segments, name, now=now))
    )


def members_statement(
    segments: Mapping[str, Segment], name: str, *, now: datetime, limit: int | None = None
) -> sa.Select:
    query = (
        sa.select(merchants)
        .where(segment_condition(segments, name, now=now))
        .order_by(merchants.c.id)
    )
    return query.limit(limit) if limit is not None else query


def count_segment(
    engine: Engine, segments: Mapping[str, Segment], name: str, *, now: datetime
) -> int:
    """How many merchants are in segment ``name`` at ``now`` (one query)."""
    with engine.connect() as conn:
        return int(conn.execute(count_statement(segments, name, now=now)).scalar_one())


def segment_members(
    engine: Engine,
    segments: Mapping[str, Segment],
    name: str,
    *,
    now: datetime,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The merchants of segment ``name`` (every column), by id."""
    with engine.connect() as conn:
        rows = conn.execute(members_statement(segments, name, now=now, limit=limit))
        return [dict(row._mapping) for row in rows]


@dataclass(frozen=True)
class Explanation:
    sql: str
    params: dict[str, Any]
    plan: list[str]


def explain_segment(
    engine: Engine, segments: Mapping[str, Segment], name: str, *, now: datetime
) -> Explanation:
    """The SQL of ``segment count`` with placeholders, its parameters and the database's plan."""
    statement = count_statement(segments, name, now=now)
    compiled = statement.compile(
        dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    with engine.connect() as conn:
        rows = conn.execute(Explain(statement)).all()
    if engine.dialect.name == "sqlite":
        # (id, parent, notused, detail): indent children under their parent.
        depth: dict[int, int] = {0: 0}
        plan = []
        for row in rows:
            depth[row[0]] = depth.get(row[1], 0) + 1
            plan.append("  " * (depth[row[0]] - 1) + str(row[3]))
    else:
        plan = [str(row[0]) for row in rows]
    return Explanation(str(compiled), dict(compiled.params), plan)
