"""Alembic environment: runs the migrations on the connection :mod:`app.schema` passes in (one transaction)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations with `echo-app db upgrade` (it passes the database connection in)")
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
