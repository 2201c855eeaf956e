"""Writing validated import rows: merchants named by orders and activities are
resolved, a key given twice is written once more but counted once, and each
column set gets one upsert compiled once.

Merchants are upserted by ``external_id``, orders by (merchant, ``order_ref``),
activities by (merchant, kind, time), so writing the same rows twice changes
nothing. The caller owns the transaction.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.import_columns import Columns, Kind, sqlite_datetime
from engine.import_rows import ValidRow
from engine.models import activities, merchants, orders

# Columns with a default. An empty value in the file keeps what is stored (and
# gives the default on insert): a blank cell in a partial export never wipes data.
MERCHANT_DEFAULTS = {
    "locale": "id",
    "timezone": "Asia/Jakarta",
    "status": "active",
    "attributes": "{}",
}
_POSTGRESQL_CASTS = {"attributes": "::jsonb", "created_at": "::timestamp"}


class UpsertWriter:
    """Writes validated rows with one upsert per column set, compiled once.

    Rows come in the driver's stored form (``engine.import_columns``) and go
    straight to its ``executemany``: SQLAlchemy compiles the statement (both
    dialects), and we skip its per-row parameter machinery, which cost more than
    the insert. On PostgreSQL the dialect's bind processors still apply (JSON).
    Only the columns a file gives are written; on conflict they are updated
    (``update``) or the row is left alone. ``defaults`` maps a column to the SQL
    text of its default, which an empty value also gets on insert (and which
    leaves the stored value alone on update).
    """

    def __init__(
        self,
        engine: Engine,
        table: sa.Table,
        keys: Columns,
        update: bool,
        defaults: dict[str, str] | None = None,
    ) -> None:
        self.dialect = engine.dialect
        self.table, self.keys, self.update = table, keys, update
        self.defaults = defaults or {}
        self._compiled: dict[Columns, tuple[str, Callable[[tuple], Any]]] = {}

    def _default(self, name: str):
        cast = _POSTGRESQL_CASTS.get(name, "") if self.dialect.name == "postgresql" else ""
        return sa.literal_column(f"'{self.defaults[name]}'{cast}")

    def _compile(self, columns: Columns) -> tuple[str, Callable[[tuple], Any]]:
        if self.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        defaults = self.defaults
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
        if self.dialect.name == "sqlite":  # the stored form is the driver's: no processors
            if len(names) == 1:
                return str(compiled), lambda row: (getter(row),)
            return str(compiled), getter
        process = [
            (i, p)
            for i, p in enumerate(
                self.table.c[n].type.dialect_impl(self.dialect).bind_processor(self.dialect)
                for n in names
            )
            if p is not None
        ]
        positional = compiled.positional

        def params(row: tuple) -> Any:
            values = list(getter(row)) if len(names) > 1 else [getter(row)]
            for i, convert in process:
                if values[i] is not None:
                    values[i] = convert(values[i])
            return tuple(values) if positional else dict(zip(names, values, strict=True))

        return str(compiled), params

    def write(self, conn: Connection, columns: Columns, rows: Sequence[tuple]) -> None:
        if columns not in self._compiled:
            self._compiled[columns] = self._compile(columns)
        sql, params = self._compiled[columns]
        conn.exec_driver_sql(sql, [params(row) for row in rows])


def writer_for(engine: Engine, kind: str, *, created_at: datetime | None = None) -> UpsertWriter:
    """The writer of ``kind``'s table; ``created_at``: the default of new merchants' column."""
    if kind == "merchants":
        defaults = dict(MERCHANT_DEFAULTS)
        if created_at is not None:
            defaults["created_at"] = (
                sqlite_datetime(created_at) if engine.dialect.name == "sqlite" else str(created_at)
            )
        return UpsertWriter(engine, merchants, ("external_id",), update=True, defaults=defaults)
    if kind == "orders":
        return UpsertWriter(engine, orders, ("merchant_id", "order_ref"), update=True)
    return UpsertWriter(engine, activities, ("merchant_id", "kind", "occurred_at"), update=False)


class Notes(Protocol):
    """Where rejected rows and warnings go (a file's report, or one kind of a records call)."""

    unit: str  # how a row is named in a sentence: "line" or "row"

    def reject(self, line: int, reason: str) -> None: ...

    def warn(self, line: int, reason: str) -> None: ...


class Repeats:
    """The keys written so far by one import, so that a key given twice is counted once.

    Only merchants and orders have a key that a later row overwrites; an
    activity given twice is the same event, and the second changes nothing.
    Memory grows with the distinct keys of one import (about 130 bytes each).
    """

    def __init__(self, kind: Kind) -> None:
        self.first: dict[Any, int] = {}
        self.kind = kind.name
        self._getters: dict[Columns, Callable[[tuple], Any] | None] = {}

    def key_of(self, columns: Columns) -> Callable[[tuple], Any] | None:
        """How to take the key from a stored row of ``columns`` (None: the kind has none)."""
        if columns not in self._getters:
            if self.kind == "merchants":
                getter = operator.itemgetter(columns.index("external_id"))
            elif self.kind == "orders":
                getter = operator.itemgetter(
                    columns.index("merchant_id"), columns.index("order_ref")
                )
            else:
                getter = None
            self._getters[columns] = getter
        return self._getters[columns]

    def describe(self, row: tuple, columns: Columns, external_ids: dict[int, str]) -> str:
        if self.kind == "merchants":
            return f"external_id {row[columns.index('external_id')]!r}"
        merchant = external_ids.get(row[columns.index("merchant_id")])
        return f"order {row[columns.index('order_ref')]!r} of merchant {merchant!r}"


def _count_new(
    resolved: list[ValidRow],
    groups: dict[Columns, list[tuple]],
    repeats: Repeats,
    notes: Notes,
    found: dict[str, int],
) -> tuple[int, bool]:
    """How many of ``resolved`` give a key new to the import, and whether any repeated one."""
    first = repeats.first
    if len(groups) == 1:  # the common case, in C: no key of the batch seen before
        ((columns, rows),) = groups.items()
        key_of = repeats.key_of(columns)
        if key_of is None:
            return len(rows), False
        keys = list(map(key_of, rows))
        fresh = dict(zip(keys, [line for line, _, _ in resolved], strict=True))
        if len(fresh) == len(keys) and first.keys().isdisjoint(fresh):
            first.update(fresh)
            return len(keys), False
    new, repeated = 0, False
    external_ids: dict[int, str] | None = None
    for line, columns, row in resolved:
        key_of = repeats.key_of(columns)
        if key_of is None:
            new += 1
            continue
        earlier = first.setdefault(key_of(row), line)
        if earlier == line:
            new += 1
            continue
        repeated = True
        if external_ids is None:
            external_ids = {v: k for k, v in found.items()}
        notes.warn(
            line,
            f"{repeats.describe(row, columns, external_ids)} is also on {notes.unit} {earlier}: "
            f"counted once, this later {notes.unit} wins",
        )
    return new, repeated


def write_batch(
    conn: Connection,
    kind: Kind,
    batch: list[ValidRow],
    writer: UpsertWriter,
    notes: Notes,
    repeats: Repeats,
) -> int:
    """Write one batch in the caller's transaction; returns the rows new to this import.

    A row whose key an earlier row of the import already gave is written too (the
    later row wins) but not counted again, and noted as a warning naming both.
    """
    resolved: list[ValidRow] = batch
    found: dict[str, int] = {}
    if kind.needs_merchant:
        refs = {row[columns.index("merchant_external_id")] for _, columns, row in batch}
        found = dict(
            conn.execute(
                sa.select(merchants.c.external_id, merchants.c.id).where(
                    merchants.c.external_id.in_(refs)
                )
            ).all()
        )
        resolved = []
        shapes: dict[Columns, tuple[int, Columns]] = {}
        for line, columns, row in batch:
            if columns not in shapes:
                at = columns.index("merchant_external_id")
                shapes[columns] = (at, (*columns[:at], "merchant_id", *columns[at + 1 :]))
            at, stored = shapes[columns]
            merchant_id = found.get(row[at])
            if merchant_id is None:
                notes.reject(line, f"unknown merchant {row[at]!r}")
                continue
            resolved.append((line, stored, (*row[:at], merchant_id, *row[at + 1 :])))

    groups: dict[Columns, list[tuple]] = {}
    last: Columns | None = None
    for _, columns, row in resolved:
        if columns is not last:  # rows of one file share their columns: hash them once
            last = columns
            group = groups.setdefault(columns, [])
        group.append(row)
    new, repeated = _count_new(resolved, groups, repeats, notes, found)

    runs: list[tuple[Columns, list[tuple]]] = list(groups.items())
    if repeated and len(groups) > 1:
        # Rows of several column sets that repeat a key: write in their order, so
        # that the later row wins whatever columns it gives.
        runs = []
        for _, columns, row in resolved:
            if runs and runs[-1][0] == columns:
                runs[-1][1].append(row)
            else:
                runs.append((columns, [row]))
    for columns, rows in runs:
        writer.write(conn, columns, rows)
    return new
