"""Schema migrations: stores written by earlier releases upgrade in place with every row intact, the
migrated schema is the one the code declares, a mismatch is refused with a message, and the database
URL's password never shows.

The fixtures under tests/fixtures/stores/<commit>/ were written by that commit's own Store
(tests/fixtures/stores/make_store.py): synthetic images, signed and unsigned drafts, versions, addenda,
an explanation and a deleted study.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from test_store_postgres import assert_one_audit_row_per_change

from app.db_cli import run_db_command
from app.schema import SCHEMA_REVISION, SchemaError, known_revisions, schema_state, upgrade
from app.settings import AppSettings, SettingsError
from app.store import Base, Store, StoreError

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
RELEASES = ("c729f15", "fb4ab8e")
OLD_TABLES = ("study", "image", "study_image", "draft", "edit", "audit", "explanation")


def _legacy_copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def _rows(db: Path, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """Every row of the old tables, with the old columns only, in id order."""
    con = sqlite3.connect(db)
    try:
        if columns is None:
            columns = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in OLD_TABLES}
        return {t: con.execute("SELECT " + ", ".join(f'"{c}"' for c in cols) + f" FROM {t} ORDER BY rowid").fetchall()
                for t, cols in columns.items()}
    finally:
        con.close()


def _columns(db: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(db)
    try:
        return {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in OLD_TABLES}
    finally:
        con.close()


def test_migrations_end_at_the_revision_the_code_expects():
    assert known_revisions()[-1] == SCHEMA_REVISION and known_revisions()[0] == "0001"


@pytest.mark.parametrize("release", RELEASES)
def test_a_store_of_an_earlier_release_upgrades_in_place_with_every_row_intact(release, tmp_path, capsys):
    data = _legacy_copy(release, tmp_path)
    db = data / "echo.sqlite"
    columns = _columns(db)
    before = _rows(db, columns)
    assert schema_state(f"sqlite:///{db}").legacy
    assert len(before["edit"]) == 7 and any(a[3] == "study.delete" for a in before["audit"])

    assert run_db_command("current", env={"ECHO_DATA_DIR": str(data)}) == 1
    assert run_db_command("upgrade", env={"ECHO_DATA_DIR": str(data)}) == 0
    out = capsys.readouterr().out
    assert "was without a schema revision" in out and f"now at schema revision {SCHEMA_REVISION}" in out
    assert ".bak" in out
    backups = list(data.glob("echo.sqlite.before-migrations-*.bak"))
    assert len(backups) == 1 and _rows(backups[0], columns) == before

    assert _rows(db, columns) == before  # every old row, every old column, byte for byte
    con = sqlite3.connect(db)
    try:
        numbered = con.execute("SELECT draft_id, kind, version, addendum FROM edit ORDER BY id").fetchall()
        for sql in ("UPDATE edit SET findings = 'tampered'", "DELETE FROM edit", "DELETE FROM draft",
                    "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only|immutable"):
                con.execute(sql)
    finally:
        con.close()
    signed_draft = numbered[0][0]
    assert [n[1:] for n in numbered if n[0] == signed_draft] == [
        ("edit", 1, None), ("edit", 2, None), ("sign", 3, None), ("addendum", None, 1), ("addendum", None, 2)]
    assert run_db_command("current", env={"ECHO_DATA_DIR": str(data)}) == 0

    store = Store(data)
    try:
        assert_one_audit_row_per_change(store)
        draft = store.get_draft(signed_draft, "alice")
        assert draft.status == "signed" and len(draft.versions) == 3 and len(draft.addenda) == 2
        assert draft.current == ("Lungs: clear.\nHeart: normal size.", "Normal study.")
        study = store.get_study(draft.study_id, "alice")
        assert all(img.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for img in study.images)
        assert (study.images[0].original_path is not None) == (release == "fb4ab8e")  # 16-bit copies came later
        assert store.get_explanation(signed_draft, "alice", "finding 0|occlusion|n=4").maps[1] == [[0.0]]
        bob = store.worklist("bob")
        assert len(bob) == 1 and bob[0].drafts == 2
        assert sorted(r.status for r in store.history("bob")) == ["draft", "edited"]
        # Saving continues from the migrated numbering.
        store.add_addendum(signed_draft, "alice", "third")
        assert [e.comment for e in store.get_draft(signed_draft, "alice").addenda][-1] == "third"
    finally:
        store.close()


def test_the_app_upgrades_its_own_sqlite_store_when_it_opens_it(tmp_path):
    data = _legacy_copy("fb4ab8e", tmp_path)
    before = _rows(data / "echo.sqlite")
    store = Store(data)
    try:
        assert store.schema_revision() == SCHEMA_REVISION and len(store.history("alice")) == 2
    finally:
        store.close()
    assert len(list(data.glob("*.bak"))) == 1
    fresh = Store(tmp_path / "fresh")  # a new, empty store: created and stamped, no copy taken
    try:
        assert fresh.schema_revision() == SCHEMA_REVISION and not list((tmp_path / "fresh").glob("*.bak"))
    finally:
        fresh.close()
    assert _rows(data / "echo.sqlite", {t: [c for c in _columns(data / "echo.sqlite")[t]
                                            if c not in ("version", "addendum", "edit_id")] for t in OLD_TABLES}
                 ) == before


def test_a_database_of_an_unknown_revision_is_refused(tmp_path):
    store = Store(tmp_path / "data")
    store.close()
    con = sqlite3.connect(tmp_path / "data" / "echo.sqlite")
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="revision 9999, which this release .*schema 0002.* does not know"):
        Store(tmp_path / "data")
    with pytest.raises(SchemaError, match="newer release"):
        upgrade(f"sqlite:///{tmp_path / 'data' / 'echo.sqlite'}")


def test_a_store_not_upgraded_is_refused_when_migration_on_open_is_off(tmp_path):
    data = _legacy_copy("c729f15", tmp_path)
    with pytest.raises(SchemaError) as err:
        Store(data, migrate=False)
    assert "echo-app db upgrade" in str(err.value) and SCHEMA_REVISION in str(err.value)
    assert "without a schema revision (written before migrations)" in str(err.value)


def _schema_diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            return [d for d in compare_metadata(context, Base.metadata)
                    if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_one_the_code_declares_sqlite(tmp_path):
    upgrade(f"sqlite:///{tmp_path / 'echo.sqlite'}")
    assert _schema_diff(f"sqlite:///{tmp_path / 'echo.sqlite'}") == []
    data = _legacy_copy("c729f15", tmp_path)
    upgrade(f"sqlite:///{data / 'echo.sqlite'}")
    assert _schema_diff(f"sqlite:///{data / 'echo.sqlite'}") == []


def test_the_migrated_schema_is_the_one_the_code_declares_postgres(pg_url):
    upgrade(pg_url)
    assert _schema_diff(pg_url) == []


def test_a_legacy_store_copied_into_postgres_keeps_its_rows(pg_url, tmp_path):
    """Moving a workstation's store to the server: migrate the SQLite file, copy its rows, read them back."""
    data = _legacy_copy("fb4ab8e", tmp_path)
    upgrade(f"sqlite:///{data / 'echo.sqlite'}")
    upgrade(pg_url)
    source, target = create_engine(f"sqlite:///{data / 'echo.sqlite'}"), create_engine(pg_url)
    try:
        with source.connect() as src, target.begin() as dst:
            # A bulk load as the owner, like pg_restore: row triggers off (a signed draft's edits load after it).
            dst.exec_driver_sql("SET LOCAL session_replication_role = replica")
            for table in Base.metadata.sorted_tables:
                rows = [dict(r._mapping) for r in src.execute(table.select())]
                if rows:
                    dst.execute(table.insert(), rows)
            for table in ("edit", "audit", "study_image", "explanation"):  # serial columns follow the copied ids
                dst.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                    f"(SELECT coalesce(max(id), 1) FROM {table}))")
    finally:
        source.dispose()
        target.dispose()
    sqlite_store = Store(data)
    server_store = Store(tmp_path / "server", url=pg_url, image_dir=data / "images")
    try:
        for table in ("study", "draft", "edit", "audit", "explanation"):
            assert server_store.count(table) == sqlite_store.count(table)
        for owner in ("alice", "bob"):
            for row in sqlite_store.history(owner):
                if row.draft_id:
                    assert server_store.get_draft(row.draft_id, owner) == sqlite_store.get_draft(row.draft_id, owner)
        assert_one_audit_row_per_change(server_store)
    finally:
        sqlite_store.close()
        server_store.close()


