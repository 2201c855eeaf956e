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
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, cached_property
from pathlib import Path
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

    @cached_property
    def plan(self) -> tuple[tuple[str, Callable[[Any], Any], bool], ...]:
        return tuple((c.name, c.convert, c.required) for c in self.columns)


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

# Values a merchant gets when the file does not say (only on insert, never on update).
MERCHANT_DEFAULTS = {
    "locale": "id",
    "timezone": "Asia/Jakarta",
    "status": "active",
    "attributes": {},
}


def validate_row(kind: Kind, raw: dict[str, Any]) -> dict[str, Any]:
    """Convert one raw row; raises RowError naming the column and reason."""
    row: dict[str, Any] = {}
    for name, convert, required in kind.plan:
        if name in raw:
            value = raw[name]
        elif required:
            raise RowError(f"missing required column {name!r}")
        else:
            continue
        try:
            value = convert(value)
        except RowError as exc:
            raise RowError(f"{name}: {exc}") from None
        if value is None:
            if required:
                raise RowError(f"{name}: required, but empty")
            if name in MERCHANT_DEFAULTS:
                continue  # an empty optional column keeps the stored value (or the default)
        row[name] = value
    return row


# --- readers -------------------------------------------------------------------


def _read_csv(handle, kind: Kind, path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
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
    missing = [c.name for c in kind.columns if c.required and c.name not in header]
    if missing:
        raise DataImportError(
            f"{path}:1: missing required column {missing[0]!r} for {kind.name} "
            f"(required: {', '.join(c.name for c in kind.columns if c.required)})"
        )
    width = len(header)
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, RowError(f"cannot parse CSV ({exc})")
            continue
        if not values:
            continue
        if len(values) != width:
            yield reader.line_num, RowError(f"has {len(values)} fields, the header has {width}")
            continue
        yield reader.line_num, dict(zip(header, values, strict=True))


def _read_jsonl(handle, kind: Kind, path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, RowError(f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(value, dict):
            yield number, RowError("each line must be a JSON object")
            continue
        unknown = [k for k in value if k not in kind.names]
        if unknown:
            yield (
                number,
                RowError(f"unknown column {unknown[0]!r} (valid columns: {', '.join(kind.names)})"),
            )
            continue
        yield number, value


# --- writers -------------------------------------------------------------------


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
    """

    def __init__(
        self, engine: Engine, table: sa.Table, keys: tuple[str, ...], update: bool
    ) -> None:
        self.dialect = engine.dialect
        self.table, self.keys, self.update = table, keys, update
        self._compiled: dict[
            tuple[frozenset[str], frozenset[str]], tuple[str, tuple[str, ...], list]
        ] = {}

    def _compile(self, columns: frozenset[str], updated: frozenset[str]):
        if self.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        names = tuple(sorted(columns))
        stmt = insert(self.table).values({c: sa.bindparam(c) for c in names})
        settable = [c for c in names if c not in self.keys and c in updated]
        if self.update and settable:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(self.keys), set_={c: stmt.excluded[c] for c in settable}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(self.keys))
        compiled = stmt.compile(dialect=self.dialect)
        order = tuple(compiled.positiontup) if compiled.positional else names
        processors = [self._processor(self.table.c[name].type) for name in order]
        return str(compiled), order, processors

    def _processor(self, column_type):
        process = column_type.dialect_impl(self.dialect).bind_processor(self.dialect)
        if process is None or self.dialect.name != "sqlite":
            return process
        if isinstance(column_type, sa.DateTime):
            return sqlite_datetime
        if isinstance(column_type, sa.JSON):
            # SQLite stores JSON as text: keep the file's own (already validated) text.
            def keep_text(value, process=process):
                return value.text if value.__class__ is JsonObject else process(value)

            return keep_text
        return process

    def write(self, conn, rows: list[tuple[dict[str, Any], frozenset[str]]]) -> None:
        """Write (row, columns to update on conflict) pairs."""
        groups: dict[tuple[frozenset[str], frozenset[str]], list[dict[str, Any]]] = {}
        for row, updated in rows:
            groups.setdefault((frozenset(row), updated), []).append(row)
        for key, group in groups.items():
            if key not in self._compiled:
                self._compiled[key] = self._compile(*key)
            sql, order, processors = self._compiled[key]
            getter = operator.itemgetter(*order)
            convert = [(i, p) for i, p in enumerate(processors) if p is not None]
            params: list[Any] = []
            for row in group:
                values = getter(row)
                values = list(values) if len(order) > 1 else [values]
                for i, process in convert:
                    if values[i] is not None:
                        values[i] = process(values[i])
                params.append(
                    tuple(values)
                    if self.dialect.positional
                    else dict(zip(order, values, strict=True))
                )
            conn.exec_driver_sql(sql, params)


def _write_batch(
    conn, kind: Kind, batch: list[tuple[int, dict[str, Any]]], writer: UpsertWriter, report
):
    """Write one batch in the caller's transaction; returns rows written."""
    if kind.needs_merchant:
        refs = {row["merchant_external_id"] for _, row in batch}
        found = dict(
            conn.execute(
                sa.select(merchants.c.external_id, merchants.c.id).where(
                    merchants.c.external_id.in_(refs)
                )
            ).all()
        )
        kept = []
        for line, row in batch:
            merchant_id = found.get(row["merchant_external_id"])
            if merchant_id is None:
                report.reject(line, f"unknown merchant {row['merchant_external_id']!r}")
                continue
            row = dict(row)
            del row["merchant_external_id"]
            row["merchant_id"] = merchant_id
            kept.append((line, row))
        batch = kept
    rows = []
    defaults_for: dict[frozenset[str], dict[str, Any]] = {}
    for _, row in batch:
        updated = frozenset(row)
        if kind.name == "merchants" and len(row) < len(kind.columns):
            # Defaults apply on insert only: a column the file leaves out keeps its stored value.
            defaults = defaults_for.get(updated)
            if defaults is None:
                defaults = {k: v for k, v in MERCHANT_DEFAULTS.items() if k not in row}
                defaults_for[updated] = defaults
            if defaults:
                row = {**defaults, **row}
        rows.append((row, updated))
    writer.write(conn, rows)
    return len(rows)


@dataclass
class ValidatedBatch:
    """Rows that passed validation, the rows that did not, and how far into the file we are."""

    rows: list[tuple[int, dict[str, Any]]]
    rejected: list[tuple[int, str]]
    read: int
    position: int


def _reader_for(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl
    raise DataImportError(f"{path}: unknown file type {suffix!r} (use .csv or .jsonl)")


def validated_batches(path: Path, kind: str, batch_size: int) -> Iterator[ValidatedBatch]:
    """Read and validate ``path`` in batches (flat memory, whatever the file size)."""
    spec = SCHEMAS[kind]
    read = _reader_for(path)
    with path.open("r", encoding="utf-8", newline="") as handle:
        rows: list[tuple[int, dict[str, Any]]] = []
        rejected: list[tuple[int, str]] = []
        count = 0
        try:
            for line, raw in read(handle, spec, path):
                count += 1
                if isinstance(raw, RowError):
                    rejected.append((line, str(raw)))
                    continue
                try:
                    rows.append((line, validate_row(spec, raw)))
                except RowError as exc:
                    rejected.append((line, str(exc)))
                    continue
                if len(rows) >= batch_size:
                    yield ValidatedBatch(rows, rejected, count, handle.buffer.tell())
                    rows, rejected, count = [], [], 0
        except UnicodeDecodeError:
            raise DataImportError(f"{path}: not UTF-8 text") from None
        yield ValidatedBatch(rows, rejected, count, handle.buffer.tell())


def import_file(
    engine: Engine,
    kind: str,
    path: Path | str,
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import ``path`` (``.csv`` or ``.jsonl``/``.ndjson``) into ``kind``'s table."""
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
    for batch in validated_batches(path, kind, batch_size):
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
