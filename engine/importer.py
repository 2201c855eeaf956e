"""``campaign import``: stream CSV or JSON Lines into merchants, orders or activities.

Rows are read (``engine.import_rows``), validated (``engine.import_columns``)
and written (``engine.import_write``) in batches, so memory stays flat whatever
the file size, but for the keys kept to count a repeated key once. A bad row is
reported with its line number and left out; the good rows are written. Merchants
are upserted by ``external_id``, orders by (merchant, ``order_ref``), activities
by (merchant, kind, time), so importing the same file twice changes nothing.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.db import is_sqlite, write_transaction
from engine.errors import DataImportError
from engine.import_columns import KINDS, SCHEMAS, sqlite_datetime
from engine.import_rows import (
    BatchValidator,
    ImportReport,
    RejectedRow,
    ValidatedBatch,
    read_batches,
    reader_for,
    receive_batches,
)
from engine.import_write import Repeats, write_batch, writer_for

__all__ = ["KINDS", "ImportReport", "RejectedRow", "import_file", "sqlite_datetime"]

BATCH_SIZE = 5000


# A file this large is validated by a second process while this one writes, when
# there is a second core: below it, starting the process costs more than it saves.
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


def parallel_pays(path: Path) -> bool:
    """Whether a second process should read ``path``: a large file, and a core for it."""
    return path.stat().st_size >= PARALLEL_FROM_BYTES and (os.cpu_count() or 1) > 1


def import_file(
    engine: Engine,
    kind: str,
    path: Path | str,
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    parallel: bool | None = None,
) -> ImportReport:
    """Import ``path`` (``.csv`` or ``.jsonl``/``.ndjson``) into ``kind``'s table.

    ``parallel`` reads and validates in a second process while this one writes:
    on two cores a large file imports in well under two thirds of the time.
    ``None`` (the default) decides by the file's size and the cores there are.
    Every whole-file error (a missing file, a bad header) is raised before
    anything is written; any other problem is a rejected row.
    """
    if kind not in SCHEMAS:
        raise DataImportError(f"cannot import {kind!r} (choose one of: {', '.join(KINDS)})")
    spec = SCHEMAS[kind]
    path = Path(path)
    reader_for(path)
    if not path.is_file():
        raise DataImportError(f"{path}: no such file")
    total = path.stat().st_size
    if parallel is None:
        parallel = parallel_pays(path)

    writer = writer_for(engine, kind)
    sqlite = is_sqlite(engine)
    if parallel:
        batches = _second_process_batches(path, kind, batch_size, sqlite)
    else:
        batches = read_batches(path, kind, batch_size)
    report = ImportReport(kind, path)
    repeats = Repeats(spec)
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
                with write_transaction(engine) as conn:
                    report.imported += write_batch(conn, spec, batch.rows, writer, report, repeats)
            if on_progress:
                on_progress(batch.position, total)
    finally:
        if collecting:
            gc.enable()
    report.rejected.sort(key=lambda r: r.line)
    report.warnings.sort(key=lambda r: r.line)
    return report
