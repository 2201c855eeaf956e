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
    """The project's segments by name (the file stem), all valid and free of cycles."""

    def __init__(self, segments: Mapping[str, Segment], directory: Path | None = None) -> None:
        self._segments = dict(sorted(segments.items()))
        self.directory = directory

    def __getitem__(self, name: str) -> Segment:
        return self._segments[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._segments)

    def __len__(self) -> int:
        return len(self._segments)

    def get_segment(self, name: str) -> Segment:
        """The segment ``name``, or a ``SegmentError`` listing the segments there are."""
        if name not in self._segments:
            known = ", ".join(self._segments) or "none"
            raise SegmentError(
                self.directory or Path("segments"),
                None,
                f"no segment named {name!r} (segments: {known})",
            )
        return self._segments[name]


def segment_files(segments_dir: Path) -> list[Path]:
    if not segments_dir.is_dir():
        return []
    return sorted(p for p in segments_dir.glob("*.yaml") if p.is_file())


def load_segments(segments_dir: Path) -> SegmentSet:
    """Load and validate every ``*.yaml`` in ``segments_dir``.

    Raises ``ProblemList`` of ``SegmentError`` with every mistake of every file
    (bad YAML, unknown keys, fields, metrics or operators, wrong values, missing
    segments, cycles), each with its file and line. A missing folder is an empty set.
    """
    segments_dir = Path(segments_dir)
    files = segment_files(segments_dir)
    names = {path.stem for path in files}
    problems: list[SegmentError] = []
    found: dict[str, Segment] = {}
    for path in files:
        try:
            doc = load_yaml(path)
        except YamlSyntaxError as exc:
            problems.append(SegmentError(path, exc.line, str(exc)))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(SegmentError(path, None, f"cannot be read: {exc}"))
            continue
        file_problems = check_segment_keys(doc)
        rule = None
        if isinstance(doc.data, dict) and "rules" in doc.data:
            try:
                rule = parse_rule(doc, ("rules",), known_segments=names)
            except ProblemList as exc:
                file_problems.extend(exc.problems)
        problems.extend(file_problems)
        if rule is not None and not file_problems:
            description = doc.data.get("description") or ""
            found[path.stem] = Segment(path.stem, description.strip(), rule, path)
    problems.extend(_cycles(found))
    if problems:
        raise ProblemList(sorted(problems, key=lambda p: (str(p.path), p.line or 0)))
    return SegmentSet(found, segments_dir)


def _cycles(segments: Mapping[str, Segment]) -> list[SegmentError]:
    """One error per cycle, at the ``segment:`` line that closes it."""
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
                    problems.append(
                        SegmentError(
                            segments[name].path,
                            ref.line or None,
                            f"segments refer to each other in a cycle: {chain}",
                        )
                    )
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
