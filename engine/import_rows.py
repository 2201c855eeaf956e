"""Reading and validating import files, row by row; no database here.

Each kind (merchants, orders, activities) is a list of columns with a converter
that turns the value as read into the value stored, or raises ``RowError`` with
the reason. The stored forms depend a little on the database: SQLite stores
timestamps and JSON as text, PostgreSQL gets ``datetime`` objects and dicts.

Validation runs for every cell of files of a million rows, so each column set a
file gives also gets a check generated for it (``compile_fast_check``): straight
code for the common case that any surprise sends back to the plain converters,
which name the problem. Both must agree; ``tests/test_import_rows.py`` checks it.

The module imports nothing heavy on purpose: a parallel import runs it as a
second process (``main``) that reads the file and
validates half of the batches while the first process writes.
"""

from __future__ import annotations

import csv
import gc
import json
import marshal
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import available_timezones

from engine.addresses import EMAIL_PATTERN, normalize_email
from engine.config import LOCALES
from engine.errors import DataImportError

KINDS = ("merchants", "orders", "activities")
ORDER_STATUSES = ("paid", "cancelled", "refunded")
MAX_REPORTED = 20


class RowError(ValueError):
    """One row is wrong; the message says why."""


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str


@dataclass
class ImportReport:
    kind: str
    path: Path
    read: int = 0
    imported: int = 0
    rejected_count: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED:
            self.rejected.append(RejectedRow(line, reason))

    @property
    def ok(self) -> bool:
        return self.rejected_count == 0


# --- field converters: each takes the raw value and returns the stored one ----


def _text(limit: int) -> Callable[[Any], str | None]:
    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str | int):
            raise RowError(f"expected text, got {type(value).__name__}")
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
        raise RowError(f"locale {value!r} is not supported (use one of: {', '.join(LOCALES)})")
    return value


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _timezone(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in _zones():
        raise RowError(f"time zone {value!r} is not an IANA time zone (e.g. Asia/Jakarta)")
    return value


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (ValueError, TypeError, AttributeError):
        raise RowError(f"{value!r} is not an ISO 8601 date or time") from None
    if parsed.tzinfo is not None:  # stored as naive UTC (see engine.times)
        parsed = (parsed - parsed.utcoffset()).replace(tzinfo=None)
    return parsed


class JsonObject(dict):
    """A parsed JSON object that remembers the text it came from (stored as is on SQLite)."""

    __slots__ = ("text",)


def _attributes(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"attributes is not valid JSON ({exc.msg})") from None
        if not isinstance(parsed, dict):
            raise RowError("attributes must be a JSON object")
        result = JsonObject(parsed)
        result.text = value
        return result
    if not isinstance(value, dict):
        raise RowError("attributes must be a JSON object")
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
        number = int(value.strip())
    else:
        raise RowError(f"amount {value!r} is not a whole number of Rupiah")
    if number < 0:
        raise RowError(f"amount {value!r} is negative")
    if number > 10**15:
        raise RowError(f"amount {value!r} is implausibly large")
    return number


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise RowError(f"{value!r} is not one of: {', '.join(options)}")
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
        "_loads": json.loads,
    }
    for name, column in zip(names, plan.steps, strict=True):
        body.extend(f"    {line}" for line in _fast_code(column, name, sqlite))
        scope[f"_convert_{name}"] = column.convert
    body.append(f"    return ({', '.join(names)},)")
    source = "def check(row):\n" + "\n".join(body) + "\n"
    exec(compile(source, f"<fast check: {', '.join(plan.columns)}>", "exec"), scope)
    return scope["check"]


def _missing_required(kind: Kind, columns: Columns) -> str | None:
    for column in kind.columns:
        if column.required and column.name not in columns:
            return column.name
    return None


# --- readers: (line, columns, values) per row, or (line, None, RowError) -------

Raw = tuple[int, Columns | None, Sequence[Any] | RowError]


def _read_csv(handle, kind: Kind, path: Path) -> Iterator[Raw]:
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataImportError(f"{path}:1: cannot read the CSV header ({exc})") from None
    header = [h.strip() for h in header]
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    unknown = [h for h in header if h not in kind.names]
    if unknown:
        raise DataImportError(
            f"{path}:1: unknown column {unknown[0]!r} for {kind.name} "
            f"(valid columns: {', '.join(kind.names)})"
        )
    if len(set(header)) != len(header):
        raise DataImportError(f"{path}:1: a column is named twice in the header")
    missing = _missing_required(kind, tuple(header))
    if missing:
        raise DataImportError(
            f"{path}:1: missing required column {missing!r} for {kind.name} "
            f"(required: {', '.join(c.name for c in kind.columns if c.required)})"
        )
    columns = tuple(header)
    width = len(columns)
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, RowError(f"cannot parse CSV ({exc})")
            continue
        if not values:
            continue
        if len(values) != width:
            yield (
                reader.line_num,
                None,
                RowError(f"has {len(values)} fields, the header has {width}"),
            )
            continue
        yield reader.line_num, columns, values


