"""``campaign import``: stream CSV or JSON Lines into merchants, orders or activities.

Rows are read and validated one at a time and written in batches, so memory stays
flat whatever the file size. A bad row is reported with its line number and left
out; the good rows are written. Merchants are upserted by ``external_id``, orders
by (merchant, ``order_ref``), activities by (merchant, kind, time), so importing
the same file twice changes nothing.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from queue import Empty
from typing import Any
from zoneinfo import available_timezones

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.addresses import normalize_email
from engine.config import LOCALES
from engine.errors import DataImportError
from engine.models import activities, merchants, orders

KINDS = ("merchants", "orders", "activities")
ORDER_STATUSES = ("paid", "cancelled", "refunded")
BATCH_SIZE = 5000
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
        if value.__class__ is str:  # the common case, kept cheap: it runs for every cell
            if len(value) > limit:
                raise RowError(f"longer than {limit} characters")
            return value.strip() or None
        if value is None:
            return None
        if not isinstance(value, str | int):
            raise RowError(f"expected text, got {type(value).__name__}")
        value = str(value).strip()
        if len(value) > limit:
            raise RowError(f"longer than {limit} characters")
        return value or None

    return convert


def _email(value: Any) -> str:
    try:
        return normalize_email(value)
    except ValueError as exc:
        raise RowError(str(exc)) from None


def _locale(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if value not in LOCALES:
        raise RowError(f"locale {value!r} is not supported (use one of: {', '.join(LOCALES)})")
    return value


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _timezone(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if value not in _zones():
        raise RowError(f"time zone {value!r} is not an IANA time zone (e.g. Asia/Jakarta)")
    return value


def _timestamp(value: Any):
    if not value:
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
    if value in (None, ""):
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
        if value not in options:
            raise RowError(f"{value!r} is not one of: {', '.join(options)}")
        return value

    return convert


@dataclass(frozen=True)
class Column:
    name: str
    convert: Callable[[Any], Any]
    required: bool = False


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
            Column("external_id", _text(100), required=True),
            Column("email", _email, required=True),
            Column("name", _text(200)),
            Column("store_name", _text(200)),
            Column("store_url", _text(500)),
            Column("plan", _text(50)),
            Column("category", _text(100)),
            Column("city", _text(100)),
            Column("locale", _locale),
            Column("timezone", _timezone),
            Column("status", _text(30)),
            Column("created_at", _timestamp),
            Column("last_login_at", _timestamp),
            Column("attributes", _attributes),
        ),
        needs_merchant=False,
    ),
    "orders": Kind(
        "orders",
        (
            Column("merchant_external_id", _text(100), required=True),
            Column("order_ref", _text(100), required=True),
            Column("amount", _amount, required=True),
            Column("status", _choice(ORDER_STATUSES), required=True),
            Column("placed_at", _timestamp, required=True),
        ),
        needs_merchant=True,
    ),
    "activities": Kind(
        "activities",
        (
            Column("merchant_external_id", _text(100), required=True),
            Column("kind", _text(50), required=True),
            Column("occurred_at", _timestamp, required=True),
        ),
        needs_merchant=True,
    ),
}

# Columns with a default. An empty value in the file keeps what is stored (and
# gives the default on insert): a blank cell in a partial export never wipes data.
MERCHANT_DEFAULTS = {
    "locale": "id",
    "timezone": "Asia/Jakarta",
    "status": "active",
    "attributes": "{}",
}

Columns = tuple[str, ...]


@dataclass(frozen=True)
class RowPlan:
    """How to validate the rows of a file that gives ``columns`` (in that order)."""

    columns: Columns
    steps: tuple[tuple[str, Callable[[Any], Any], bool], ...]

    @classmethod
    def build(cls, kind: Kind, columns: Columns) -> RowPlan:
        by_name = {c.name: c for c in kind.columns}
        return cls(columns, tuple((n, by_name[n].convert, by_name[n].required) for n in columns))

    def validate(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """The stored values, in ``columns`` order; raises RowError naming the column."""
        out = []
        for (name, convert, required), value in zip(self.steps, values, strict=False):
            try:
                value = convert(value)
            except RowError as exc:
                raise RowError(f"{name}: {exc}") from None
            if value is None and required:
                raise RowError(f"{name}: required, but empty")
            out.append(value)
        return tuple(out)


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


# --- writer ----------------------------------------------------------------------


def sqlite_datetime(value: datetime) -> str:
    """A naive datetime in SQLAlchemy's SQLite storage format, several times faster.

    ``tests/test_import.py`` checks it against SQLAlchemy's own bind processor.
    """
    text = value.isoformat(" ")
    return text if value.microsecond else text + ".000000"


class UpsertWriter:
    """Writes validated rows with one upsert per column set, compiled once.

    Rows go straight to the driver's ``executemany`` with the dialect's own bind
    processors applied: SQLAlchemy compiles the statement (both dialects), and
    we skip its per-row parameter machinery, which cost more than the insert.
    Only the columns a file gives are written; on conflict they are updated
    (``update``) or the row is left alone.
    """

    def __init__(self, engine: Engine, table: sa.Table, keys: Columns, update: bool) -> None:
        self.dialect = engine.dialect
        self.table, self.keys, self.update = table, keys, update
        self._compiled: dict[Columns, tuple[str, Callable[[tuple], Any]]] = {}

    def _default(self, name: str):
        cast = "::jsonb" if name == "attributes" and self.dialect.name == "postgresql" else ""
        return sa.literal_column(f"'{MERCHANT_DEFAULTS[name]}'{cast}")

    def _compile(self, columns: Columns) -> tuple[str, Callable[[tuple], Any]]:
        if self.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        defaults = MERCHANT_DEFAULTS if self.table is merchants else {}
        values = {
            c: sa.func.coalesce(sa.bindparam(c, type_=self.table.c[c].type), self._default(c))
            if c in defaults
            else sa.bindparam(c, type_=self.table.c[c].type)
            for c in columns
        }
        # A default column the file does not give at all is set on insert only.
        values.update({c: self._default(c) for c in defaults if c not in columns})
        stmt = insert(self.table).values(values)
        settable = {
            # The proposed row already holds the default, so ask the file's own value.
            c: sa.case(
                (sa.bindparam(c, type_=self.table.c[c].type).is_(None), self.table.c[c]),
                else_=stmt.excluded[c],
            )
            if c in defaults
            else stmt.excluded[c]
            for c in columns
            if c not in self.keys
        }
        if self.update and settable:
            stmt = stmt.on_conflict_do_update(index_elements=list(self.keys), set_=settable)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(self.keys))
        compiled = stmt.compile(dialect=self.dialect)
        names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.params)
        index = {c: i for i, c in enumerate(columns)}
        getter = operator.itemgetter(*(index[n] for n in names))
        single = len(names) == 1
        process = [
            (i, p)
            for i, p in enumerate(self._processor(self.table.c[n].type) for n in names)
            if p is not None
        ]
        positional = compiled.positional

        def params(row: tuple) -> Any:
            values = getter(row)
            if single:
                values = (values,)
            if process:
                values = list(values)
                for i, convert in process:
                    if values[i] is not None:
                        values[i] = convert(values[i])
            return tuple(values) if positional else dict(zip(names, values, strict=True))

        return str(compiled), params

    def _processor(self, column_type):
        process = column_type.dialect_impl(self.dialect).bind_processor(self.dialect)
        if process is None or self.dialect.name != "sqlite":
            return process
        # Text passes through: it is already the stored form (see _wire_values).
        if isinstance(column_type, sa.DateTime):

            def datetime_text(value):
                return value if value.__class__ is str else sqlite_datetime(value)

            return datetime_text
        if isinstance(column_type, sa.JSON):
            # SQLite stores JSON as text: keep the file's own (already validated) text.
            def keep_text(value, process=process):
                if value.__class__ is str:
                    return value
                return value.text if value.__class__ is JsonObject else process(value)

            return keep_text
        return process

    def write(self, conn, columns: Columns, rows: Sequence[tuple]) -> None:
        if columns not in self._compiled:
            self._compiled[columns] = self._compile(columns)
        sql, params = self._compiled[columns]
        conn.exec_driver_sql(sql, [params(row) for row in rows])


ValidRow = tuple[int, Columns, tuple[Any, ...]]


def _write_batch(
    conn, kind: Kind, batch: list[ValidRow], writer: UpsertWriter, report: ImportReport
) -> int:
    """Write one batch in the caller's transaction; returns rows written."""
    groups: dict[Columns, list[tuple]] = {}
    if kind.needs_merchant:
        refs = {row[columns.index("merchant_external_id")] for _, columns, row in batch}
        found = dict(
            conn.execute(
                sa.select(merchants.c.external_id, merchants.c.id).where(
                    merchants.c.external_id.in_(refs)
                )
            ).all()
        )
        for line, columns, row in batch:
            at = columns.index("merchant_external_id")
            merchant_id = found.get(row[at])
            if merchant_id is None:
                report.reject(line, f"unknown merchant {row[at]!r}")
                continue
            stored = (*columns[:at], "merchant_id", *columns[at + 1 :])
            groups.setdefault(stored, []).append((*row[:at], merchant_id, *row[at + 1 :]))
    else:
        for _, columns, row in batch:
            groups.setdefault(columns, []).append(row)
    for columns, rows in groups.items():
        writer.write(conn, columns, rows)
    return sum(len(rows) for rows in groups.values())