def test_the_password_of_the_database_url_never_shows(tmp_path):
    url = "postgresql+psycopg://echo:s3cret-pw@127.0.0.1:1/echo"
    settings = AppSettings.from_env({"ECHO_DATABASE_URL": url, "ECHO_DATA_DIR": str(tmp_path)})
    assert settings.database_url == url
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in settings.database_url_redacted
    assert settings.database_url_redacted == "postgresql+psycopg://echo:***@127.0.0.1:1/echo"
    out, err = io.StringIO(), io.StringIO()
    # Nothing listens on port 1: the error names the database without its password.
    assert run_db_command("current", env={"ECHO_DATABASE_URL": url}, out=out, err=err) == 2
    assert "echo:***@127.0.0.1:1/echo" in err.getvalue() and "s3cret-pw" not in out.getvalue() + err.getvalue()
    with pytest.raises(SettingsError) as bad:
        AppSettings.from_env({"ECHO_DATABASE_URL": "postgresql+psycopg://echo:s3cret-pw@host:notaport/echo"})
    assert "ECHO_DATABASE_URL" in str(bad.value) and "s3cret-pw" not in str(bad.value)


def test_database_settings_come_from_the_environment(tmp_path):
    env = {"ECHO_DATA_DIR": str(tmp_path), "ECHO_IMAGE_DIR": str(tmp_path / "shared"), "ECHO_DB_POOL_SIZE": "3",
           "ECHO_DB_MAX_OVERFLOW": "0"}
    settings = AppSettings.from_env(env)
    assert (settings.image_dir, settings.db_pool_size, settings.db_max_overflow) == (tmp_path / "shared", 3, 0)
    assert settings.database_url is None
    assert settings.database_url_redacted == f"sqlite:///{tmp_path / 'echo.sqlite'}"
    with pytest.raises(SettingsError, match="ECHO_DB_POOL_SIZE must be >= 1, got 0"):
        AppSettings.from_env({**env, "ECHO_DB_POOL_SIZE": "0"})


