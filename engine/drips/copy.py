"""A throw-away SQLite copy of a project's database, for dry-run ticks and ``simulate``.

SQLite's backup API copies an SQLite database; the rows of a PostgreSQL database
are copied table by table (message bodies and attempts are not needed). The real
tick then runs on the copy: nothing in the real database changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.db import is_sqlite, make_engine, upgrade_schema
from engine.models import (
    activities,
    campaign_runs,
    drip_enrolments,
    merchants,
    messages,
    orders,
    schedule_fires,
    suppressions,
)

# Copied from PostgreSQL in this order (foreign keys).
_TABLES = (
    merchants,
    orders,
    activities,
    suppressions,
    messages,
    campaign_runs,
    drip_enrolments,
    schedule_fires,
)
_CHUNK = 5000


@contextlib.contextmanager
def on_copy(project) -> Iterator[Any]:
    """A project whose database is a throw-away SQLite copy of ``project``'s."""
    from engine.project import Project

    source = project.database()
    with tempfile.TemporaryDirectory(prefix="campaign-sim-") as folder:
        path = Path(folder) / "copy.db"
        url = f"sqlite:///{path}"
        target = make_engine(url)
        try:
            if is_sqlite(source):
                _backup(source, target)
            else:
                upgrade_schema(target)
                _copy_rows(source, target)
            settings = dataclasses.replace(with_secret(project.settings), database_url=url)
            copy = Project(settings, target)
            yield copy
        finally:
            target.dispose()


def _backup(source, target) -> None:
    src = source.raw_connection()
    dst = target.raw_connection()
    try:
        src.driver_connection.backup(dst.driver_connection)
    finally:
        dst.close()
        src.close()


def _copy_rows(source, target) -> None:
    with source.connect() as src, target.begin() as dst:
        for table in _TABLES:
            result = src.execution_options(yield_per=_CHUNK).execute(sa.select(table))
            for chunk in result.mappings().partitions(_CHUNK):
                dst.execute(table.insert(), [dict(r) for r in chunk])


def with_secret(settings):
    """Settings that can render (a stand-in signing key) for work on a copy that is thrown away."""
    if settings.secret_key is not None:
        return settings
    from engine.config import Secret

    return dataclasses.replace(settings, secret_key=Secret("simulation-only"))
