"""The bounds on the work of one message: sizes checked before allocating, a step budget, a deadline.

Every string a template builds is measured (or bounded from above) before it is
built, so that a hostile template fails with a ``SecurityError`` instead of
allocating hundreds of megabytes. The loops and calls of one message share one
budget of steps, and a wall-clock deadline is the last resort for work that no
count catches (an expensive filter inside an allowed loop).
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from contextvars import ContextVar, Token
from dataclasses import dataclass
from itertools import islice
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError
from jinja2.utils import Namespace

MAX_OUTPUT = 1_000_000  # characters of one rendered part
MAX_STRING = 100_000  # characters of any string built while rendering
MAX_INT_BITS = 256  # integers beyond ~10**77 are refused
MAX_RANGE_ITEMS = 100_000  # items that range() may produce in one message
MAX_STEPS = 100_000  # loop iterations and calls of one message, all loops together
MAX_SECONDS = 2.0  # wall-clock time of one message, the last resort

# The longest text a number can print as (a float in %f, an int under MAX_INT_BITS).
_NUMBER_TEXT = 330


@dataclass(frozen=True)
class Limits:
    """The per-message budgets (the size caps are the module's constants)."""

    steps: int = MAX_STEPS
    range_items: int = MAX_RANGE_ITEMS
    seconds: float = MAX_SECONDS


DEFAULT_LIMITS = Limits()


class Budget:
    """What one message may still spend: steps, ``range()`` items, time (a monotonic deadline)."""

    __slots__ = ("deadline", "limits", "range_items", "steps")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.steps = limits.steps
        self.range_items = limits.range_items
        # Only a timeout: the real monotonic clock, never the clock of the rules.
        self.deadline = time.monotonic() + limits.seconds

    def step(self) -> None:
        """Spend one step; past the budget or the deadline, a ``SecurityError``."""
        self.steps -= 1
        if self.steps & 15 == 0:  # the clock every 16 steps: a step can be a few microseconds
            if self.steps < 0:
                raise SecurityError(
                    f"more than {self.limits.steps:,} loop iterations and calls in one message"
                )
            self.check_time()

    def check_time(self) -> None:
        """A ``SecurityError`` once the message has taken longer than its limit."""
        if time.monotonic() > self.deadline:
            raise SecurityError(f"rendering one message took longer than {self.limits.seconds:g} s")

    def snapshot(self) -> tuple[int, int]:
        """What is left now, to ``restore`` later."""
        return self.steps, self.range_items

    def restore(self, state: tuple[int, int]) -> None:
        """Back to ``state`` with a fresh deadline (to render a failed part again and locate it)."""
        self.steps, self.range_items = state
        self.deadline = time.monotonic() + self.limits.seconds


_budget: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


def start_budget(limits: Limits) -> tuple[Budget, Token]:
    """A fresh budget for the message about to be rendered; ``end_budget`` with the token after.

    Everything rendered in between shares it: the parts of one message.
    """
    budget = Budget(limits)
    return budget, _budget.set(budget)


def end_budget(token: Token) -> None:
    """The budget before ``start_budget``."""
    _budget.reset(token)


def step() -> None:
    """One loop iteration or call of the message being rendered."""
    budget = _budget.get()
    if budget is not None:
        budget.step()


class Budgeted:
    """An iterable whose items each cost one step (what every ``{% for %}`` loops over)."""

    __slots__ = ("items",)

    def __init__(self, items: Any) -> None:
        self.items = items

    def __len__(self) -> int:
        # loop.length: sized iterables answer without being consumed.
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        budget = _budget.get()
        if budget is None:
            yield from self.items
            return
        for item in self.items:
            budget.step()
            yield item


def budgeted_range(*args: int) -> range:
    """``range`` for templates: at most ``MAX_RANGE_ITEMS`` items in one message.

    Loops that print nothing escape the output cap; nested ``range`` loops are the
    plainest way a template can spin, so their items share one budget.
    """
    items = range(*args)
    budget = _budget.get()
    if budget is None:
        if len(items) > MAX_RANGE_ITEMS:
            raise SecurityError(
                f"range() would produce more than {MAX_RANGE_ITEMS:,} items in one message"
            )
        return items
    if len(items) > budget.range_items:
        raise SecurityError(
            f"range() would produce more than {budget.limits.range_items:,} items in one message"
        )
    budget.range_items -= len(items)
    return items


# --- sizes ---------------------------------------------------------------------------


def text_size(value: Any, cap: int = MAX_STRING) -> int:
    """How long ``str(value)`` would be, from above; stops counting once past ``cap``.

    Containers that share their items (``[a, a]`` nested forty times) are measured
    without being expanded: each distinct object is measured once.
    """
    if isinstance(value, str):
        return len(value)
    try:
        return _size(value, cap, {})
    except RecursionError:
        return cap + 1


def _size(value: Any, cap: int, memo: dict[int, int]) -> int:
    if isinstance(value, str | bytes):
        return len(value) + 3
    if value is None or isinstance(value, bool | float):
        return 24
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, list | tuple | set | frozenset | dict):
        key = id(value)
        if key in memo:
            return memo[key]
        memo[key] = 5  # a container inside itself prints as [...]
        total = 13 if isinstance(value, set | frozenset) else 2  # frozenset({...})
        items = value.items() if isinstance(value, dict) else ((item, None) for item in value)
        for first, second in items:
            total += _size(first, cap, memo) + 2
            if second is not None or isinstance(value, dict):
                total += _size(second, cap, memo) + 2
            if total > cap:
                break
        memo[key] = total
        return total
    if isinstance(value, KeysView | ValuesView | ItemsView):
        return _size(list(value), cap, memo) + 12
    if isinstance(value, Namespace):
        # Printed as <Namespace {attributes}>: measured without printing.
        return _size(object.__getattribute__(value, "_Namespace__attrs"), cap, memo) + 12
    if isinstance(value, jinja2.Undefined):
        return 0
    return len(str(value))


