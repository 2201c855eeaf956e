"""The sandbox: an immutable Jinja2 environment whose operators, methods and filters cannot build huge values.

Limits (per message): a rendered part of at most ``MAX_OUTPUT`` characters, no
string or sequence longer than ``MAX_STRING``, no integer above ``MAX_INT_BITS``
bits, and ``range()`` producing at most ``MAX_RANGE_ITEMS`` items.
"""

from __future__ import annotations

import difflib
import math
import re
import string
from collections.abc import Mapping
from contextvars import ContextVar
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from engine import formatting
from engine.templates.frontmatter import TemplateLoader

MAX_OUTPUT = 1_000_000  # characters of one rendered part
MAX_STRING = 100_000  # characters of any string built while rendering
MAX_INT_BITS = 256  # integers beyond ~10**77 are refused
MAX_RANGE_ITEMS = 100_000  # items that range() may produce in one rendered part


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


def render_capped(template: jinja2.Template, ctx: Mapping[str, Any]) -> str:
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


def make_env(root: Path, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        loader=TemplateLoader(str(root)),
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
