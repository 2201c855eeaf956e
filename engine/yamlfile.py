"""YAML project files read with their positions, so every mistake can name its line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

# A document expands aliases into plain data: cap the work so that a file of nested
# aliases (a "billion laughs") is refused instead of eating memory.
MAX_NODES = 100_000
# Project files are written by hand: anything larger is a mistake (or an attack), and
# parsing 50 MB of YAML takes tens of seconds.
MAX_FILE_BYTES = 1024 * 1024


@dataclass
class YamlDocument:
    """Plain Python data plus the line (1-based) where each value starts."""

    path: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    key_lines: dict[Path_, int] = field(default_factory=dict)
    nodes: int = 0

    def line(self, loc: Sequence[str | int] = ()) -> int:
        """The line of the value at ``loc``, or of its nearest ancestor that is known."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)

    def key_line(self, loc: Sequence[str | int]) -> int:
        """The line of the mapping key at ``loc`` (falls back to ``line``)."""
        return self.key_lines.get(tuple(loc)) or self.line(loc)


class YamlSyntaxError(ValueError):
    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        super().__init__(message)


class YamlFileRefused(YamlSyntaxError):
    """The file is not read at all: too large, or a symbolic link that leaves its folder."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


def _build(
    node: yaml.Node, loc: Path_, doc: YamlDocument, active: frozenset[int] = frozenset()
) -> Any:
    doc.lines[loc] = node.start_mark.line + 1
    doc.nodes += 1
    if doc.nodes > MAX_NODES:
        raise YamlSyntaxError(
            node.start_mark.line + 1, f"the document expands to more than {MAX_NODES:,} values"
        )
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        if id(node) in active:
            raise YamlSyntaxError(
                node.start_mark.line + 1, "an alias refers to itself (the anchor is on this line)"
            )
        active = active | {id(node)}
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _build(key_node, (*loc, "<key>"), doc, active)
            doc.lines.pop((*loc, "<key>"), None)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise YamlSyntaxError(
                    key_node.start_mark.line + 1, "mapping keys must be plain names"
                )
            if key in result:
                raise YamlSyntaxError(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            doc.key_lines[(*loc, key)] = key_node.start_mark.line + 1
            result[key] = _build(value_node, (*loc, key), doc, active)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), doc, active) for i, item in enumerate(node.value)]
    try:
        return yaml.SafeLoader(" ").construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:
        # An impossible date such as 2026-13-45 (PyYAML raises a bare ValueError).
        kind = str(node.tag).rsplit(":", 1)[-1]
        raise YamlSyntaxError(
            node.start_mark.line + 1,
            f"not valid YAML: {node.value!r} is not a valid {kind} ({exc})",
        ) from None


def parse_yaml(text: str, path: Path | str = "<string>") -> YamlDocument:
    """Parse one YAML document with positions. Raises ``YamlSyntaxError`` (with a line)."""
    doc = YamlDocument(Path(path), None)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(None, f"not valid YAML: {exc}") from None
    if node is None:
        doc.data = None
        return doc
    try:
        doc.data = _build(node, (), doc)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise YamlSyntaxError(
            mark.line + 1 if mark else None, f"not valid YAML: {exc.problem}"
        ) from None
    return doc


def check_project_file(path: Path, folder: Path | None = None) -> None:
    """Refuse a file that is a symbolic link leading out of ``folder`` (its own by default)."""
    folder = (folder or path.parent).resolve()
    target = path.resolve()
    if not target.is_relative_to(folder):
        raise YamlFileRefused(
            f"a symbolic link to {target}, outside {folder}; project files must stay in their folder"
        )


def load_yaml(path: Path | str, folder: Path | None = None) -> YamlDocument:
    """Read and parse a YAML file with positions (refused before reading if too large or a link out).

    Raises ``YamlSyntaxError`` (``YamlFileRefused`` for the refusals), ``OSError`` or
    ``UnicodeDecodeError``.
    """
    path = Path(path)
    check_project_file(path, folder)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise YamlFileRefused(
            f"the file is {size / 1024 / 1024:.1f} MiB, larger than the "
            f"{MAX_FILE_BYTES // 1024 // 1024} MiB a project file may be; it was not read"
        )
    return parse_yaml(path.read_text(encoding="utf-8"), path)