def too_long(size: int, what: str) -> None:
    """Refuse, before building it, a string of ``size`` characters."""
    if size > MAX_STRING:
        raise SecurityError(f"{what} would be longer than {MAX_STRING:,} characters")


def check_size(value: Any) -> Any:
    """Refuse a value that is already too large (a string, a sequence or an integer)."""
    if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_STRING:
        raise SecurityError(f"a value longer than {MAX_STRING:,} characters is not allowed")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise SecurityError("a number this large is not allowed")
    return value


def check_width(width: Any) -> None:
    """Refuse a padding width above ``MAX_STRING``."""
    if isinstance(width, int) and abs(width) > MAX_STRING:
        raise SecurityError(f"a width above {MAX_STRING:,} is not allowed")


def check_text(value: Any, what: str = "this value as text") -> None:
    """Refuse a value whose text (``str(value)``) would be too long, before it is made."""
    if not isinstance(value, str):
        too_long(text_size(value), what)


# --- format strings ------------------------------------------------------------------

_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%]?)"
)
_NUMBERS = re.compile(r"\d+")


def check_format_string(fmt: str) -> None:
    """Refuse ``%`` and ``{}`` specs with huge widths (``'%0999999999d'``) or ``*`` widths."""
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups()[:2]:
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


def _widest_argument(values: Any) -> int:
    if isinstance(values, Mapping):
        values = list(values.values())
    elif not isinstance(values, tuple | list):
        values = [values]
    return max((text_size(v) for v in values), default=0)


def check_percent(fmt: str, values: Any) -> None:
    """``fmt % values`` is refused before it is built if its result could be too long."""
    check_format_string(fmt)
    widest = None
    size = len(fmt)
    for match in _PERCENT_SPEC.finditer(fmt):
        width, precision, kind = match.groups()
        if kind == "%":
            continue
        field = max(int(width or 0), int(precision or 0))
        if kind in ("s", "r", "a", ""):
            if widest is None:
                widest = _widest_argument(values)
            # repr() escapes: up to 4 characters for one.
            field = max(field, widest * (4 if kind in ("r", "a") else 1))
        else:
            field += _NUMBER_TEXT
        size += field
        too_long(size, "this formatted text")


def check_str_format(fmt: str, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """``fmt.format(*args, **kwargs)`` is refused before it is built if it could be too long."""
    check_format_string(fmt)
    try:
        fields = [f for f in string.Formatter().parse(fmt) if f[1] is not None]
    except ValueError:
        return  # str.format raises the same error itself
    if not fields:
        return
    values = [*args, *kwargs.values()]
    widest = _widest_argument(values)
    nested = max((abs(v) for v in values if isinstance(v, int)), default=0)
    size = len(fmt)
    for _literal, _name, spec, conversion in fields:
        numbers = [int(n) for n in _NUMBERS.findall(spec or "")]
        if "{" in (spec or ""):
            numbers.append(nested)  # a width taken from the arguments
        shown = widest * (4 if conversion in ("r", "a") else 1)  # repr() escapes
        size += max([shown, *numbers]) + _NUMBER_TEXT
        too_long(size, "this formatted text")


# --- rendering -----------------------------------------------------------------------


def render_capped(template: jinja2.Template, ctx: Mapping[str, Any]) -> str:
    """Render, refusing output above ``MAX_OUTPUT`` while it is produced (checked every 256 pieces)."""
    pieces = template.root_render_func(template.new_context(ctx))  # new_context copies ctx
    parts: list[str] = []
    size = 0
    own = _budget.get() is None
    token = _budget.set(Budget(DEFAULT_LIMITS)) if own else None
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
        if token is not None:
            _budget.reset(token)
    return "".join(parts)
