"""message_bodies.data compressed with lz4 on PostgreSQL (14 and newer, built with lz4)

PostgreSQL compresses a value of more than about 2 KB before storing it (TOAST),
with pglz by default. A message body is 10 KB or so; a tick that queues 33,000
of them spent a quarter of its time in the server compressing them. lz4 is
several times faster for bodies 4% larger. Rows already stored keep their
compression. A server without lz4 keeps pglz; SQLite stores bodies as they are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or bind.dialect.server_version_info < (14,):
        return
    try:
        with bind.begin_nested():  # a savepoint: a refusal leaves the migration going
            bind.exec_driver_sql(
                f"ALTER TABLE message_bodies ALTER COLUMN data SET COMPRESSION {method}"
            )
    except sa.exc.DBAPIError:
        pass  # "compression method lz4 not supported": this server keeps pglz


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
