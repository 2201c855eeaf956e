"""The YAML front matter of an email template (``subject``, ``preheader``) and the loader that strips it."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from engine.errors import TemplateError
from engine.yamlfile import YamlSyntaxError, parse_yaml

FRONT_MATTER_KEYS = ("subject", "preheader")


_FENCE = re.compile(r"^---[ \t]*\r?$")


@dataclass(frozen=True)
class FrontMatter:
    subject: str
    subject_line: int
    preheader: str | None
    preheader_line: int | None
    lines: int  # how many lines the front matter takes, fences included


def split_front_matter(path: Path, text: str) -> tuple[FrontMatter, str]:
    """``(front matter, body)``; the body keeps its line numbers (the front matter becomes a comment)."""
    lines = text.split("\n")
    if not lines or not _FENCE.match(lines[0].lstrip("\ufeff")):
        raise TemplateError(
            path,
            1,
            'an email template must start with a front matter: "---", subject: "...", "---"',
        )
    end = next((i for i in range(1, len(lines)) if _FENCE.match(lines[i])), None)
    if end is None:
        raise TemplateError(path, 1, 'the front matter is not closed with a "---" line')
    try:
        doc = parse_yaml("\n".join(lines[1:end]), path)
    except YamlSyntaxError as exc:
        raise TemplateError(path, (exc.line or 0) + 1, str(exc)) from None
    data = doc.data
    if not isinstance(data, dict):
        raise TemplateError(path, 2, "the front matter must be a mapping with at least `subject`")
    for key in data:
        if key not in FRONT_MATTER_KEYS:
            raise TemplateError(
                path,
                doc.key_line((key,)) + 1,
                f"unknown front matter key {key!r} (valid keys: {', '.join(FRONT_MATTER_KEYS)})",
            )
    if "subject" not in data:
        raise TemplateError(path, 1, "the front matter has no `subject`")
    values: dict[str, tuple[str, int]] = {}
    for key in FRONT_MATTER_KEYS:
        if key not in data:
            continue
        value, line = data[key], doc.line((key,)) + 1
        if not isinstance(value, str) or not value.strip():
            raise TemplateError(path, line, f"`{key}` must be a non-empty text")
        values[key] = (value, line)
    subject, subject_line = values["subject"]
    preheader, preheader_line = values.get("preheader", (None, None))
    # A Jinja comment spanning exactly the front matter's lines keeps the body's
    # line numbers and renders nothing.
    body = "{#" + "\n" * (end + 1) + "#}" + "\n".join(lines[end + 1 :])
    return FrontMatter(subject, subject_line, preheader, preheader_line, end + 1), body


class TemplateLoader(jinja2.FileSystemLoader):
    """Reads templates under ``templates/``; email templates lose their front matter."""

    def get_source(self, environment, template):
        for folder in self.searchpath:
            candidate = Path(folder) / template
            if candidate.is_file():
                check_inside(candidate, Path(folder))
                break
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".html") and source.startswith(("---", "\ufeff---")):
            # A broken front matter is reported by TemplateSet, which reads it itself.
            with contextlib.suppress(TemplateError):
                _front, source = split_front_matter(Path(filename), source)
        return source, filename, uptodate


def check_inside(path: Path, root: Path) -> None:
    """Refuse a template that is a symbolic link (or inside one) leading out of ``root``."""
    target, root = path.resolve(), root.resolve()
    if target.is_relative_to(root):
        return
    if Path(os.path.normpath(path.absolute())).is_relative_to(root):
        how = f"a symbolic link to {target}"  # the name is inside; a link leads out
    else:
        how = f"the path leads to {target}"
    raise TemplateError(path, None, f"{how}, outside {root}; templates must stay in their folder")


def read_template(path: Path, root: Path) -> str:
    """The text of a template file under ``root``, or a ``TemplateError`` naming it."""
    check_inside(path, root)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(path, None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise TemplateError(path, None, f"cannot be read ({exc.strerror})") from None
