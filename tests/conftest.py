"""Fixtures: real databases (a fresh SQLite file, a fresh PostgreSQL schema) per test.

Every test that asks for ``db_url`` (or ``project``/``engine``) runs twice: on
SQLite and on PostgreSQL. PostgreSQL tests use ``CAMPAIGN_TEST_PG_URL``; they are
skipped when it is unset (a fresh laptop) and FAIL when it is set but the server
cannot be reached.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.project import Project, open_project

# SMTP fixtures: smtp_server, starttls_smtp_server, tls_smtp_server, tls_cert, smtp_server_factory
pytest_plugins = ["smtp_server"]

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("CAMPAIGN_TEST_PG_URL")


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A database URL with an empty schema, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'campaign.db'}"
        return
    if not PG_URL:
        pytest.skip("CAMPAIGN_TEST_PG_URL is not set")
    admin = sa.create_engine(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"CAMPAIGN_TEST_PG_URL is set but PostgreSQL is unreachable: {exc}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def project_env(db_url) -> dict[str, str]:
    return {"CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SECRET_KEY": "test-secret-key"}


@pytest.fixture
def project_dir(tmp_path) -> Path:
    """An empty project folder (no segments, campaigns or templates)."""
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def example_dir(tmp_path) -> Path:
    """A copy of the repository's example project (segments, campaigns, templates)."""
    path = tmp_path / "example"
    path.mkdir()
    for name in ("segments", "campaigns", "templates"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, path / name)
    if (REPO / "campaign.toml").exists():
        shutil.copy(REPO / "campaign.toml", path / "campaign.toml")
    return path


@pytest.fixture
def project(project_dir, project_env) -> Project:
    """An empty project on each backend, with the schema created."""
    proj = open_project(project_dir, env=project_env)
    proj.database()
    yield proj
    proj.close()


@pytest.fixture
def engine(project):
    return project.engine


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: text}`` under ``root``."""
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