def test_an_in_memory_database_is_refused(tmp_path):
    with pytest.raises(StoreError, match="in-memory database"):
        Store(tmp_path, url="sqlite://")


def test_a_failed_upgrade_leaves_the_store_as_it_was(tmp_path, capsys):
    """All revisions run in one transaction: a store the migration cannot take (here an edit recorded twice in
    the audit, which the new unique index refuses) keeps its old schema and rows, and the command says why."""
    data = _legacy_copy("fb4ab8e", tmp_path)
    con = sqlite3.connect(data / "echo.sqlite")
    edit_id, draft_id = con.execute("SELECT id, draft_id FROM edit ORDER BY id LIMIT 1").fetchone()
    con.execute("INSERT INTO audit (at, actor, action, study_id, draft_id, detail) VALUES "
                "('2026-01-01 00:00:00', 'alice', 'edit.save', NULL, ?, ?)", (draft_id, f'{{"edit": {edit_id}}}'))
    con.commit()
    con.close()
    columns, before = _columns(data / "echo.sqlite"), _rows(data / "echo.sqlite")
    assert run_db_command("upgrade", env={"ECHO_DATA_DIR": str(data)}) == 2
    assert "UNIQUE constraint failed" in capsys.readouterr().err
    assert _columns(data / "echo.sqlite") == columns and _rows(data / "echo.sqlite") == before
    assert schema_state(f"sqlite:///{data / 'echo.sqlite'}").legacy
