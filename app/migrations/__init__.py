"""Alembic migrations of the store's schema, run by ``echo-app db upgrade`` (see :mod:`app.schema`).

``env.py`` takes its connection from the caller (no ``alembic.ini``); ``versions/`` holds one file per
revision, oldest first: ``0001`` is the schema the app created before migrations existed (a store
without an ``alembic_version`` table upgrades from there), ``0002`` adds what several app processes
on one server database need.
"""