def _read_jsonl(handle, kind: Kind, path: Path) -> Iterator[Raw]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, RowError(f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(value, dict):
            yield number, None, RowError("each line must be a JSON object")
            continue
        unknown = [k for k in value if k not in kind.names]
        if unknown:
            yield (
                number,
                None,
                RowError(f"unknown column {unknown[0]!r} (valid columns: {', '.join(kind.names)})"),
            )
            continue
        columns = tuple(n for n in kind.names if n in value)
        missing = _missing_required(kind, columns)
        if missing:
            yield number, None, RowError(f"missing required column {missing!r}")
            continue
        yield number, columns, [value[n] for n in columns]


def reader_for(path: Path):
    """The reader for ``path``'s type; DataImportError for any other."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl
    raise DataImportError(f"{path}: unknown file type {suffix!r} (use .csv or .jsonl)")


ValidRow = tuple[int, Columns, tuple[Any, ...]]


@dataclass
class ValidatedBatch:
    """Rows that passed validation, the rows that did not, and how far into the file we are."""

    rows: list[ValidRow]
    rejected: list[tuple[int, str]]
    read: int
    position: int
    validated: bool = True  # False: ``rows`` hold the values as read


def read_batches(path: Path, kind: str, batch_size: int) -> Iterator[ValidatedBatch]:
    """Rows as read, not yet validated, in batches (flat memory, whatever the file size)."""
    spec = SCHEMAS[kind]
    read = reader_for(path)
    with path.open("r", encoding="utf-8", newline="") as handle:
        rows: list[ValidRow] = []
        rejected: list[tuple[int, str]] = []
        count = 0
        try:
            for line, columns, raw in read(handle, spec, path):
                count += 1
                if columns is None:
                    rejected.append((line, str(raw)))
                    continue
                rows.append((line, columns, raw))
                if len(rows) >= batch_size:
                    yield ValidatedBatch(rows, rejected, count, handle.buffer.tell(), False)
                    rows, rejected, count = [], [], 0
        except UnicodeDecodeError:
            raise DataImportError(f"{path}: not UTF-8 text") from None
        yield ValidatedBatch(rows, rejected, count, handle.buffer.tell(), False)


class BatchValidator:
    """Validates read batches of one kind into the stored forms of one database."""

    def __init__(self, kind: str, sqlite: bool) -> None:
        self.spec = SCHEMAS[kind]
        self.sqlite = sqlite
        self.checks: dict[Columns, tuple[RowPlan, Callable[[Sequence[Any]], tuple]]] = {}

    def _check_for(self, columns: Columns) -> tuple[RowPlan, Callable[[Sequence[Any]], tuple]]:
        plan = RowPlan.build(self.spec, columns)
        found = self.checks[columns] = (plan, compile_fast_check(plan, self.sqlite))
        return found

    def validate(self, batch: ValidatedBatch) -> ValidatedBatch:
        if batch.validated:
            return batch
        rows: list[ValidRow] = []
        rejected = batch.rejected
        checks = self.checks
        for line, columns, raw in batch.rows:
            plan, fast = checks.get(columns) or self._check_for(columns)
            try:
                rows.append((line, columns, fast(raw)))
            except Exception:  # anything unusual: the converters decide and say why
                try:
                    rows.append((line, columns, plan.stored(plan.validate(raw), self.sqlite)))
                except RowError as exc:
                    rejected.append((line, str(exc)))
        return ValidatedBatch(rows, rejected, batch.read, batch.position)


def serve_batches(
    path: Path, kind: str, batch_size: int, sqlite: bool, share: tuple[int, int], out: BinaryIO
) -> None:
    """Read ``path`` and send its batches to ``out``, validating ``share`` of them.

    ``share`` is (k, n): the first k batches of every n.

    Each item is ``("batch", fields of a ValidatedBatch)``; the stream ends with
    ``("done", None)``, or ``("error", sentence)`` for a file the user must fix.
    The receiving process validates the other batches (``receive_batches``).
    """
    dump = wire_format(sqlite).dump
    validator = BatchValidator(kind, sqlite)
    try:
        for number, batch in enumerate(read_batches(path, kind, batch_size)):
            if number % share[1] < share[0]:
                batch = validator.validate(batch)
            fields = (batch.rows, batch.rejected, batch.read, batch.position, batch.validated)
            dump(("batch", fields), out)
        dump(("done", None), out)
    except DataImportError as exc:
        dump(("error", str(exc)), out)
    out.flush()


def receive_batches(source: BinaryIO, sqlite: bool) -> Iterator[ValidatedBatch | str]:
    """What ``serve_batches`` sent: batches, then a sentence if the file was refused."""
    load = wire_format(sqlite).load
    while True:
        what, item = load(source)
        if what == "done":
            return
        if what == "error":
            yield item
            return
        yield ValidatedBatch(*item)


class _Marshalled:
    """``marshal`` in length-prefixed frames: read whole, a frame loads at C speed."""

    @staticmethod
    def dump(value: Any, out: BinaryIO) -> None:
        data = marshal.dumps(value)
        out.write(len(data).to_bytes(8, "big"))
        out.write(data)

    @staticmethod
    def load(source: BinaryIO) -> Any:
        size = source.read(8)
        if len(size) < 8:
            raise EOFError
        data = source.read(int.from_bytes(size, "big"))
        return marshal.loads(data)


def wire_format(sqlite: bool):
    """SQLite's stored forms are text and numbers, which ``marshal`` sends fastest."""
    return _Marshalled if sqlite else pickle


def _share(text: str) -> tuple[int, int]:
    k, n = text.split("/")
    return int(k), int(n)


def main(argv: list[str]) -> None:
    """The second process's entry point: ``PATH KIND BATCH_SIZE sqlite|other K/N``."""
    path, kind, batch_size, database, share = argv
    gc.disable()  # nothing here makes reference cycles; collections only slow reading
    try:
        serve_batches(
            Path(path),
            kind,
            int(batch_size),
            database == "sqlite",
            _share(share),
            sys.stdout.buffer,
        )
    except BrokenPipeError:  # the importing process stopped reading: it has its reason
        sys.stderr.close()
    except KeyboardInterrupt:  # Ctrl-C reaches both processes: the importing one reports it
        sys.exit(130)
