"""Flattening ``{% extends %}`` and literal ``{% include %}`` into one source for the inliner."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import TemplateError
from engine.templates.frontmatter import read_template, split_front_matter

MAX_INCLUDE_DEPTH = 12


_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_TAG = re.compile(r"\{%(-?)\s*(block|endblock|extends|include)\b(.*?)(-?)%\}", re.S)
_LITERAL = re.compile(
    r"""^\s*(["'])([^"']+)\1(\s+ignore\s+missing)?(\s+(?:with|without)\s+context)?\s*$"""
)
_SUPER = re.compile(r"\{\{-?\s*super\(\)\s*-?\}\}")


@dataclass
class _Block:
    name: str
    open_tag: str
    close_tag: str
    start: int  # of the open tag
    body_start: int
    body_end: int
    end: int  # after the close tag


def _top_blocks(src: str) -> list[_Block]:
    """The outermost ``{% block %}`` regions of ``src`` (comments already removed)."""
    blocks: list[_Block] = []
    stack: list[tuple[str, str, int, int]] = []
    for match in _TAG.finditer(src):
        kind = match.group(2)
        if kind == "block":
            name = match.group(3).split()[0] if match.group(3).split() else ""
            stack.append((name, match.group(0), match.start(), match.end()))
        elif kind == "endblock" and stack:
            name, open_tag, start, body_start = stack.pop()
            if not stack:
                blocks.append(
                    _Block(
                        name,
                        open_tag,
                        match.group(0),
                        start,
                        body_start,
                        match.start(),
                        match.end(),
                    )
                )
    return blocks


def _all_blocks(src: str) -> dict[str, str]:
    """Every block (at any depth) of a child template: name → body."""
    found: dict[str, str] = {}
    stack: list[tuple[str, int]] = []
    for match in _TAG.finditer(src):
        if match.group(2) == "block":
            words = match.group(3).split()
            stack.append((words[0] if words else "", match.end()))
        elif match.group(2) == "endblock" and stack:
            name, body_start = stack.pop()
            found.setdefault(name, src[body_start : match.start()])
    return found


def _open_tags(src: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for match in _TAG.finditer(src):
        if match.group(2) == "block" and match.group(3).split():
            tags.setdefault(match.group(3).split()[0], match.group(0))
    return tags


def _substitute(parent: str, blocks: Mapping[str, str], open_tags: Mapping[str, str]) -> str:
    """Put a child's blocks into its (flattened) parent, the way ``{% extends %}`` does."""
    out: list[str] = []
    pos = 0
    for block in _top_blocks(parent):
        out.append(parent[pos : block.start])
        parent_body = _substitute(parent[block.body_start : block.body_end], blocks, open_tags)
        if block.name in blocks:
            body = _SUPER.sub(lambda _m, b=parent_body: b, blocks[block.name])
            open_tag = open_tags.get(block.name, block.open_tag)
        else:
            body, open_tag = parent_body, block.open_tag
        open_tag = re.sub(r"\s+required\b", "", open_tag)
        out.append(open_tag + body + block.close_tag)
        pos = block.end
    out.append(parent[pos:])
    return "".join(out)


def _source(root: Path, relative: str) -> str:
    path = root / relative
    if not path.is_file():
        raise TemplateError(path, None, "template not found")
    text = read_template(path, root)
    if relative.endswith(".html") and text.startswith(("---", "\ufeff---")):
        _front, text = split_front_matter(path, text)
    # Comments go, their line breaks stay: errors found here can still name lines.
    return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def flatten(
    root: Path,
    relative: str,
    compile: Callable[[str], object],
    depth: int = 0,
    seen: tuple[str, ...] = (),
) -> str:
    """One source with ``{% extends %}`` resolved and literal ``{% include %}`` pasted in."""
    path = root / relative
    if depth > MAX_INCLUDE_DEPTH or relative in seen:
        raise TemplateError(path, None, "layouts or partials include each other in a loop")
    src = _source(root, relative)
    compile(relative)  # syntax errors of layouts and partials, with their own line
    seen = (*seen, relative)
    parent: str | None = None
    out: list[str] = []
    pos = 0
    for match in _TAG.finditer(src):
        kind = match.group(2)
        if kind not in ("include", "extends"):
            continue
        literal = _LITERAL.match(match.group(3))
        line = src.count("\n", 0, match.start()) + 1
        if not literal or (kind == "extends" and literal.group(3)):
            raise TemplateError(
                path,
                line,
                f'`{kind}` needs one quoted template name, such as "partials/button.html"',
            )
        named = literal.group(2)
        if not (root / named).is_file() and not (kind == "include" and literal.group(3)):
            # Named here, at the line that asks for it (the missing file has no line).
            raise TemplateError(path, line, f"{kind} {named!r}: there is no {root / named}")
        if kind == "extends":
            parent = named
            continue
        out.append(src[pos : match.start()])
        included = named
        if literal.group(3) and not (root / included).is_file():
            pass  # ignore missing
        else:
            body = flatten(root, included, compile, depth + 1, seen)
            # Whitespace control on the include tag applies to the text around it.
            if match.group(1):
                out[-1] = out[-1].rstrip()
            out.append(body)
        pos = match.end()
        if match.group(4):
            rest = src[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(src[pos:])
    flat = "".join(out)
    if parent is None:
        return flat
    parent_flat = flatten(root, parent, compile, depth + 1, seen)
    return _substitute(parent_flat, _all_blocks(flat), _open_tags(flat))
