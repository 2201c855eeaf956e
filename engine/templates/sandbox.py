"""The sandbox: an immutable Jinja2 environment whose operators, methods, loops and filters are bounded.

What one message may do (the limits themselves live in ``limits``): no Python
internals, no mutation; a rendered part of at most ``MAX_OUTPUT`` characters; no
string or sequence longer than ``MAX_STRING`` (refused before it is built); no
integer above ``MAX_INT_BITS`` bits; loops and calls share a budget of
``MAX_STEPS`` steps and ``range()`` one of ``MAX_RANGE_ITEMS`` items; and the
whole message must render within ``MAX_SECONDS``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from engine.templates.filters import concat, sandbox_filters
from engine.templates.frontmatter import TemplateLoader
from engine.templates.limits import (
    MAX_INT_BITS,
    MAX_STRING,
    Budgeted,
    budgeted_range,
    check_percent,
    check_size,
    check_str_format,
    check_text,
    check_width,
    step,
    text_size,
    too_long,
)

# Filters the sandbox puts into every template (see _Bounds); not meant for authors.
_LOOP_FILTER = "_budgeted_loop"
_CONCAT_FILTER = "_bounded_concat"


class _Namespace(Namespace):
    """``namespace()`` whose attributes cannot grow into huge strings through a loop."""

    def __setitem__(self, name: str, value: Any) -> None:
        check_size(value)
        super().__setitem__(name, value)


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
        check_percent(left, right)
        return check_size(left % right)
    return left % right


def _safe_add(left: Any, right: Any) -> Any:
    sequences = str | bytes | list | tuple
    if isinstance(left, sequences) and isinstance(right, sequences):
        too_long(len(left) + len(right), "this sum")
    return check_size(left + right)


_BINOPS = {"*": _safe_multiply, "**": _safe_power, "%": _safe_modulo, "+": _safe_add}
# str methods that can turn a short string into a huge one.
_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


def _check_method(owner: str | bytes, name: str, args: tuple, kwargs: dict) -> tuple:
    """Refuse a str/bytes method call whose result would be too long, before it runs.

    Returns the arguments to call it with (an iterator given to ``join`` was read here).
    """
    if name in _WIDTH_METHODS and args:
        check_width(args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and len(owner) * size > MAX_STRING:
            raise SecurityError("expanding tabs this much is not allowed")
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str | bytes) and isinstance(new, str | bytes):
            count = owner.count(old) if old else len(owner) + 1
            too_long(len(owner) + count * len(new), "this replace")
    elif name == "join" and args:
        items = args[0] if isinstance(args[0], str) else list(args[0])
        args = (items, *args[1:])
        size = len(owner) * max(len(items) - 1, 0)
        too_long(size, "this join")
        for item in items:
            size += text_size(item)
            too_long(size, "this join")
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((text_size(v) for v in args[0].values()), default=1)
        too_long(len(owner) * max(longest, 1), "this translate")
    return args


class _Bounds(NodeTransformer):
    """Every ``{% for %}`` iterates through the step budget; every ``~`` is measured first."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        """Its items through the step budget."""
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        """``a ~ b`` as the measured concatenation."""
        self.generic_visit(node)
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus operators, methods, loops and calls that cannot run away."""

    intercepted_binops = frozenset(_BINOPS)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Bounds().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``*``, ``**``, ``%`` and ``+`` through the bounded versions."""
        handler = _BINOPS.get(operator)
        if handler is None:
            return super().call_binop(context, operator, left, right)
        return handler(left, right)

    def wrap_str_format(self, value: Any) -> Any:
        """``str.format``/``format_map``, their result bounded before they run."""
        # The sandbox hands out str.format as a wrapper; bound its result before it runs.
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            check_str_format(fmt, () if is_map else args, mapping)
            return wrapped(*args, **kwargs)

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call costs a step; str methods that could build huge strings are checked first."""
        step()  # macros that call themselves spin without a loop
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes):
            args = _check_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        elif isinstance(__obj, LoopContext) and args:
            # loop(children) in a recursive loop: its items cost steps like any loop's.
            args = (Budgeted(args[0]), *args[1:])
        return check_size(super().call(__context, __obj, *args, **kwargs))


def _finalize(value: Any) -> Any:
    """Every ``{{ }}``: a value whose text would be too long is refused before it is made."""
    # Runs for every printed value: strings and numbers (the common case) return at once.
    if value.__class__ is str or isinstance(value, str | int | float):
        return value
    check_text(value, "this value as text")
    return value


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


def make_env(root: Path, autoescape: bool) -> _Sandbox:
    """A sandboxed environment reading templates under ``root``."""
    env = _Sandbox(
        loader=TemplateLoader(str(root)),
        undefined=_Undefined,
        autoescape=autoescape,
        auto_reload=False,
        cache_size=400,
        finalize=_finalize,
    )
    env.globals.pop("lipsum", None)  # can produce text of any length
    env.globals["namespace"] = _Namespace
    env.globals["range"] = budgeted_range
    env.filters.update(sandbox_filters(env.filters))
    env.filters[_LOOP_FILTER] = Budgeted
    env.filters[_CONCAT_FILTER] = concat
    return env
