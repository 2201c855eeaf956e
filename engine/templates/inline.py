"""CSS inlining once per template: Jinja hidden from premailer, inlined, then put back."""

from __future__ import annotations

import re
from pathlib import Path

from engine.errors import TemplateError

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_DOCTYPE = re.compile(r"^\s*(<!doctype[^>]*>)", re.I)


class Protected:
    """A source with each Jinja construct replaced by a lower-case, URL- and CSS-safe word."""

    def __init__(self, source: str) -> None:
        self.pieces: list[str] = []
        self.text = _JINJA.sub(self._hide, source)

    def _hide(self, match: re.Match) -> str:
        self.pieces.append(match.group(0))
        return f"jjx{len(self.pieces) - 1:05d}x"

    def statements(self) -> frozenset[str]:
        return frozenset(
            f"jjx{i:05d}x" for i, piece in enumerate(self.pieces) if piece.startswith("{%")
        )

    def restore(self, text: str, *, path: Path, complete: bool = True) -> str:
        seen: set[int] = set()

        def put(match: re.Match) -> str:
            index = int(match.group(1))
            seen.add(index)
            return self.pieces[index]

        # An attribute-name placeholder ({% if %} between attributes) comes back as name="".
        restored = re.sub(r'jjx(\d{5})x(?:="")?', put, text)
        missing = [self.pieces[i] for i in range(len(self.pieces)) if i not in seen]
        if missing and complete:
            raise TemplateError(
                path,
                None,
                f"Jinja syntax {missing[0][:40]!r} cannot stand where the CSS inliner removes it "
                "(inside <style> or <head>?); move it into the body",
            )
        return restored


def loosen(piece: str) -> str:
    """``{%- x -%}`` → ``{% x %}`` (and the same for ``{{- -}}``)."""
    if piece[:3] in ("{%-", "{{-", "{%+"):
        piece = piece[:2] + piece[3:]
    if piece[-3:] in ("-%}", "-}}", "+%}"):
        piece = piece[:-3] + piece[-2:]
    return piece


def inline_css(html: str) -> str:
    """Inline ``<style>`` rules into ``style`` attributes (media queries stay in a <style>)."""
    import premailer

    doctype = _DOCTYPE.match(html)
    out = premailer.Premailer(
        html,
        keep_style_tags=False,
        remove_classes=False,
        strip_important=False,
        disable_validation=True,
        allow_network=False,
        cssutils_logging_level=50,
    ).transform(pretty_print=False)
    if doctype and not _DOCTYPE.match(out):
        out = doctype.group(1) + "\n" + out
    return out
