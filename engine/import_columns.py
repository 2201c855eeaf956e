"""The columns of each import kind and how one value is checked and stored; no I/O here.

Each kind (merchants, orders, activities) is a list of columns with a converter
that turns the value as read into the value stored, or raises ``RowError`` with
the reason. The stored forms depend a little on the database: SQLite stores
timestamps and JSON as text, PostgreSQL gets ``datetime`` objects and dicts.

Validation runs for every cell of files of a million rows, so each column set a
file gives also gets a check generated for it (``compile_fast_check``): straight
code for the common case that any surprise sends back to the plain converters,
which name the problem. Both must agree; ``tests/test_import_rows.py`` checks it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from engine.addresses import EMAIL_PATTERN, normalize_email
from engine.config import LOCALES

KINDS = ("merchants", "orders", "activities")
ORDER_STATUSES = ("paid", "cancelled", "refunded")
# Timestamps outside these years are refused: they are typos or placeholders
# (0001-01-01, 9999-12-31) and would fail every render that shows them in local time.
FIRST_YEAR, LAST_YEAR = 1900, 2200


class RowError(ValueError):
    """One row is wrong; the message says why."""


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut short: a reason must stay one readable sentence."""
    text = (
        repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "a huge number"
    )
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL, a byte that was not UTF-8), or None.

    Readers check every text they give (``engine.import_rows``): a bad cell is
    a bad row, never a database error in the middle of a write.
    """
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        if 0xDC80 <= code <= 0xDCFF:  # how an undecodable byte is read (see engine.import_rows)
            return f"not UTF-8 text (the byte 0x{code - 0xDC00:02x} cannot be decoded)"
        return f"holds \\u{code:04x}, half of a UTF-16 surrogate pair, which is not text"
    return None


# --- field converters: each takes the raw value and returns the stored one ----


def _text(limit: int) -> Callable[[Any], str | None]:
    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RowError(f"expected text, got {type(value).__name__}")
        if isinstance(value, int) and value.bit_length() > 4 * limit:
            raise RowError(f"longer than {limit} characters")
        value = str(value)
        if len(value) > limit:
            raise RowError(f"longer than {limit} characters")
        return value.strip() or None

    return convert


def _email(value: Any) -> str:
    try:
        return normalize_email(value)
    except ValueError as exc:
        raise RowError(str(exc)) from None


def _locale(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if value not in LOCALES:
        raise RowError(f"locale {shown(value)} is not supported (use one of: {', '.join(LOCALES)})")
    return value


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _timezone(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in _zones():
        raise RowError(f"time zone {shown(value)} is not an IANA time zone (e.g. Asia/Jakarta)")
    return value


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (ValueError, TypeError, AttributeError):
        raise RowError(f"{shown(value)} is not an ISO 8601 date or time") from None
    # Checked as written, before the shift to UTC (which would overflow at the ends).
    if not FIRST_YEAR <= parsed.year <= LAST_YEAR:
        raise RowError(
            f"{shown(value)} is outside the years {FIRST_YEAR}-{LAST_YEAR} (a placeholder date?)"
        )
    if parsed.tzinfo is not None:  # stored as naive UTC (see engine.times)
        parsed = (parsed - parsed.utcoffset()).replace(tzinfo=None)
    return parsed


class JsonObject(dict):
    """A parsed JSON object that remembers the text it came from (stored as is on SQLite)."""

    __slots__ = ("text",)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


# JSON as both databases store it: NaN and Infinity are Python's, not JSON's
# (PostgreSQL refuses them), so they are refused here; so is nesting deeper than
# a reader of the database (or json.dumps) can follow.
MAX_JSON_DEPTH = 64
STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def loads(text: str) -> Any:
    """``text`` as strict JSON; ``ValueError`` with a short reason if it is not."""
    try:
        return STRICT_JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(exc.msg) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # NaN, or an integer of thousands of digits
        raise ValueError(str(exc).split(":")[0]) from None


def json_problem(value: Any) -> str | None:
    """Why ``value`` (decoded JSON, of any depth) cannot be stored, or None."""
    pending = [(value, 0)]
    while pending:  # a loop, not recursion: the depth is the sender's choice
        item, depth = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
        elif item is None or isinstance(item, bool | int):
            problem = None
        elif isinstance(item, float):
            problem = None if math.isfinite(item) else f"{item!r} is not a JSON number"
        elif isinstance(item, dict | list):
            problem = (
                f"nested deeper than {MAX_JSON_DEPTH} levels" if depth >= MAX_JSON_DEPTH else None
            )
            if isinstance(item, dict):
                bad = next((k for k in item if not isinstance(k, str)), None)
                if bad is not None:
                    problem = f"key {shown(bad)} is not text"
                pending.extend((k, depth) for k in item)
            pending.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
        else:
            problem = f"a {type(item).__name__} is not a JSON value"
        if problem:
            return problem
    return None


def _attributes(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = loads(value)
        except ValueError as exc:
            raise RowError(f"attributes is not valid JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise RowError("attributes must be a JSON object")
        problem = json_problem(parsed)
        if problem:
            raise RowError(f"attributes: {problem}")
        result = JsonObject(parsed)
        result.text = value
        return result
    if not isinstance(value, dict):
        raise RowError("attributes must be a JSON object")
    problem = json_problem(value)
    if problem:
        raise RowError(f"attributes: {problem}")
    return value


_WHOLE = re.compile(r"^-?[0-9]+$")


def _amount(value: Any) -> int:
    if isinstance(value, bool):
        raise RowError("amount must be a whole number of Rupiah")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise RowError(f"amount {value!r} is not a whole number of Rupiah")
        number = int(value)
    elif isinstance(value, str) and _WHOLE.match(value.strip()):
        if len(value.strip()) > 20:  # before int(), which refuses thousands of digits
            raise RowError(f"amount {shown(value)} is implausibly large")
        number = int(value.strip())
    else:
        raise RowError(f"amount {shown(value)} is not a whole number of Rupiah")
    if number < 0:
        raise RowError(f"amount {shown(value)} is negative")
    if number > 10**15:
        raise RowError(f"amount {shown(value)} is implausibly large")
    return number


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise RowError(f"{shown(value)} is not one of: {', '.join(options)}")
        return value

    return convert


@dataclass(frozen=True)
class Column:
    """One column: its converter and, for ``compile_fast_check``, its shape."""

    name: str
    convert: Callable[[Any], Any]
    required: bool = False
    shape: str = "call"  # text, email, locale, timezone, timestamp, json, choice or call
    limit: int = 0  # text: the longest value
    options: tuple[str, ...] = ()  # choice: the allowed values


def _text_column(name: str, limit: int, required: bool = False) -> Column:
    return Column(name, _text(limit), required, "text", limit)


def _choice_column(name: str, options: tuple[str, ...]) -> Column:
    return Column(name, _choice(options), True, "choice", options=options)


@dataclass(frozen=True)
class Kind:
    name: str
    columns: tuple[Column, ...]
    needs_merchant: bool

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


SCHEMAS = {
    "merchants": Kind(
        "merchants",
        (
            _text_column("external_id", 100, required=True),
            Column("email", _email, True, "email"),
            _text_column("name", 200),
            _text_column("store_name", 200),
            _text_column("store_url", 500),
            _text_column("plan", 50),
            _text_column("category", 100),
            _text_column("city", 100),
            Column("locale", _locale, shape="locale"),
            Column("timezone", _timezone, shape="timezone"),
            _text_column("status", 30),
            Column("created_at", _timestamp, shape="timestamp"),
            Column("last_login_at", _timestamp, shape="timestamp"),
            Column("attributes", _attributes, shape="json"),
        ),
        needs_merchant=False,
    ),
    "orders": Kind(
        "orders",
        (
            _text_column("merchant_external_id", 100, required=True),
            _text_column("order_ref", 100, required=True),
            Column("amount", _amount, True),
            _choice_column("status", ORDER_STATUSES),
            Column("placed_at", _timestamp, True, "timestamp"),
        ),
        needs_merchant=True,
    ),
    "activities": Kind(
        "activities",
        (
            _text_column("merchant_external_id", 100, required=True),
            _text_column("kind", 50, required=True),
            Column("occurred_at", _timestamp, True, "timestamp"),
        ),
        needs_merchant=True,
    ),
}

Columns = tuple[str, ...]


def sqlite_datetime(value: datetime) -> str:
    """A naive datetime in SQLAlchemy's SQLite storage format, several times faster.

    ``tests/test_import.py`` checks it against SQLAlchemy's own bind processor.
    """
    text = value.isoformat(" ")
    return text if value.microsecond else text + ".000000"


@dataclass(frozen=True)
class RowPlan:
    """How to validate the rows of a file that gives ``columns`` (in that order)."""

    columns: Columns
    steps: tuple[Column, ...]

    @classmethod
    def build(cls, kind: Kind, columns: Columns) -> RowPlan:
        by_name = {c.name: c for c in kind.columns}
        return cls(columns, tuple(by_name[n] for n in columns))

    def validate(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """The converted values, in ``columns`` order; raises RowError naming the column."""
        out = []
        for column, value in zip(self.steps, values, strict=True):
            try:
                value = column.convert(value)
            except RowError as exc:
                raise RowError(f"{column.name}: {exc}") from None
            if value is None and column.required:
                raise RowError(f"{column.name}: required, but empty")
            out.append(value)
        return tuple(out)

    def stored(self, values: tuple[Any, ...], sqlite: bool) -> tuple[Any, ...]:
        """Converted values in the form the database driver takes."""
        out = list(values)
        for i, column in enumerate(self.steps):
            value = out[i]
            if value is None:
                continue
            if column.shape == "json":
                if sqlite:
                    out[i] = value.text if value.__class__ is JsonObject else json.dumps(value)
                else:
                    out[i] = dict(value)
            elif column.shape == "timestamp" and sqlite:
                out[i] = sqlite_datetime(value)
        return tuple(out)


class _Slow(Exception):
    """The fast check met something unusual: the plain converters take the row."""


def _fast_code(column: Column, v: str, sqlite: bool) -> list[str]:
    """Python lines that turn the common form of ``column``'s value in ``v`` into its stored form.

    Anything out of the ordinary must raise (``_Slow``, or any error a surprising
    type causes); it must never accept what the column's converter refuses.
    """
    shape = column.shape
    if shape == "text":  # a str, as CSV and JSON give: the length check, then strip
        lines = [f"if {v}.__class__ is not str or len({v}) > {column.limit}: raise _Slow"]
        lines.append(f"{v} = {v}.strip() or None")
    elif shape == "email":
        lines = [
            f"{v} = {v}.strip()",
            f"if len({v}) > 254 or {v}.find('@') > 64 or not _email({v}): raise _Slow",
            f"{v} = {v}.lower()",
        ]
    elif shape in ("locale", "timezone"):
        allowed = "_locales" if shape == "locale" else "_zones"
        lines = [
            f"if {v} is None or {v} == '': {v} = None",
            f"elif {v}.__class__ is not str or {v} not in {allowed}: raise _Slow",
        ]
    elif shape == "timestamp":  # to naive UTC
        lines = [
            f"if {v} is None or {v} == '': {v} = None",
            "else:",
            f"    {v} = _fromiso({v})",
            f"    if not {FIRST_YEAR} <= {v}.year <= {LAST_YEAR}: raise _Slow",
            f"    _offset = {v}.utcoffset()",
        ]
        if sqlite:  # sqlite_datetime, without the cost of dropping the time zone first
            lines += [
                f"    if _offset: {v} -= _offset",
                f"    _text = {v}.isoformat(' ')",
                f"    {v} = _text[:26] if {v}.microsecond else _text[:19] + '.000000'",
            ]
        else:
            lines.append(f"    if _offset is not None: {v} = ({v} - _offset).replace(tzinfo=None)")
    elif shape == "json":
        lines = [
            f"if {v} is None or {v} == '': {v} = None",
            f"elif {v}.__class__ is not str: raise _Slow",
            f"elif '\\\\u' in {v}: raise _Slow",  # an escape may hide a NUL or half a pair
            # Deeper than MAX_JSON_DEPTH needs that many brackets (and twice the length).
            f"elif len({v}) > {2 * MAX_JSON_DEPTH} and {v}.count('{{') + {v}.count('[') > {MAX_JSON_DEPTH}: raise _Slow",
            f"elif _loads({v}).__class__ is not dict: raise _Slow" if sqlite else "else:",
        ]
        if not sqlite:
            lines.append(f"    {v} = _loads({v})")
            lines.append(f"    if {v}.__class__ is not dict: raise _Slow")
    elif shape == "choice":
        lines = [f"if {v}.__class__ is not str or {v} not in {column.options!r}: raise _Slow"]
    else:  # no fast form: the converter itself (a RowError goes the slow way too)
        lines = [f"{v} = _convert_{v}({v})"]
    if column.required:
        lines.append(f"if {v} is None: raise _Slow")
    return lines


def compile_fast_check(plan: RowPlan, sqlite: bool) -> Callable[[Sequence[Any]], tuple]:
    """Straight-line code for ``plan``: a row's stored form, or an exception for any surprise."""
    names = [f"v{i}" for i in range(len(plan.steps))]
    body = [f"    {', '.join(names)}, = row"]
    scope: dict[str, Any] = {
        "_Slow": _Slow,
        "_email": EMAIL_PATTERN.match,
        "_locales": frozenset(LOCALES),
        "_zones": _zones(),
        "_fromiso": datetime.fromisoformat,
        "_loads": STRICT_JSON.decode,
    }
    for name, column in zip(names, plan.steps, strict=True):
        body.extend(f"    {line}" for line in _fast_code(column, name, sqlite))
        scope[f"_convert_{name}"] = column.convert
    body.append(f"    return ({', '.join(names)},)")
    source = "def check(row):\n" + "\n".join(body) + "\n"
    exec(compile(source, f"<fast check: {', '.join(plan.columns)}>", "exec"), scope)
    return scope["check"]


def missing_required(kind: Kind, columns: Columns) -> str | None:
    for column in kind.columns:
        if column.required and column.name not in columns:
            return column.name
    return None
