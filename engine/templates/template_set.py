"""The template set: each template of ``templates/`` prepared once (front matter, flattening,
CSS inlined, text part) and cached, then rendered per message in the sandbox."""

from __future__ import annotations

import secrets
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SecurityError

from engine import formatting
from engine.config import LOCALES
from engine.errors import TemplateError
from engine.filestamp import FolderCache
from engine.templates.flatten import flatten
from engine.templates.frontmatter import read_template, split_front_matter
from engine.templates.inline import Protected, inline_css, loosen
from engine.templates.limits import (
    DEFAULT_LIMITS,
    Budget,
    Limits,
    end_budget,
    render_capped,
    start_budget,
)
from engine.templates.sandbox import make_env
from engine.templates.text import html_to_text, tidy_text

SHARED_DIRS = ("layouts", "partials")


@dataclass(frozen=True)
class RenderedTemplate:
    subject: str
    preheader: str | None
    html: str
    text: str


class EmailTemplate:
    """One prepared template variant: compiled subject, preheader, inlined HTML and text."""

    def __init__(self, templates: TemplateSet, name: str, path: Path, locale: str | None) -> None:
        self.templates = templates
        self.name = name
        self.path = path
        self.locale = locale
        env, text_env = templates.html_env, templates.text_env
        relative = path.relative_to(templates.root).as_posix()
        self.relative = relative
        raw = read_template(path, templates.root)
        self.front, _body = split_front_matter(path, raw)
        self.subject = self._compile_string(text_env, self.front.subject, self.front.subject_line)
        self.preheader = (
            self._compile_string(text_env, self.front.preheader, self.front.preheader_line)
            if self.front.preheader
            else None
        )
        # A separator no merchant value can contain by chance.
        self._separator = f"\x00{secrets.token_hex(8)}\x00"
        heading = self.front.subject + self._separator + (self.front.preheader or "")
        self.heading = self._compile_string(text_env, heading, self.front.subject_line)
        # Compile the original (and through it every layout and partial) for
        # syntax errors with their own file and line.
        self.original = templates.compile(relative)
        flat = templates.flatten(relative)
        protected = Protected(flat)
        try:
            inlined_protected = inline_css(protected.text)
        except Exception as exc:  # premailer/cssutils refuse broken CSS in many ways
            raise TemplateError(path, None, f"the CSS cannot be inlined: {exc}") from None
        inlined = protected.restore(inlined_protected, path=path)
        self.inlined_source = inlined.lstrip()
        self.html = self._compile_prepared(env, self.inlined_source)
        text_path = self._text_path()
        self.text_path = text_path
        if text_path is not None:
            self.text = templates.compile(
                text_path.relative_to(templates.root).as_posix(), text=True
            )
            self.text_source = None
        else:
            # The text is derived from the protected source, so each Jinja piece comes
            # back verbatim, now in a template that does not escape HTML.
            # From the inlined document: elements hidden by a class are hidden by style now.
            converted = html_to_text(inlined_protected, protected.statements())
            # Whitespace control ({%- -%}) would eat the line breaks of the text
            # layout; tidy_text does the whitespace work for the text part instead.
            loose = Protected("")
            loose.pieces = [loosen(piece) for piece in protected.pieces]
            self.text_source = loose.restore(converted, path=path, complete=False)
            self.text = self._compile_prepared(text_env, self.text_source)

    def _text_path(self) -> Path | None:
        stem = self.path.name[: -len(".html")]
        candidate = self.path.with_name(stem + ".txt")
        return candidate if candidate.is_file() else None

    def _compile_string(self, env: jinja2.Environment, source: str, line: int) -> jinja2.Template:
        try:
            return env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(self.path, line, f"template syntax: {exc.message}") from None

    def _compile_prepared(self, env: jinja2.Environment, source: str) -> jinja2.Template:
        try:
            return env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                self.path, None, f"cannot prepare the template after inlining CSS: {exc.message}"
            ) from None

    def render(self, context: Mapping[str, Any]) -> RenderedTemplate:
        """Render every part for one merchant. Raises ``TemplateError`` naming file and line."""
        ctx = dict(context)
        ctx.setdefault("locale", self.locale or self.templates.default_locale)
        # The parts of one message share one budget of steps, range() items and time.
        budget, token = start_budget(self.templates.limits)
        try:
            return self._render(ctx, budget)
        finally:
            end_budget(token)

    def _render(self, ctx: dict, budget: Budget) -> RenderedTemplate:
        start = budget.snapshot()
        try:
            # Subject and preheader in one render (one context instead of two).
            subject, _sep, preheader_text = render_capped(self.heading, ctx).partition(
                self._separator
            )
            subject = subject.strip()
            preheader = preheader_text.strip() if self.preheader is not None else None
        except Exception:
            budget.restore(start)
            subject = self._render_line(self.subject, ctx, self.front.subject_line, "subject")
            preheader = (
                self._render_line(self.preheader, ctx, self.front.preheader_line, "preheader")
                if self.preheader is not None
                else None
            )
        ctx["subject"] = subject
        ctx["preheader"] = preheader or ""
        start = budget.snapshot()
        try:
            html = render_capped(self.html, ctx)
        except Exception as exc:
            budget.restore(start)
            raise self._locate(exc, self.original, ctx) from None
        start = budget.snapshot()
        try:
            text = render_capped(self.text, ctx)
        except Exception as exc:
            if self.text_path is not None:
                raise self._error_from(exc) from None
            budget.restore(start)
            raise self._locate(exc, self.original, ctx) from None
        return RenderedTemplate(subject, preheader, html, tidy_text(text))

    def _render_line(
        self, template: jinja2.Template, ctx: dict, line: int | None, what: str
    ) -> str:
        try:
            return render_capped(template, ctx).strip()
        except Exception as exc:
            raise TemplateError(self.path, line, f"in the {what}: {_reason(exc)}") from None

    def _locate(self, exc: Exception, original: jinja2.Template, ctx: dict) -> TemplateError:
        """Render the original template again so the error names the author's file and line.

        The budget was set back to where the failed part started, so the original
        spends the same and fails at the same place.
        """
        if isinstance(exc, TemplateError):
            return exc
        try:
            render_capped(original, ctx)
        except Exception as again:
            return self._error_from(again)
        return self._error_from(exc)

    def _error_from(self, exc: Exception) -> TemplateError:
        if isinstance(exc, TemplateError):
            return exc
        path, line = self.path, None
        if isinstance(exc, TemplateSyntaxError) and exc.filename:
            return TemplateError(Path(exc.filename), exc.lineno, f"template syntax: {exc.message}")
        root = str(self.templates.root)
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.startswith(root):
                path, line = Path(frame.filename), frame.lineno
                break
        return TemplateError(path, line, _reason(exc))


