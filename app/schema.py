"""The store's schema revision: the migrations (``echo-app db upgrade``), the check every app process makes
when it opens the database, and the database URL (with its password kept out of every message).

Revisions live in :mod:`app.migrations` (Alembic, found inside the package: no ``alembic.ini``). A store
written before migrations existed has the tables but no ``alembic_version`` table; :func:`upgrade` takes
it from there (revision ``0001`` keeps the tables it finds). On SQLite the app upgrades its own file when
it opens it (one process owns the file; a copy of a non-empty store is kept first, next to it); a server
database is upgraded only by ``echo-app db upgrade``, run once before the app processes start, and a
process refuses to start on a database at another revision.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool

__all__ = [
    "SCHEMA_REVISION", "SchemaError", "SchemaState", "UpgradeResult", "check_schema", "database_url",
    "is_sqlite", "known_revisions", "read_state", "redact_url", "schema_state", "upgrade",
]

log = logging.getLogger("echo.schema")

#: The revision this release reads and writes (the head of app/migrations/versions).
SCHEMA_REVISION = "0002"
#: ``pg_advisory_xact_lock`` key: two ``db upgrade`` runs against one server database take turns.
_UPGRADE_LOCK = 0x4543484F
UPGRADE_COMMAND = "echo-app db upgrade"


class SchemaError(ValueError):
    """The database is at a schema revision this release cannot use; the message says what to run."""


def redact_url(url: str | URL) -> str:
    """``url`` as text with its password replaced by ``***`` (for logs, messages and the CLI)."""
    return make_url(url).render_as_string(hide_password=True)


def database_url(data_dir: str | Path, url: str | URL | None = None) -> URL:
    """``url`` parsed, or the default: the SQLite file ``echo.sqlite`` in ``data_dir``."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return URL.create("sqlite", database=str(Path(data_dir).expanduser() / "echo.sqlite"))
    try:
        return make_url(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises ArgumentError/ValueError for bad URLs
        raise SchemaError(f"not a database URL: {redact_url(url) if isinstance(url, URL) else '<unparsable>'} "
                          f"({type(err).__name__}); expected e.g. postgresql+psycopg://user@host/echo") from None


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: ``revision`` (None: no ``alembic_version``) and whether the tables exist."""

    revision: str | None
    tables: bool

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables

    @property
    def legacy(self) -> bool:
        """Written before migrations existed (tables, no revision)."""
        return self.revision is None and self.tables

    def describe(self) -> str:
        if self.empty:
            return "empty (no ECHO tables yet)"
        if self.legacy:
            return "without a schema revision (written before migrations)"
        return f"at schema revision {self.revision}"


@dataclass(frozen=True)
class UpgradeResult:
    url: str  # redacted
    before: SchemaState
    after: SchemaState
    backup: Path | None


def _migrations_dir() -> Path:
    return Path(str(resources.files("app.migrations")))


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """Every revision of app/migrations, oldest first."""
    return tuple(s.revision for s in reversed(list(ScriptDirectory.from_config(_config()).walk_revisions())))


def read_state(conn: Connection) -> SchemaState:
    tables = set(inspect(conn).get_table_names())
    revision = None
    if "alembic_version" in tables:  # what MigrationContext.get_current_revision reads, without its log lines
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return SchemaState(revision=revision, tables="study" in tables)


def _engine(url: URL) -> Engine:
    """A short-lived engine for migrations; on SQLite each transaction is ``BEGIN IMMEDIATE`` (DDL included)."""
    if not is_sqlite(url):
        return create_engine(url, poolclass=NullPool)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself, so DDL is transactional too
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: two upgraders take turns

    return engine


def schema_state(url: str | URL) -> SchemaState:
    """The state of the database at ``url`` (``echo-app db current``)."""
    url = make_url(url)
    if is_sqlite(url) and url.database and not Path(url.database).exists():
        return SchemaState(revision=None, tables=False)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return read_state(conn)
    finally:
        engine.dispose()


def _sqlite_backup(url: URL, state: SchemaState) -> Path | None:
    """A consistent copy of a non-empty SQLite store next to it, before it is migrated."""
    if not url.database or state.empty:
        return None
    db = Path(url.database)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = db.with_name(f"{db.name}.before-{state.revision or 'migrations'}-{stamp}.bak")
    src, dst = sqlite3.connect(db), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def _refuse_unknown(url: URL, state: SchemaState) -> None:
    if state.revision is not None and state.revision not in known_revisions():
        raise SchemaError(
            f"the database {redact_url(url)} is at schema revision {state.revision}, which this release "
            f"(schema {SCHEMA_REVISION}) does not know: a newer release upgraded it; run that release, or restore "
            "the backup taken before its upgrade")


def upgrade(url: str | URL, *, backup: bool = True) -> UpgradeResult:
    """Migrate the database at ``url`` to :data:`SCHEMA_REVISION` in one transaction.

    An empty database gets every table; a store written before migrations is upgraded in place. On SQLite
    a non-empty store is first copied to ``<file>.before-<revision>-<time>.bak`` (``backup=False``: no copy).
    """
    url = make_url(url)
    before = schema_state(url)
    _refuse_unknown(url, before)
    copy = _sqlite_backup(url, before) if backup and is_sqlite(url) and before.revision != SCHEMA_REVISION else None
    if is_sqlite(url) and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
            if read_state(conn).revision != SCHEMA_REVISION:
                command.upgrade(_config(conn), "head")
            after = read_state(conn)
    finally:
        engine.dispose()
    if before.revision != after.revision:
        log.info("database %s upgraded (was %s) to schema revision %s", redact_url(url), before.describe(),
                 after.revision)
    return UpgradeResult(url=redact_url(url), before=before, after=after, backup=copy)


def check_schema(conn: Connection, url: URL) -> SchemaState:
    """Raise :class:`SchemaError` unless the database is at :data:`SCHEMA_REVISION`; the message names both
    revisions and the command to run."""
    state = read_state(conn)
    if state.revision == SCHEMA_REVISION:
        return state
    _refuse_unknown(url, state)
    raise SchemaError(
        f"the database {redact_url(url)} is {state.describe()}, but this release needs schema revision "
        f"{SCHEMA_REVISION}: run `{UPGRADE_COMMAND}` once with the same ECHO_DATABASE_URL (before starting the "
        "app processes), then start them")
