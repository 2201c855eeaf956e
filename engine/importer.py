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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.addresses import normalize_email
from engine.config import LOCALES
from engine.errors import DataImportError
from engine.models import activities, merchants, orders
from engine.times import parse_timestamp

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
        if value is None or value == "":
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
    if value in (None, ""):
        return None
    try:
        return parse_timestamp(value)
    except (ValueError, TypeError):
        raise RowError(f"{value!r} is not an ISO 8601 date or time") from None


def _attributes(value: Any) -> dict[str, Any] | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"attributes is not valid JSON ({exc.msg})") from None
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

# Values a merchant gets when the file does not say (only on insert, never on update).
MERCHANT_DEFAULTS = {"locale": "id", "timezone": "Asia/Jakarta", "status": "active", "attributes": {}}


def validate_row(kind: Kind, raw: dict[str, Any]) -> dict[str, Any]:
    """Convert one raw row; raises RowError naming the column and reason."""
    row: dict[str, Any] = {}
    for column in kind.columns:
        if column.name not in raw:
            if column.required:
                raise RowError(f"missing required column {column.name!r}")
            continue
        try:
            value = column.convert(raw[column.name])
        except RowError as exc:
            raise RowError(f"{column.name}: {exc}") from None
        if value is None and column.required:
            raise RowError(f"{column.name}: required, but empty")
        if value is None and column.name in MERCHANT_DEFAULTS:
            continue  # an empty optional column keeps the stored value / default
        row[column.name] = value
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
            yield number, RowError(
                f"unknown column {unknown[0]!r} (valid columns: {', '.join(kind.names)})"
            )
            continue
        yield number, value


# --- writers -------------------------------------------------------------------


def _upsert(engine: Engine, table: sa.Table, keys: tuple[str, ...], update: bool):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert

    def statement(columns: frozenset[str]):
        stmt = insert(table)
        settable = [c for c in columns if c not in keys]
        if update and settable:
            return stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: stmt.excluded[c] for c in settable}
            )
        return stmt.on_conflict_do_nothing(index_elements=list(keys))

    return statement


def _write_batch(conn, kind: Kind, batch: list[tuple[int, dict[str, Any]]], statement, report):
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
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for _, row in batch:
        groups.setdefault(frozenset(row), []).append(row)
    for columns, rows in groups.items():
        if kind.name == "merchants":
            insert_defaults = {k: v for k, v in MERCHANT_DEFAULTS.items() if k not in columns}
            if insert_defaults:
                rows = [{**insert_defaults, **r} for r in rows]
        conn.execute(statement(columns), rows)
    return len(batch)


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
    suffix = path.suffix.lower()
    if suffix == ".csv":
        read = _read_csv
    elif suffix in (".jsonl", ".ndjson"):
        read = _read_jsonl
    else:
        raise DataImportError(f"{path}: unknown file type {suffix!r} (use .csv or .jsonl)")
    if not path.is_file():
        raise DataImportError(f"{path}: no such file")

    if kind == "merchants":
        statement = _upsert(engine, merchants, ("external_id",), update=True)
    elif kind == "orders":
        statement = _upsert(engine, orders, ("merchant_id", "order_ref"), update=True)
    else:
        statement = _upsert(engine, activities, ("merchant_id", "kind", "occurred_at"), update=False)

    report = ImportReport(kind, path)
    total = path.stat().st_size
    with path.open("r", encoding="utf-8", newline="") as handle:
        batch: list[tuple[int, dict[str, Any]]] = []

        def flush() -> None:
            with engine.begin() as conn:
                report.imported += _write_batch(conn, spec, batch, statement, report)
            batch.clear()
            if on_progress:
                on_progress(handle.buffer.tell(), total)

        try:
            for line, raw in read(handle, spec, path):
                report.read += 1
                if isinstance(raw, RowError):
                    report.reject(line, str(raw))
                    continue
                try:
                    batch.append((line, validate_row(spec, raw)))
                except RowError as exc:
                    report.reject(line, str(exc))
                    continue
                if len(batch) >= batch_size:
                    flush()
        except UnicodeDecodeError:
            raise DataImportError(f"{path}: not UTF-8 text") from None
        if batch:
            flush()
        if on_progress:
            on_progress(total, total)
    return report
