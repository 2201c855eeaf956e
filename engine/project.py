"""A campaign project: its folder, its settings and its database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.config import Settings, load_settings
from engine.db import ensure_schema, make_engine


@dataclass
class Project:
    settings: Settings
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        return self.settings.project_dir

    @property
    def engine(self) -> Engine:
        """The database engine (created on first use; the schema is not touched)."""
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
        return self._engine

    def database(self) -> Engine:
        """The engine, with the schema created or migrated first if needed."""
        ensure_schema(self.engine)
        return self.engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def open_project(path: Path | str = ".", env: Mapping[str, str] | None = None) -> Project:
    return Project(load_settings(path, env))
