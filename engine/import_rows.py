"""Reading import files and in-memory records into batches of rows; no database here.

A reader gives each row as ``(line, columns, values)``, or ``(line, None,
RowError)`` for a row it cannot use; ``BatchValidator`` then checks the values
with the converters of ``engine.import_columns``. Every problem of one row,
including bytes that are not UTF-8 and text a database cannot store (a NUL),
makes that row a rejected row: the only whole-file errors are those of the
header, found before anything is written.

The module imports nothing heavy on purpose: a parallel import runs it as a
second process (``main``) that reads the file and validates half of the
batches while the first process writes.
"""

from __future__ import annotations

import codecs
import csv
import gc
import io
import marshal
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from engine.errors import DataImportError
from engine.import_columns import (
    SCHEMAS,
    Columns,
    Kind,
    RowError,
    RowPlan,
    compile_fast_check,
    loads,
    missing_required,
    text_problem,
)

MAX_REPORTED = 20


@dataclass(frozen=True)
class RejectedRow:
    """A line of the file and what is wrong with it (or, for a warning, what to know)."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did: rows read, imported (each key once), rejected and warned about."""

    unit: ClassVar[str] = "line"  # how ``engine.import_write`` names a row in a sentence
    kind: str
    path: Path
    read: int = 0
    imported: int = 0
    rejected_count: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    warning_count: int = 0
    warnings: list[RejectedRow] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED:
            self.rejected.append(RejectedRow(line, reason))

    def warn(self, line: int, reason: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_REPORTED:
            self.warnings.append(RejectedRow(line, reason))

    @property
    def ok(self) -> bool:
        return self.rejected_count == 0


# --- decoding: a byte that is not UTF-8 spoils its row, not the file ---------

# How many runs of undecodable bytes have been read, by every reader of this
# process. A reader compares it with its value at the start: rows need the
# (slower) text check only once it has moved, which a clean file never does.
_UNDECODABLE = [0]


def _note_undecodable(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _UNDECODABLE[0] += 1
    # As ``surrogateescape`` does: each bad byte becomes U+DC80..U+DCFF, which
    # ``text_problem`` recognises and names.
    return "".join(chr(0xDC00 + b) for b in exc.object[exc.start : exc.end]), exc.end


codecs.register_error("campaign-import", _note_undecodable)


class _WatchedFile(io.RawIOBase):
    """A file's bytes that notes whether any NUL went by (PostgreSQL cannot store one)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb", buffering=0)
        self.nul = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        if not self.nul and b"\x00" in data:
            self.nul = True
        return len(data)

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


class TextFile:
    """A file read as UTF-8 text (a BOM is skipped), with ``suspect`` once a row needs checking.

    ``suspect`` turns true when an undecodable byte or a NUL has been read; as it
    is set when the bytes are read, before the rows made of them are parsed, a
    row parsed while it is false is clean.
    """

    def __init__(self, path: Path) -> None:
        self.raw = _WatchedFile(path)
        self.buffer = io.BufferedReader(self.raw, 1 << 20)
        self.text = io.TextIOWrapper(
            self.buffer, encoding="utf-8-sig", errors="campaign-import", newline=""
        )
        self._undecodable = _UNDECODABLE[0]

    @property
    def suspect(self) -> bool:
        return self.raw.nul or _UNDECODABLE[0] != self._undecodable

    def position(self) -> int:
        """How many bytes have been read so far (for progress)."""
        return self.raw.tell()

    def close(self) -> None:
        self.text.close()


def _values_problem(columns: Columns, values: Sequence[Any]) -> str | None:
    for name, value in zip(columns, values, strict=True):
        problem = text_problem(value) if isinstance(value, str) else None
        if problem:
            return f"{name}: {problem}"
    return None


# --- readers: (line, columns, values) per row, or (line, None, RowError) -------

Raw = tuple[int, Columns | None, Sequence[Any] | RowError]


def _read_csv(source: TextFile, kind: Kind, path: Path) -> Iterator[Raw]:
    reader = csv.reader(source.text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataImportError(f"{path}:1: cannot read the CSV header ({exc})") from None
    header = [h.strip() for h in header]  # a BOM went with the decoding (utf-8-sig)
    problem = source.suspect and text_problem("".join(header))
    if problem:
        raise DataImportError(f"{path}:1: the CSV header is {problem}")
    unknown = [h for h in header if h not in kind.names]
    if unknown:
        raise DataImportError(
            f"{path}:1: unknown column {unknown[0]!r} for {kind.name} "
            f"(valid columns: {', '.join(kind.names)})"
        )
    if len(set(header)) != len(header):
        raise DataImportError(f"{path}:1: a column is named twice in the header")
    missing = missing_required(kind, tuple(header))
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
        if source.suspect:
            problem = _values_problem(columns, values)
            if problem:
                yield reader.line_num, None, RowError(problem)
                continue
        yield reader.line_num, columns, values


# A JSON escape that may decode to what cannot be stored: half of a surrogate
# pair (\ud800) or a NUL (\u0000). A line with one gets the full text check.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")


def record_values(kind: Kind, value: Any, *, checked: bool = True) -> tuple[Columns, list[Any]]:
    """The columns and values of one decoded JSON row of ``kind``; RowError if unusable.

    The one reading of a JSON object, for JSON Lines files and in-memory records
    alike. ``checked=False`` skips the text check when the caller knows the row
    holds nothing that needs it.
    """
    if not isinstance(value, dict):
        raise RowError("each row must be a JSON object")
    unknown = [k for k in value if k not in kind.names]
    if unknown:
        raise RowError(
            f"unknown column {str(unknown[0])[:60]!r} (valid columns: {', '.join(kind.names)})"
        )
    columns = tuple(n for n in kind.names if n in value)
    missing = missing_required(kind, columns)
    if missing:
        raise RowError(f"missing required column {missing!r}")
    values = [value[n] for n in columns]
    if checked:  # ``attributes`` is checked in depth by its converter
        problem = _values_problem(columns, values)
        if problem:
            raise RowError(problem)
    return columns, values


def _read_jsonl(source: TextFile, kind: Kind, path: Path) -> Iterator[Raw]:
    for number, line in enumerate(source.text, start=1):
        if not line.strip():
            continue
        if source.suspect:
            problem = text_problem(line)
            if problem:
                yield number, None, RowError(problem)
                continue
        try:
            value = loads(line)
        except ValueError as exc:
            yield number, None, RowError(f"not valid JSON ({exc})")
            continue
        try:
            columns, values = record_values(
                kind, value, checked="\\u" in line and bool(_SUSPECT_ESCAPE.search(line))
            )
        except RowError as exc:
            yield number, None, exc
            continue
        yield number, columns, values


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
    source = TextFile(path)
    try:
        rows: list[ValidRow] = []
        rejected: list[tuple[int, str]] = []
        count = 0
        for line, columns, raw in read(source, spec, path):
            count += 1
            if columns is None:
                rejected.append((line, str(raw)))
                continue
            rows.append((line, columns, raw))
            if len(rows) >= batch_size:
                yield ValidatedBatch(rows, rejected, count, source.position(), False)
                rows, rejected, count = [], [], 0
        yield ValidatedBatch(rows, rejected, count, source.position(), False)
    finally:
        source.close()


def read_records(kind: str, records: Sequence[Any]) -> ValidatedBatch:
    """In-memory rows (decoded JSON objects) as one batch; ``line`` is each row's index."""
    spec = SCHEMAS[kind]
    rows: list[ValidRow] = []
    rejected: list[tuple[int, str]] = []
    for index, value in enumerate(records):
        try:
            columns, values = record_values(spec, value)
        except RowError as exc:
            rejected.append((index, str(exc)))
            continue
        rows.append((index, columns, values))
    return ValidatedBatch(rows, rejected, len(records), 0, False)


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
