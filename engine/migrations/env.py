"""Alembic environment: the engine is handed in by ``engine.db`` (no alembic.ini needed)."""

from alembic import context

from engine.models import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
