"""Importing rows held in memory (the events API): the checks of ``campaign import``, one transaction.

``import_records`` takes ``{"merchants": [...], "orders": [...], "activities":
[...]}``, each row a decoded JSON object with the columns of the import files
(SPEC 3), and reads, validates and writes them with the same code as a file
(``engine.import_rows``, ``engine.import_columns``, ``engine.import_write``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy.engine import Engine

from engine.db import is_sqlite, write_transaction
from engine.errors import DataImportError
from engine.import_columns import KINDS, SCHEMAS
from engine.import_rows import BatchValidator, read_records
from engine.import_write import Repeats, write_batch, writer_for

# Rows per statement: the merchant look-up of a chunk stays within every
# database's limit of bound parameters.
BATCH_SIZE = 5000

__all__ = ["KINDS", "KindResult", "RecordsReport", "RejectedRecord", "import_records"]


@dataclass(frozen=True)
class RejectedRecord:
    """A row of a records call (``index``: its 0-based position in its list) and why."""

    index: int
    reason: str


@dataclass
class KindResult:
    """What became of one kind's rows: how many accepted, which rejected, what to know."""

    unit: ClassVar[str] = "row"  # how ``engine.import_write`` names a row in a sentence
    accepted: int = 0
    rejected: list[RejectedRecord] = field(default_factory=list)
    warnings: list[RejectedRecord] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected.append(RejectedRecord(line, reason))

    def warn(self, line: int, reason: str) -> None:
        self.warnings.append(RejectedRecord(line, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": [{"index": r.index, "reason": r.reason} for r in self.rejected],
            "warnings": [{"index": w.index, "reason": w.reason} for w in self.warnings],
        }


@dataclass
class RecordsReport:
    """The result of ``import_records``: one ``KindResult`` per kind the call gave."""

    kinds: dict[str, KindResult] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return sum(k.accepted for k in self.kinds.values())

    @property
    def rejected_count(self) -> int:
        return sum(len(k.rejected) for k in self.kinds.values())

    @property
    def all_rejected(self) -> bool:
        """Rows were given and not one was accepted (the events API answers 422)."""
        return self.rejected_count > 0 and self.accepted == 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``{kind: {"accepted": n, "rejected": [...], "warnings": [...]}}``."""
        return {kind: result.as_dict() for kind, result in self.kinds.items()}


def _checked_body(records: Any) -> dict[str, list[Any]]:
    """The lists of a call, in the order they are written; DataImportError for a bad shape."""
    if not isinstance(records, Mapping):
        raise DataImportError(
            f"expected an object with the lists {', '.join(KINDS)}, got {type(records).__name__}"
        )
    unknown = [k for k in records if k not in KINDS]
    if unknown:
        raise DataImportError(
            f"unknown key {str(unknown[0])[:60]!r} (expected any of: {', '.join(KINDS)})"
        )
    body = {}
    for kind in KINDS:  # merchants first: an order may name a merchant of the same call
        if kind in records:
            if not isinstance(records[kind], list):
                raise DataImportError(f"{kind} must be a list of objects")
            body[kind] = records[kind]
    return body


def import_records(engine: Engine, records: Mapping[str, Any], *, now: datetime) -> RecordsReport:
    """Validate and write in-memory rows of merchants, orders and activities in ONE transaction.

    Each row is checked exactly as a row of ``campaign import`` is; a bad row is
    rejected with its index and reason and the others are written. Merchants go
    first, so an order or activity may name a merchant created by the same call;
    one naming a merchant that does not exist is rejected. Writes are upserts, so
    sending the same call again changes nothing; a key given twice in one list
    is counted once, the later row wins, and a warning names both indexes.
    Either every accepted row is written or, if the database fails, none is.

    ``now`` (naive UTC, the caller's clock) is the ``created_at`` of a merchant
    this call creates without one: it was created when the platform said so.
    Raises ``DataImportError`` (nothing written) when ``records`` is not an
    object of lists named after the kinds.
    """
    body = _checked_body(records)
    if now.tzinfo is not None:  # stored timestamps are naive UTC
        now = (now - now.utcoffset()).replace(tzinfo=None)
    sqlite = is_sqlite(engine)
    report = RecordsReport()
    batches = {}
    for kind, rows in body.items():
        result = report.kinds[kind] = KindResult()
        batch = BatchValidator(kind, sqlite).validate(read_records(kind, rows))
        for index, reason in batch.rejected:
            result.reject(index, reason)
        batches[kind] = batch
    if any(batch.rows for batch in batches.values()):
        with write_transaction(engine) as conn:
            for kind, batch in batches.items():
                spec, result = SCHEMAS[kind], report.kinds[kind]
                writer, repeats = writer_for(engine, kind, created_at=now), Repeats(spec)
                for start in range(0, len(batch.rows), BATCH_SIZE):  # bounded IN lists
                    chunk = batch.rows[start : start + BATCH_SIZE]
                    result.accepted += write_batch(conn, spec, chunk, writer, result, repeats)
    for result in report.kinds.values():
        result.rejected.sort(key=lambda r: r.index)
    return report