@dataclass
class ValidatedBatch:
    """Rows that passed validation, the rows that did not, and how far into the file we are."""

    rows: list[ValidRow]
    rejected: list[tuple[int, str]]
    read: int
    position: int
    validated: bool = True  # False: ``rows`` hold the values as read


def _reader_for(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl
    raise DataImportError(f"{path}: unknown file type {suffix!r} (use .csv or .jsonl)")


def read_batches(path: Path, kind: str, batch_size: int) -> Iterator[ValidatedBatch]:
    """Rows as read, not yet validated, in batches (flat memory, whatever the file size)."""
    spec = SCHEMAS[kind]
    read = _reader_for(path)
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
    """Validates read batches of one kind (one RowPlan per column set, built once)."""

    def __init__(self, kind: str) -> None:
        self.spec = SCHEMAS[kind]
        self.plans: dict[Columns, RowPlan] = {}

    def validate(self, batch: ValidatedBatch) -> ValidatedBatch:
        if batch.validated:
            return batch
        rows: list[ValidRow] = []
        rejected = batch.rejected
        for line, columns, raw in batch.rows:
            plan = self.plans.get(columns)
            if plan is None:
                plan = self.plans[columns] = RowPlan.build(self.spec, columns)
            try:
                rows.append((line, columns, plan.validate(raw)))
            except RowError as exc:
                rejected.append((line, str(exc)))
        return ValidatedBatch(rows, rejected, batch.read, batch.position)


def validated_batches(path: Path, kind: str, batch_size: int) -> Iterator[ValidatedBatch]:
    """Read and validate ``path`` in batches."""
    validator = BatchValidator(kind)
    for batch in read_batches(path, kind, batch_size):
        yield validator.validate(batch)


TABLES = {"merchants": merchants, "orders": orders, "activities": activities}


def _wire_values(kind: str, dialect_name: str) -> Callable[[Columns, tuple], tuple]:
    """Rows → the stored form made of text and numbers, cheap to hand to another process.

    SQLite: timestamps and JSON become the text SQLite stores. PostgreSQL:
    JSON objects become plain dicts (the driver adapts timestamps itself).
    """
    table = TABLES[kind]
    special: dict[Columns, list[tuple[int, bool]]] = {}

    def convert(columns: Columns, row: tuple) -> tuple:
        where = special.get(columns)
        if where is None:
            where = special[columns] = [
                (i, isinstance(table.c[c].type, sa.JSON))
                for i, c in enumerate(columns)
                if c in table.c and isinstance(table.c[c].type, sa.DateTime | sa.JSON)
            ]
        if not where:
            return row
        values = list(row)
        for i, is_json in where:
            value = values[i]
            if value is None:
                continue
            if dialect_name != "sqlite":
                values[i] = dict(value) if is_json else value
            elif is_json:
                values[i] = value.text if value.__class__ is JsonObject else json.dumps(value)
            else:
                values[i] = sqlite_datetime(value)
        return tuple(values)

    return convert


def _validate_in_child(path: str, kind: str, batch_size: int, dialect_name: str, queue) -> None:
    """The second process of a parallel import: read everything, validate every other batch.

    Reading is sequential and costs about as much as writing, so each process
    validates half of the batches and the two cores stay busy.
    """
    try:
        wire = _wire_values(kind, dialect_name)
        validator = BatchValidator(kind)
        for number, batch in enumerate(read_batches(Path(path), kind, batch_size)):
            if number % 2 == 0:  # the writing process validates the other half
                batch = validator.validate(batch)
                batch.rows = [(line, cols, wire(cols, row)) for line, cols, row in batch.rows]
            queue.put(batch)
        queue.put(None)
    except DataImportError as exc:
        queue.put(exc)
    except BaseException as exc:  # a bug of ours: hand it over rather than leave the parent waiting
        queue.put(RuntimeError(f"the validating process failed: {exc!r}"))


def _batches(
    path: Path, kind: str, batch_size: int, parallel: bool, dialect_name: str
) -> Iterator[ValidatedBatch]:
    """Validated batches, made here or, in parallel, by a second process while this one writes."""
    if not parallel:
        yield from validated_batches(path, kind, batch_size)
        return
    context = multiprocessing.get_context("spawn")
    queue = context.Queue(maxsize=4)  # bounded: memory stays flat when writing is slower
    child = context.Process(
        target=_validate_in_child,
        args=(str(path), kind, batch_size, dialect_name, queue),
        daemon=True,
    )
    child.start()
    try:
        while True:
            try:
                item = queue.get(timeout=1)
            except Empty:
                if not child.is_alive():
                    raise RuntimeError("the validating process ended without a word") from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if child.is_alive():
            child.terminate()
        child.join()


# A file this large is validated by a second process while this one writes (CLI default).
PARALLEL_FROM_BYTES = 8 * 1024 * 1024


def import_file(
    engine: Engine,
    kind: str,
    path: Path | str,
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    parallel: bool = False,
) -> ImportReport:
    """Import ``path`` (``.csv`` or ``.jsonl``/``.ndjson``) into ``kind``'s table.

    ``parallel`` reads and validates in a second process (``spawn``: call it from
    code under ``if __name__ == "__main__"``) while this one writes: on two cores
    a large file imports in about two thirds of the time.
    """
    if kind not in SCHEMAS:
        raise DataImportError(f"cannot import {kind!r} (choose one of: {', '.join(KINDS)})")
    spec = SCHEMAS[kind]
    path = Path(path)
    _reader_for(path)
    if not path.is_file():
        raise DataImportError(f"{path}: no such file")
    total = path.stat().st_size

    if kind == "merchants":
        writer = UpsertWriter(engine, merchants, ("external_id",), update=True)
    elif kind == "orders":
        writer = UpsertWriter(engine, orders, ("merchant_id", "order_ref"), update=True)
    else:
        writer = UpsertWriter(
            engine, activities, ("merchant_id", "kind", "occurred_at"), update=False
        )

    report = ImportReport(kind, path)
    validator = BatchValidator(kind)
    for batch in _batches(path, kind, batch_size, parallel, engine.dialect.name):
        batch = validator.validate(batch)
        report.read += batch.read
        for line, reason in batch.rejected:
            report.reject(line, reason)
        if batch.rows:
            with engine.begin() as conn:
                report.imported += _write_batch(conn, spec, batch.rows, writer, report)
        if on_progress:
            on_progress(batch.position, total)
    report.rejected.sort(key=lambda r: r.line)
    return report