def _reason(exc: Exception) -> str:
    if isinstance(exc, UndefinedError):
        return f"undefined: {exc.message} (give a `default` if it may be missing)"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}"
    if isinstance(exc, formatting.FormatError):
        return str(exc)
    if isinstance(exc, TemplateError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"


class TemplateSet:
    """The project's ``templates/`` folder; each template is prepared once and cached."""

    def __init__(
        self, templates_dir: Path, default_locale: str, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.root = Path(templates_dir).resolve()
        self.default_locale = default_locale
        self.limits = limits
        self.html_env = make_env(self.root, autoescape=True)
        self.text_env = make_env(self.root, autoescape=False)
        self._cache: dict[Path, EmailTemplate] = {}
        self._chosen: dict[tuple[str, str | None], EmailTemplate] = {}

    def names(self) -> list[str]:
        """Every email template name (``retention/we-miss-you``), without locale or extension."""
        if not self.root.is_dir():
            return []
        found: set[str] = set()
        for path in self.root.rglob("*.html"):
            relative = path.relative_to(self.root)
            if relative.parts[0] in SHARED_DIRS:
                continue
            found.add(self._split(relative)[0])
        return sorted(found)

    def files(self, name: str) -> dict[str | None, Path]:
        """The variants of a template: locale (or None) → file."""
        variants: dict[str | None, Path] = {}
        base = self.root / name
        for locale in LOCALES:
            path = base.with_name(f"{base.name}.{locale}.html")
            if path.is_file():
                variants[locale] = path
        plain = base.with_name(f"{base.name}.html")
        if plain.is_file():
            variants[None] = plain
        return variants

    @staticmethod
    def _split(relative: Path) -> tuple[str, str | None]:
        stem = relative.as_posix()[: -len(".html")]
        head, _, last = stem.rpartition(".")
        if head and last in LOCALES:
            return head, last
        return stem, None

    def choose(self, name: str, locale: str | None) -> tuple[Path, str | None]:
        """The file for a merchant's locale: that locale, else the default locale, else no locale."""
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise TemplateError(self.root / str(name), None, "not a template name")
        variants = self.files(name)
        for candidate in (locale, self.default_locale, None):
            if candidate in variants:
                return variants[candidate], candidate
        looked = [
            f"{name}.{loc}.html" for loc in dict.fromkeys((locale, self.default_locale)) if loc
        ]
        raise TemplateError(
            self.root / f"{name}.html",
            None,
            f"no template {name!r} (looked for {', '.join([*looked, name + '.html'])} in {self.root})",
        )

    def get(self, name: str, locale: str | None) -> EmailTemplate:
        """The prepared template for ``name`` in ``locale`` (with fallback). Raises ``TemplateError``."""
        known = self._chosen.get((name, locale))
        if known is not None:
            return known
        path, chosen = self.choose(name, locale)
        template = self._cache.get(path)
        if template is None:
            template = EmailTemplate(self, name, path, chosen)
            self._cache[path] = template
        self._chosen[(name, locale)] = template
        return template

    def variants(self) -> list[tuple[str, str | None]]:
        """Every (name, locale) pair present on disk."""
        return [(name, loc) for name in self.names() for loc in self.files(name)]

    # -- helpers for EmailTemplate --------------------------------------------

    def compile(self, relative: str, *, text: bool = False) -> jinja2.Template:
        env = self.text_env if text else self.html_env
        try:
            return env.get_template(relative)
        except TemplateSyntaxError as exc:
            path = Path(exc.filename) if exc.filename else self.root / relative
            raise TemplateError(path, exc.lineno, f"template syntax: {exc.message}") from None
        except TemplateNotFound as exc:
            raise TemplateError(
                self.root / relative, None, f"template {exc.name!r} not found"
            ) from None

    def flatten(self, relative: str) -> str:
        """One source with ``{% extends %}`` resolved and literal ``{% include %}`` pasted in."""
        return flatten(self.root, relative, self.compile)


_SHARED = FolderCache()


def shared_template_set(templates_dir: Path, default_locale: str) -> TemplateSet:
    """The folder's ``TemplateSet``, with what it prepared so far, while no file in it changes.

    Sending prepares a campaign for every run and drip step; sharing the set means a
    template is compiled and its CSS inlined once per process, not once per step
    and tick (the worker, ``simulate``), and again after an edit.
    """
    folder = Path(templates_dir)
    return _SHARED.get(
        folder, (folder, default_locale), lambda: TemplateSet(folder, default_locale)
    )
