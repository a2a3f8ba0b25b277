"""Alembic environment: runs the migrations on the connection :mod:`app.schema` passes in (one transaction)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations with `echo-app db upgrade` (it passes the database connection in)")
# Transactional on SQLite too: app.schema opens the transaction itself (BEGIN IMMEDIATE) and keeps the
# driver from committing on its own.
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False,
                  transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
