"""``campaign import``: stream CSV or JSON Lines into merchants, orders or activities.

Rows are read and validated (``engine.import_rows``) and written in batches, so
memory stays flat whatever the file size. A bad row is reported with its line
number and left out; the good rows are written. Merchants are upserted by
``external_id``, orders by (merchant, ``order_ref``), activities by (merchant,
kind, time), so importing the same file twice changes nothing.
"""

from __future__ import annotations

import gc
import operator
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.errors import DataImportError
from engine.import_rows import (
    KINDS,
    SCHEMAS,
    BatchValidator,
    Columns,
    ImportReport,
    Kind,
    RejectedRow,
    ValidatedBatch,
    ValidRow,
    read_batches,
    reader_for,
    receive_batches,
    sqlite_datetime,
)
from engine.models import activities, merchants, orders

__all__ = ["KINDS", "ImportReport", "RejectedRow", "import_file", "sqlite_datetime"]

BATCH_SIZE = 5000

# Columns with a default. An empty value in the file keeps what is stored (and
# gives the default on insert): a blank cell in a partial export never wipes data.
MERCHANT_DEFAULTS = {
    "locale": "id",
    "timezone": "Asia/Jakarta",
    "status": "active",
    "attributes": "{}",
}


class UpsertWriter:
    """Writes validated rows with one upsert per column set, compiled once.

    Rows come in the driver's stored form (``engine.import_rows``) and go
    straight to its ``executemany``: SQLAlchemy compiles the statement (both
    dialects), and we skip its per-row parameter machinery, which cost more than
    the insert. On PostgreSQL the dialect's bind processors still apply (JSON).
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

    def write(self, conn, columns: Columns, rows: Sequence[tuple]) -> None:
        if columns not in self._compiled:
            self._compiled[columns] = self._compile(columns)
        sql, params = self._compiled[columns]
        conn.exec_driver_sql(sql, [params(row) for row in rows])


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


# A file this large is validated by a second process while this one writes (CLI default).
PARALLEL_FROM_BYTES = 8 * 1024 * 1024
# The batches the second process validates: one of every two (each process also has
# its own work, reading or writing, of about the same cost).
CHILD_SHARE = (1, 2)


def _second_process_batches(
    path: Path, kind: str, batch_size: int, sqlite: bool
) -> Iterator[ValidatedBatch]:
    """Batches read by a second process, which also validates every other one.

    Reading costs about as much as writing, so the second process reads and
    validates half of the batches, this one validates the other half and writes:
    both cores stay busy. The pipe between them keeps memory flat: the reader
    waits when writing is slower. The child imports only ``engine.import_rows``
    (no SQLAlchemy), so it starts in a tenth of a second.
    """
    command = [
        sys.executable,
        "-c",
        "import sys; from engine.import_rows import main; main(sys.argv[1:])",
        str(path),
        kind,
        str(batch_size),
        "sqlite" if sqlite else "other",
        f"{CHILD_SHARE[0]}/{CHILD_SHARE[1]}",
    ]
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        for item in receive_batches(child.stdout, sqlite):
            if isinstance(item, str):
                raise DataImportError(item)
            yield item
        if child.wait() != 0:  # a bug of ours in the child; its traceback is on stderr
            raise RuntimeError(f"the validating process failed (exit code {child.returncode})")
    except EOFError:
        raise RuntimeError(
            f"the validating process ended without a word (exit code {child.wait()})"
        ) from None
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


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

    ``parallel`` reads and validates in a second process while this one writes:
    on two cores a large file imports in well under two thirds of the time.
    """
    if kind not in SCHEMAS:
        raise DataImportError(f"cannot import {kind!r} (choose one of: {', '.join(KINDS)})")
    spec = SCHEMAS[kind]
    path = Path(path)
    reader_for(path)
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

    sqlite = engine.dialect.name == "sqlite"
    if parallel:
        batches = _second_process_batches(path, kind, batch_size, sqlite)
    else:
        batches = read_batches(path, kind, batch_size)
    report = ImportReport(kind, path)
    validator = BatchValidator(kind, sqlite)
    collecting = gc.isenabled()
    gc.disable()  # the loop makes millions of objects and no cycles: collections only cost
    try:
        for batch in batches:
            batch = validator.validate(batch)
            report.read += batch.read
            for line, reason in batch.rejected:
                report.reject(line, reason)
            if batch.rows:
                with engine.begin() as conn:
                    report.imported += _write_batch(conn, spec, batch.rows, writer, report)
            if on_progress:
                on_progress(batch.position, total)
    finally:
        if collecting:
            gc.enable()
    report.rejected.sort(key=lambda r: r.line)
    return report
