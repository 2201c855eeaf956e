"""The filters of the sandbox: Jinja's own, each string-producing one bounded before it allocates,
plus the project's formatting filters (``rupiah``, ``number``, ``percent``, ``date``, ``datetime``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError
from markupsafe import Markup, escape, soft_str

from engine import formatting
from engine.templates.limits import (
    MAX_STRING,
    check_percent,
    check_size,
    check_text,
    check_width,
    text_size,
    too_long,
)

_filters = jinja2.filters


def _text(value: Any) -> str:
    """``str(value)``, refused before it is made if it would be too long."""
    check_text(value)
    return soft_str(value)


def _center(value: Any, width: int = 80) -> str:
    check_width(width)
    text = _text(value)
    too_long(max(len(text), width if isinstance(width, int) else 0), "this centred text")
    return text.center(width)


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if isinstance(width, str) and len(width) > 100:
        raise SecurityError("an indent this long is not allowed")
    check_width(width)
    text = _text(value)
    step = len(width) if isinstance(width, str) else max(int(width), 0)
    too_long(len(text) + (text.count("\n") + 1) * step, "this indented text")
    return _filters.do_indent(text, width, first, blank)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    check_percent(_text(value), kwargs or args)
    return _filters.do_format(value, *args, **kwargs)


@jinja2.pass_eval_context
def _replace(eval_ctx: Any, value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = _text(value), _text(old), _text(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    too_long(len(text) + hits * len(new), "this replace")
    return _filters.do_replace(eval_ctx, value, old, new, count)


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: Any = "", attribute: str | int | None = None) -> str:
    items = list(value)
    if attribute is not None:
        items = list(map(_filters.make_attrgetter(eval_ctx.environment, attribute), items))
    separator = _text(d)
    size = len(separator) * max(len(items) - 1, 0)
    too_long(size, "this join")
    for item in items:
        size += text_size(item)
        too_long(size, "this join")
    return _filters.sync_do_join(eval_ctx, items, separator)


@jinja2.pass_environment
def _wordwrap(
    environment: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = _text(s)
    check_width(width)
    between = len(_text(wrapstring)) if wrapstring is not None else 2
    # Every line holds at least half its width, but for the last one of each paragraph.
    lines = 2 * len(text) // max(int(width), 1) + text.count("\n") + 2
    too_long(len(text) + lines * between, "this wordwrap")
    return _filters.do_wordwrap(
        environment, text, width, break_long_words, wrapstring, break_on_hyphens
    )


@jinja2.pass_eval_context
def _urlize(
    eval_ctx: Any,
    value: Any,
    trim_url_limit: int | None = None,
    nofollow: bool = False,
    target: str | None = None,
    rel: str | None = None,
    extra_schemes: Any = None,
) -> str:
    text = _text(value)
    words = len(text.split())
    extra = len(_text(target or "")) + len(_text(rel or "")) + 60
    # A link repeats its (escaped) address: at most 6 characters for one, plus its attributes.
    too_long(6 * len(text) + words * extra, "this urlize")
    return _filters.do_urlize(eval_ctx, value, trim_url_limit, nofollow, target, rel, extra_schemes)


@jinja2.pass_environment
def _sum(
    environment: Any, iterable: Any, attribute: str | int | None = None, start: Any = 0
) -> Any:
    items = list(iterable)
    if attribute is not None:
        items = list(map(_filters.make_attrgetter(environment, attribute), items))
    if isinstance(start, list | tuple):
        # Lists added to each other: the result must stay a value the sandbox allows.
        total = len(start) + sum(len(i) for i in items if isinstance(i, list | tuple))
        if total > MAX_STRING:
            raise SecurityError(f"a list longer than {MAX_STRING:,} items is not allowed")
    return sum(items, start)


def _bounded(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that turns its input into text: refuse an input whose text would be too long."""
    # pass_context and its kin put the context before the value.
    position = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)  # keeps jinja_pass_arg
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > position:
            check_text(args[position])
        return check_size(function(*args, **kwargs))

    return checked


# Jinja filters that start with str(value); the output is a bounded multiple of the input.
_TEXT_FILTERS = (
    "capitalize", "e", "escape", "filesizeformat", "forceescape", "lower", "pprint", "safe",
    "string", "striptags", "title", "tojson", "trim", "truncate", "upper", "urlencode",
    "wordcount", "xmlattr",
)  # fmt: skip


@jinja2.pass_eval_context
def concat(eval_ctx: Any, items: list[Any]) -> str:
    """The ``~`` operator, its result measured before it is built."""
    size = 0
    markup = False
    for item in items:
        if item.__class__ is str:
            size += len(item)
        else:
            size += text_size(item)
            markup = markup or hasattr(item, "__html__")
    too_long(size, "this text joined with `~`")
    if markup and (eval_ctx.volatile or eval_ctx.autoescape):
        # Escaping may lengthen each piece: measured again once escaped.
        pieces = [escape(item) for item in items]
        too_long(sum(map(len, pieces)), "this text joined with `~`")
        return Markup("").join(pieces)
    return "".join([item if item.__class__ is str else soft_str(item) for item in items])


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


def sandbox_filters(defaults: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """The filters of a sandboxed environment whose default filters are ``defaults``."""
    filters = {name: _bounded(defaults[name]) for name in _TEXT_FILTERS if name in defaults}
    filters.update(
        center=_center,
        indent=_indent,
        format=_format,
        replace=_replace,
        join=_join,
        wordwrap=_wordwrap,
        urlize=_urlize,
        sum=_sum,
        rupiah=_rupiah,
        number=_number,
        percent=_percent,
        date=_date,
        datetime=_datetime,
    )
    return filters
