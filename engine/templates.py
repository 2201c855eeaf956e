"""Email templates: sandboxed Jinja2, front matter, locale variants, CSS inlined once, a text part.

The only module that imports jinja2 and premailer. A ``TemplateSet`` prepares
each template once and caches it:

1. the file's YAML front matter gives ``subject`` (required) and ``preheader``;
2. ``{% extends %}`` and literal ``{% include %}`` are flattened into one source,
   so that premailer sees the whole document (the styles live in the layout);
3. Jinja syntax is swapped for inert placeholders, premailer inlines the CSS,
   the placeholders are swapped back: one inlining per template, never per message;
4. the same protected source is turned into a text template (links as
   ``text (url)``) unless a hand-written ``NAME.txt`` exists.

Rendering a message is then two or three plain Jinja renders. When one fails,
the original (unflattened) template is rendered again to name the file and line
where the author made the mistake.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
import secrets
import string
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from html.parser import HTMLParser
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined, TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from engine import formatting
from engine.errors import TemplateError
from engine.yamlfile import YamlSyntaxError, parse_yaml

LOCALES = ("id", "en")
SHARED_DIRS = ("layouts", "partials")
FRONT_MATTER_KEYS = ("subject", "preheader")

MAX_OUTPUT = 1_000_000  # characters of one rendered part
MAX_STRING = 100_000  # characters of any string built while rendering
MAX_INT_BITS = 256  # integers beyond ~10**77 are refused
MAX_INCLUDE_DEPTH = 12
MAX_RANGE_ITEMS = 100_000  # items that range() may produce in one rendered part


# --- the sandbox ---------------------------------------------------------------


class _Namespace(Namespace):
    """``namespace()`` whose attributes cannot grow into huge strings through a loop."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(value)
        super().__setitem__(name, value)


