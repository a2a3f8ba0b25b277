"""The store on a real PostgreSQL server (a throwaway cluster per session, a fresh database per test).

Two ``Store`` objects on one database stand for two app processes (replicas): each has its own engine,
connection pool and data folder, and they share nothing but the database.
"""

from __future__ import annotations

import os
import subprocess
import threading
import zipfile
from pathlib import Path

import psycopg
import pytest
from conftest import run_at_once
from sqlalchemy import text
from sqlalchemy.engine import make_url
from test_app_store import _draft, _image

from app.export import RECORDS_FILE, export_corrections
from app.schema import SCHEMA_REVISION, SchemaError, upgrade
from app.store import SignedReportError, StaleVersionError, Store, StoreError


def _connect(url: str) -> psycopg.Connection:
    u = make_url(url)
    return psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database,
                           autocommit=True)


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path):
    """Two stores on one migrated PostgreSQL database, each with its own local folder."""
    upgrade(pg_url)
    stores = [Store(tmp_path / f"replica{i}", url=pg_url, pool_size=2, max_overflow=4) for i in (1, 2)]
    yield stores
    for store in stores:
        store.close()


def test_cluster_serves_a_fresh_database_per_test(pg_url):
    url = make_url(pg_url)
    with _connect(pg_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == url.database
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_replica_refuses_a_database_not_upgraded_and_hides_the_password(pg_url, tmp_path):
    password = make_url(pg_url).password
    with pytest.raises(SchemaError) as err:
        Store(tmp_path / "data", url=pg_url)
    message = str(err.value)
    assert "echo-app db upgrade" in message and SCHEMA_REVISION in message and "empty" in message
    assert password not in message and "***" in message
    result = upgrade(pg_url)
    assert (result.before.revision, result.after.revision) == (None, SCHEMA_REVISION)
    assert password not in result.url
    store = Store(tmp_path / "data", url=pg_url)
    try:
        assert store.schema_revision() == SCHEMA_REVISION and password not in store.url_redacted
        assert store.image_mode == "database"
    finally:
        store.close()


def test_round_trip_search_and_images_are_shared_through_the_database(replicas):
    first, second = replicas
    study_id, draft_id = _draft(first, seed=3)
    first.save_edit(draft_id, "alice", findings="Lungs clear", impression="Normal", expected_version=0)
    signed = second.sign(draft_id, "alice", findings="Lungs clear.", impression="Normal.", expected_version=1)
    first.add_addendum(draft_id, "alice", "called the ward")
    assert signed.status == "signed"
    for store in replicas:
        draft = store.get_draft(draft_id, "alice")
        assert [(e.kind, e.findings) for e in draft.edits] == [
            ("edit", "Lungs clear"), ("sign", "Lungs clear."), ("addendum", "Lungs clear.")]
        # case-insensitive search as on SQLite, the indication included
        assert [e.study_id for e in store.worklist("alice", query="COUGH")] == [study_id]
        assert store.worklist("alice", query="100%") == []
    paths = [store.get_study(study_id, "alice").images[0].path for store in replicas]
    assert paths[0] != paths[1] and paths[0].read_bytes() == paths[1].read_bytes() == _image(3).png
    assert first.count("image_data") == 1


def test_two_replicas_saving_the_same_version_commit_once(replicas):
    """Eight saves of version 0 at once, spread over both replicas: one commits, seven are refused."""
    _, draft_id = _draft(replicas[0])
    outcomes: list[str] = []

    def save(i: int) -> None:
        try:
            replicas[i % 2].save_edit(draft_id, "alice", findings=f"tab {i}", impression="", expected_version=0)
            outcomes.append("saved")
        except StaleVersionError as err:
            assert "version 0" in str(err)
            outcomes.append("stale")

    run_at_once(8, save)
    assert sorted(outcomes) == ["saved"] + ["stale"] * 7
    assert len(replicas[1].get_draft(draft_id, "alice").versions) == 1


def test_without_the_row_lock_the_unique_version_still_refuses_the_second_save(replicas, monkeypatch):
    """The constraint, not only the lock: both writers read version 0 before either inserts."""
    _, draft_id = _draft(replicas[0])
    both_read = threading.Barrier(2)
    original = Store._owned_draft
    check = Store._check_version

    def unlocked(self, s, draft_id_, actor, *, for_update=False):
        return original(self, s, draft_id_, actor)

    def check_then_wait(draft, expected):
        check(draft, expected)
        both_read.wait(timeout=10)

    monkeypatch.setattr(Store, "_owned_draft", unlocked)
    monkeypatch.setattr(Store, "_check_version", staticmethod(check_then_wait))
    errors: list[Exception] = []

    def save(i: int) -> None:
        try:
            replicas[i].save_edit(draft_id, "alice", findings=f"replica {i}", impression="", expected_version=0)
        except StoreError as err:
            errors.append(err)

    run_at_once(2, save)
    assert len(errors) == 1 and isinstance(errors[0], StaleVersionError)
    assert "saved elsewhere at the same moment" in str(errors[0])
    assert len(replicas[0].get_draft(draft_id, "alice").versions) == 1


def test_the_database_refuses_to_rewrite_signed_edits_and_audit_rows(replicas, pg_url):
    store = replicas[0]
    study_id, draft_id = _draft(store)
    store.sign(draft_id, "alice", findings="f", impression="i")
    image = replicas[1].get_study(study_id, "alice").images[0].path  # cached by the other replica
    refused = (
        "UPDATE draft SET findings = 'tampered'", "DELETE FROM draft", "UPDATE edit SET findings = 'tampered'",
        "DELETE FROM edit", "UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit",
        "TRUNCATE study CASCADE",
        ("INSERT INTO edit (draft_id, kind, author, created_at, findings, impression, reasons, comment, "
         f"seconds_since_draft) VALUES ('{draft_id}', 'edit', 'x', now(), 'f', 'i', '[]', '', 0)"),
    )
    with _connect(pg_url) as conn:
        for sql in refused:
            with pytest.raises(psycopg.errors.IntegrityError):
                conn.execute(sql)
        assert conn.execute("SELECT findings FROM edit").fetchall() == [("f",)]
    with pytest.raises(SignedReportError):
        store.save_edit(draft_id, "alice", findings="x", impression="y")
    # Deleting the whole study (the app's delete, audited) still removes its signed draft.
    counts = store.delete_study(study_id, "alice")
    assert counts["drafts"] == 1 and counts["edits"] == 1 and store.count("edit") == 0
    assert store.count("image_data") == 0
    # The other replica's cached copy of the deleted pixels goes when it next starts.
    other_copy = replicas[1].images_dir / image.name
    assert other_copy.exists()
    replicas[1].close()
    replicas[1] = Store(replicas[1].data_dir, url=pg_url)
    assert not other_copy.exists()
    assert [e.action for e in store.audit_trail(study_id=study_id)][-1] == "study.delete"


def test_export_from_either_replica_is_byte_identical(replicas, tmp_path):
    first, second = replicas
    for seed in (1, 2):
        _, draft_id = _draft(first, seed=seed)
        second.save_edit(draft_id, "alice", findings=f"edited {seed}", impression="x", expected_version=0)
        first.sign(draft_id, "alice", findings=f"signed {seed}", impression="y", expected_version=1)
    contents = []
    for i, store in enumerate(replicas):
        result = export_corrections(store, "alice", out_dir=tmp_path / f"export{i}")
        with zipfile.ZipFile(result.zip_path) as zf:
            contents.append({Path(n).relative_to(Path(n).parts[0]).as_posix(): zf.read(n)
                             for n in zf.namelist() if not n.endswith("README.txt")})
    assert contents[0] == contents[1]
    assert contents[0][RECORDS_FILE].count(b"\n") == 2 and len(contents[0]) == 3  # records + 2 images


def test_pg_dump_and_pg_restore_bring_back_reports_images_and_the_guards(replicas, pg_cluster, pg_url, tmp_path):
    """Backup and restore of a server store: images live in the database, so one dump holds everything."""
    first, _ = replicas
    study_id, draft_id = _draft(first, seed=7)
    first.sign(draft_id, "alice", findings="f.", impression="i.", expected_version=0)
    first.add_addendum(draft_id, "alice", "later")
    client = {"-h": "127.0.0.1", "-p": str(pg_cluster.port), "-U": "echo"}
    args = [part for pair in client.items() for part in pair]
    env = {**os.environ, "PGPASSWORD": pg_cluster.password}
    dump = tmp_path / "echo.dump"
    subprocess.run([pg_cluster.bin_dir / "pg_dump", *args, "-Fc", "-f", dump, make_url(pg_url).database],
                   check=True, env=env, capture_output=True)
    restored_url = pg_cluster.create_database(f"restored_{len(pg_cluster.databases)}")
    subprocess.run([pg_cluster.bin_dir / "pg_restore", *args, "--no-owner", "-d", make_url(restored_url).database,
                    dump], check=True, env=env, capture_output=True)
    restored = Store(tmp_path / "restored-replica", url=restored_url)
    try:
        assert restored.get_draft(draft_id, "alice") == first.get_draft(draft_id, "alice")
        assert restored.audit_trail(draft_id=draft_id) == first.audit_trail(draft_id=draft_id)
        image = restored.get_study(study_id, "alice").images[0]
        assert image.path.read_bytes() == _image(7).png
        with _connect(restored_url) as conn, pytest.raises(psycopg.errors.IntegrityError):
            conn.execute("UPDATE edit SET findings = 'tampered'")
    finally:
        restored.close()


def test_every_committed_change_has_exactly_one_audit_row(replicas):
    first, second = replicas
    _, draft_id = _draft(first)
    second.save_edit(draft_id, "alice", findings="a", impression="b", expected_version=0)
    with pytest.raises(StaleVersionError):
        first.save_edit(draft_id, "alice", findings="lost race", impression="b", expected_version=0)
    first.sign(draft_id, "alice", findings="a.", impression="b.", expected_version=1)
    second.add_addendum(draft_id, "alice", "one")
    first.add_addendum(draft_id, "alice", "two")
    _draft(second, seed=5)
    assert_one_audit_row_per_change(first)


def assert_one_audit_row_per_change(store: Store) -> None:
    """By joins: each edit has one audit row naming it, each draft one ``draft.create``, each study one
    ``study.create``, and no audit row names a missing edit of an existing draft."""
    checks = {
        "edit": "SELECT e.id FROM edit e LEFT JOIN audit a ON a.edit_id = e.id AND a.draft_id = e.draft_id "
                "GROUP BY e.id HAVING count(a.id) <> 1",
        "draft": "SELECT d.id FROM draft d LEFT JOIN audit a ON a.draft_id = d.id AND a.action = 'draft.create' "
                 "GROUP BY d.id HAVING count(a.id) <> 1",
        "study": "SELECT s.id FROM study s LEFT JOIN audit a ON a.study_id = s.id AND a.action = 'study.create' "
                 "GROUP BY s.id HAVING count(a.id) <> 1",
        # (an edit of a deleted study is gone with its draft; its audit row stays, by design)
        "dangling": "SELECT a.id FROM audit a JOIN draft d ON d.id = a.draft_id LEFT JOIN edit e ON e.id = a.edit_id "
                    "AND e.draft_id = a.draft_id WHERE a.edit_id IS NOT NULL AND e.id IS NULL",
    }
    with store.engine.connect() as conn:
        bad = {name: conn.execute(text(sql)).fetchall() for name, sql in checks.items()}
        edits = conn.execute(text("SELECT count(*) FROM edit")).scalar()
    assert bad == {name: [] for name in checks} and edits > 0


def test_a_shared_image_folder_instead_of_the_database(pg_url, tmp_path):
    upgrade(pg_url)
    shared = tmp_path / "shared-images"
    stores = [Store(tmp_path / f"replica{i}", url=pg_url, image_dir=shared) for i in (1, 2)]
    try:
        study_id, _ = _draft(stores[0], seed=9)
        image = stores[1].get_study(study_id, "alice").images[0]
        assert stores[1].image_mode == "files" and image.path.parent == shared
        assert image.path.read_bytes() == _image(9).png and stores[1].count("image_data") == 0
    finally:
        for store in stores:
            store.close()
