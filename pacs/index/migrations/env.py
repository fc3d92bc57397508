"""Alembic environment: always run programmatically by ``pacs.index.migrate`` on a given connection."""

from __future__ import annotations

from alembic import context

from pacs.index.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds tables for later migrations.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