def _check_size(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_STRING:
        raise SecurityError(f"a value longer than {MAX_STRING:,} characters is not allowed")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise SecurityError("a number this large is not allowed")
    return value


def _check_width(width: Any) -> None:
    if isinstance(width, int) and abs(width) > MAX_STRING:
        raise SecurityError(f"a width above {MAX_STRING:,} is not allowed")


_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBERS = re.compile(r"\d+")


def _check_format_string(fmt: str) -> None:
    """Refuse ``%`` and ``{}`` specs with huge widths (``'%0999999999d'``) or ``*`` widths."""
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                raise SecurityError("a `*` width in a format string is not allowed")
            if part and int(part) > MAX_STRING:
                raise SecurityError(f"a format width above {MAX_STRING:,} is not allowed")
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return
    for _literal, _field, spec, _conv in fields:
        for number in _NUMBERS.findall(spec or ""):
            if int(number) > MAX_STRING:
                raise SecurityError(f"a format width above {MAX_STRING:,} is not allowed")


def _safe_multiply(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        sequence = isinstance(seq, str | bytes | list | tuple) and isinstance(times, int)
        if sequence and len(seq) * max(times, 0) > MAX_STRING:
            raise SecurityError(
                f"repeating a value {times:,} times would exceed {MAX_STRING:,} characters"
            )
    numbers = isinstance(left, int) and isinstance(right, int)
    if numbers and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise SecurityError("a number this large is not allowed")
    return left * right


def _safe_power(left: Any, right: Any) -> Any:
    numbers = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
    if numbers and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
        raise SecurityError("a number this large is not allowed")
    try:
        return left**right
    except OverflowError:
        raise SecurityError("a number this large is not allowed") from None


def _safe_modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_format_string(left)
        return _check_size(left % right)
    return left % right


def _safe_add(left: Any, right: Any) -> Any:
    return _check_size(left + right)


_BINOPS = {"*": _safe_multiply, "**": _safe_power, "%": _safe_modulo, "+": _safe_add}
# str methods that can turn a short string into a huge one.
_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus arithmetic and string methods that cannot build huge values."""

    intercepted_binops = frozenset(_BINOPS)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        handler = _BINOPS.get(operator)
        if handler is None:
            return super().call_binop(context, operator, left, right)
        return handler(left, right)

    def wrap_str_format(self, value: Any) -> Any:
        # The sandbox hands out str.format as a wrapper; check the widths of its specs first.
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_string(value.__self__)
        return wrapped

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _WIDTH_METHODS and args:
                _check_width(args[0])
            elif name == "expandtabs":
                size = args[0] if args else kwargs.get("tabsize", 8)
                if isinstance(size, int) and len(owner) * size > MAX_STRING:
                    raise SecurityError("expanding tabs this much is not allowed")
            elif name == "replace" and len(args) >= 2:
                old, new = args[0], args[1]
                if isinstance(old, str) and isinstance(new, str):
                    count = owner.count(old) if old else len(owner) + 1
                    if len(owner) + count * len(new) > MAX_STRING:
                        raise SecurityError(f"this replace would exceed {MAX_STRING:,} characters")
            elif name in ("format", "format_map"):
                _check_format_string(owner)
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def _filter_center(value: Any, width: int = 80) -> str:
    _check_width(width)
    return str(value).center(width)


def _filter_indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False):
    if isinstance(width, str) and len(width) > 100:
        raise SecurityError("an indent this long is not allowed")
    _check_width(width)
    return _check_size(jinja2.filters.do_indent(value, width, first, blank))


def _filter_format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format_string(str(value))
    return _check_size(jinja2.filters.do_format(value, *args, **kwargs))


def _filter_replace(eval_ctx: Any, value: Any, old: str, new: str, count: int | None = None):
    text, old, new = str(value), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * len(new) > MAX_STRING:
        raise SecurityError(f"this replace would exceed {MAX_STRING:,} characters")
    return jinja2.filters.do_replace(eval_ctx, value, old, new, count)


_filter_replace = jinja2.pass_eval_context(_filter_replace)


def _context_locale(context: Any) -> str:
    return context.get("locale") or "id"


def _context_timezone(context: Any) -> str | None:
    merchant = context.get("merchant")
    if isinstance(merchant, Mapping):
        return merchant.get("timezone")
    return None


def _defined(value: Any) -> Any:
    """A missing variable handed to one of our filters is the missing-variable error."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


@jinja2.pass_context
def _rupiah(context: Any, value: Any) -> str:
    return formatting.rupiah(_defined(value))


@jinja2.pass_context
def _number(context: Any, value: Any) -> str:
    return formatting.number(_defined(value), _context_locale(context))


@jinja2.pass_context
def _percent(context: Any, value: Any) -> str:
    return formatting.percent(_defined(value), _context_locale(context))


@jinja2.pass_context
def _date(context: Any, value: Any, format: str = "long") -> str:
    return formatting.format_date(
        _defined(value), _context_locale(context), _context_timezone(context), format
    )


@jinja2.pass_context
def _datetime(context: Any, value: Any, format: str = "long") -> str:
    return formatting.format_datetime(
        _defined(value), _context_locale(context), _context_timezone(context), format
    )


class _Undefined(StrictUndefined):
    """StrictUndefined that names the missing key and the nearest ones that exist."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if self._undefined_hint is None and isinstance(obj, Mapping) and isinstance(name, str):
            keys = sorted(k for k in obj if isinstance(k, str))
            close = difflib.get_close_matches(name, keys, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(keys)}"
            return f"no field {name!r} here ({hint})"
        return super()._undefined_message


# --- front matter ----------------------------------------------------------------


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


class _Loader(jinja2.FileSystemLoader):
    """Reads templates under ``templates/``; email templates lose their front matter."""

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".html") and source.startswith(("---", "\ufeff---")):
            # A broken front matter is reported by TemplateSet, which reads it itself.
            with contextlib.suppress(TemplateError):
                _front, source = split_front_matter(Path(filename), source)
        return source, filename, uptodate


# --- flattening ------------------------------------------------------------------


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


# --- protecting Jinja from premailer -----------------------------------------------


_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_DOCTYPE = re.compile(r"^\s*(<!doctype[^>]*>)", re.I)


class _Protected:
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


def _loosen(piece: str) -> str:
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


# --- HTML → text template ----------------------------------------------------------


_BLOCK_TAGS = {
    "p", "div", "table", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "blockquote", "section", "article", "header", "footer", "center", "pre",
}  # fmt: skip
_SKIP_TAGS = {"head", "style", "script", "title"}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
_HIDDEN = re.compile(r"display\s*:\s*none", re.I)


class _TextConverter(HTMLParser):
    """HTML → readable text; links become ``text (url)``; hidden and head elements vanish."""

    def __init__(self, statements: frozenset[str] = frozenset()) -> None:
        super().__init__(convert_charrefs=True)
        self.statements = statements  # placeholders of {% %} tags: always kept, for balance
        self.out: list[str] = []
        self.skip: list[str] = []  # stack of tags whose content is skipped
        self.links: list[tuple[str | None, int]] = []
        self.lists: list[dict | None] = []  # open lists: <ol> item markers, None for <ul>

    def _keep_statements(self, text: str | None) -> None:
        """Text that is not shown still carries its {% %} tags, so that the text template balances."""
        if text and self.statements:
            self.out.extend(p for p in _PLACEHOLDER.findall(text) if p in self.statements)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for key, value in attrs:
            self._keep_statements(key)
            if key != "href":
                self._keep_statements(value)
        if self.skip:
            if tag not in _VOID_TAGS:
                self.skip.append(tag)
            return
        hidden = (
            tag in _SKIP_TAGS
            or _HIDDEN.search(attributes.get("style") or "")
            or ("preheader" in (attributes.get("class") or "").split())
        )
        if hidden:
            if tag not in _VOID_TAGS:
                self.skip.append(tag)
            return
        if tag in _BLOCK_TAGS:
            self.out.append("\n\n")
        if tag == "br":
            self.out.append("\n")
        elif tag == "li":
            current = self.lists[-1] if self.lists else None
            if current is not None:
                current["markers"].append(len(self.out))
                self.out.append(f"\n{len(current['markers'])}. ")
            else:
                self.out.append("\n- ")
        elif tag in ("ol", "ul"):
            self.lists.append({"markers": [], "dynamic": False} if tag == "ol" else None)
        elif tag == "hr":
            self.out.append("\n\n----------\n\n")
        elif tag == "img" and attributes.get("alt"):
            self.out.append(attributes["alt"] or "")
        elif tag == "a":
            self.links.append((attributes.get("href"), len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if self.skip[-1] == tag:
                self.skip.pop()
            return
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = " ".join("".join(self.out[start:]).split())
            if href and not href.startswith("#"):
                target = href[len("mailto:") :] if href.startswith("mailto:") else href
                del self.out[start:]
                self.out.append(target if label in ("", target, href) else f"{label} ({target})")
        if tag in ("ol", "ul") and self.lists:
            closed = self.lists.pop()
            if closed is not None and closed["dynamic"]:
                # A loop or condition decides how many items there are: numbers
                # written now would be wrong, so the items become bullets.
                for index in closed["markers"]:
                    self.out[index] = "\n- "
        if tag in _BLOCK_TAGS:
            self.out.append("\n\n")
        elif tag == "tr":
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")

    def handle_data(self, data: str) -> None:
        if self.skip:
            self._keep_statements(data)
            return
        if self.statements and any(p in self.statements for p in _PLACEHOLDER.findall(data)):
            for open_list in self.lists:
                if open_list is not None:
                    open_list["dynamic"] = True
        self.out.append(re.sub(r"[ \t\r\n\f]+", " ", data))

    def text(self) -> str:
        return "".join(self.out)


_PLACEHOLDER = re.compile(r"jjx\d{5}x")


def html_to_text(html: str, statements: frozenset[str] = frozenset()) -> str:
    """A readable text version of an HTML document (used on the protected template source)."""
    parser = _TextConverter(statements)
    parser.feed(html)
    parser.close()
    return parser.text()


def tidy_text(text: str) -> str:
    """Per message: trim each line and keep at most one empty line in a row."""
    # A plain loop over lines: several times faster than the equivalent regexes here.
    out: list[str] = []
    blank = True
    for line in text.replace("\xa0", " ").replace("\u200c", "").split("\n"):
        line = line.strip(" \t\r")
        if line:
            out.append(line)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


# --- templates -------------------------------------------------------------------


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
        raw = _read(path)
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
        protected = _Protected(flat)
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
            loose = _Protected("")
            loose.pieces = [_loosen(piece) for piece in protected.pieces]
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
        try:
            # Subject and preheader in one render (one context instead of two).
            subject, _sep, preheader_text = _render_capped(self.heading, ctx).partition(
                self._separator
            )
            subject = subject.strip()
            preheader = preheader_text.strip() if self.preheader is not None else None
        except Exception:
            subject = self._render_line(self.subject, ctx, self.front.subject_line, "subject")
            preheader = (
                self._render_line(self.preheader, ctx, self.front.preheader_line, "preheader")
                if self.preheader is not None
                else None
            )
        ctx["subject"] = subject
        ctx["preheader"] = preheader or ""
        try:
            html = _render_capped(self.html, ctx)
        except Exception as exc:
            raise self._locate(exc, self.original, ctx) from None
        try:
            text = _render_capped(self.text, ctx)
        except Exception as exc:
            if self.text_path is not None:
                raise self._error_from(exc) from None
            raise self._locate(exc, self.original, ctx) from None
        return RenderedTemplate(subject, preheader, html, tidy_text(text))

    def _render_line(
        self, template: jinja2.Template, ctx: dict, line: int | None, what: str
    ) -> str:
        try:
            return _render_capped(template, ctx).strip()
        except Exception as exc:
            raise TemplateError(self.path, line, f"in the {what}: {_reason(exc)}") from None

    def _locate(self, exc: Exception, original: jinja2.Template, ctx: dict) -> TemplateError:
        """Render the original template again so the error names the author's file and line."""
        if isinstance(exc, TemplateError):
            return exc
        try:
            _render_capped(original, ctx)
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


_range_budget: ContextVar[list[int] | None] = ContextVar("range_budget", default=None)


def _budgeted_range(*args: int) -> range:
    """``range`` for templates: at most ``MAX_RANGE_ITEMS`` items in one rendered part.

    Loops that print nothing escape the output cap; nested ``range`` loops are the
    one way a template can spin for minutes, so their items share one budget.
    """
    items = range(*args)
    budget = _range_budget.get()
    spent = len(items) + (0 if budget is None else budget[0])
    if spent > MAX_RANGE_ITEMS:
        raise SecurityError(
            f"range() would produce more than {MAX_RANGE_ITEMS:,} items in one message"
        )
    if budget is not None:
        budget[0] = spent
    return items


def _render_capped(template: jinja2.Template, ctx: Mapping[str, Any]) -> str:
    """Render, refusing output above ``MAX_OUTPUT`` while it is produced (checked every 256 pieces)."""
    pieces = template.root_render_func(template.new_context(ctx))  # new_context copies ctx
    parts: list[str] = []
    size = 0
    budget_token = _range_budget.set([0])
    try:
        while True:
            batch = list(islice(pieces, 256))
            if not batch:
                break
            size += sum(map(len, batch))
            if size > MAX_OUTPUT:
                raise SecurityError(f"the output is longer than {MAX_OUTPUT:,} characters")
            parts.extend(batch)
    except Exception:
        # Re-raised with the traceback rewritten to template files and lines.
        template.environment.handle_exception()
    finally:
        _range_budget.reset(budget_token)
    return "".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(path, None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise TemplateError(path, None, f"cannot be read ({exc.strerror})") from None


def _make_env(root: Path, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        loader=_Loader(str(root)),
        undefined=_Undefined,
        autoescape=autoescape,
        auto_reload=False,
        cache_size=400,
    )
    env.globals.pop("lipsum", None)  # can produce text of any length
    env.globals["namespace"] = _Namespace
    env.globals["range"] = _budgeted_range
    env.filters.update(
        center=_filter_center,
        indent=_filter_indent,
        format=_filter_format,
        replace=_filter_replace,
        rupiah=_rupiah,
        number=_number,
        percent=_percent,
        date=_date,
        datetime=_datetime,
    )
    return env


class TemplateSet:
    """The project's ``templates/`` folder; each template is prepared once and cached."""

    def __init__(self, templates_dir: Path, default_locale: str) -> None:
        self.root = Path(templates_dir).resolve()
        self.default_locale = default_locale
        self.html_env = _make_env(self.root, autoescape=True)
        self.text_env = _make_env(self.root, autoescape=False)
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

    def _source(self, relative: str) -> str:
        path = self.root / relative
        if not path.is_file():
            raise TemplateError(path, None, "template not found")
        text = _read(path)
        if relative.endswith(".html") and text.startswith(("---", "\ufeff---")):
            _front, text = split_front_matter(path, text)
        # Comments go, their line breaks stay: errors found here can still name lines.
        return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)

    def flatten(self, relative: str, depth: int = 0, seen: tuple[str, ...] = ()) -> str:
        """One source with ``{% extends %}`` resolved and literal ``{% include %}`` pasted in."""
        path = self.root / relative
        if depth > MAX_INCLUDE_DEPTH or relative in seen:
            raise TemplateError(path, None, "layouts or partials include each other in a loop")
        src = self._source(relative)
        self.compile(relative)  # syntax errors of layouts and partials, with their own line
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
            if not (self.root / named).is_file() and not (kind == "include" and literal.group(3)):
                # Named here, at the line that asks for it (the missing file has no line).
                raise TemplateError(
                    path, line, f"{kind} {named!r}: there is no {self.root / named}"
                )
            if kind == "extends":
                parent = named
                continue
            out.append(src[pos : match.start()])
            included = named
            if literal.group(3) and not (self.root / included).is_file():
                pass  # ignore missing
            else:
                body = self.flatten(included, depth + 1, seen)
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
        parent_flat = self.flatten(parent, depth + 1, seen)
        return _substitute(parent_flat, _all_blocks(flat), _open_tags(flat))
