"""Backup and restore of the database plus images, with the commands docs/deploy.md gives.

A store with an uploaded view, a saved edit, a signed report with an addendum and its audit trail is backed up
while it is open, restored into a new folder (SQLite) or a new database (PostgreSQL), and everything must come
back identical: every version, the signature, the audit rows, the image bytes and the exported records.jsonl.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from app.export import RECORDS_FILE, export_corrections
from app.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from crash_test import seed_drafts

USER = "alice"


def _fill(store_dir: Path, database_url: str | None = None) -> str:
    """Seed a study and draft, then save, sign and add an addendum; returns the draft id."""
    ((_, draft_id),) = seed_drafts(store_dir, [USER], database_url=database_url)
    store = Store(store_dir, url=database_url)
    try:
        store.save_edit(draft_id, USER, findings="Heart size normal.", impression="No acute disease.",
                        reasons=["style"], comment="first pass")
        store.sign(draft_id, USER, findings="Heart size normal. Lungs clear.", impression="No acute disease.")
        store.add_addendum(draft_id, USER, "Compared with the prior study: unchanged.")
    finally:
        store.close()
    return draft_id


def _snapshot(store: Store, draft_id: str, tmp: Path) -> dict[str, Any]:
    """Everything a restore must bring back, without the paths that differ between the two stores."""
    draft = store.get_draft(draft_id, USER)
    study = store.get_study(draft.study_id, USER)
    images = [(img.content_hash, img.label, img.view, Path(img.path).read_bytes()) for img in study.images]
    audit = [dataclasses.asdict(row) for row in store.audit_trail(study_id=study.id)]
    result = export_corrections(store, USER, out_dir=tmp)
    with zipfile.ZipFile(result.zip_path) as zf:
        records = zf.read(next(n for n in zf.namelist() if n.endswith(f"/{RECORDS_FILE}")))
    return {"draft": dataclasses.asdict(draft), "images": images, "audit": audit, "records": records}


def test_sqlite_backup_of_an_open_store_restores_every_report_and_image(tmp_path: Path) -> None:
    live, backup, restored = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    draft_id = _fill(live)
    store = Store(live)  # the app is running: .backup takes a consistent copy anyway
    try:
        backup.mkdir()
        subprocess.run(["sqlite3", str(live / "echo.sqlite"), f".backup '{backup / 'echo.sqlite'}'"], check=True)
        subprocess.run(["cp", "-a", f"{live / 'images'}/.", str(backup / "images")], check=True)
        before = _snapshot(store, draft_id, tmp_path / "export-live")
    finally:
        store.close()
    shutil.copytree(backup, restored)  # restore: both back into an empty ECHO_DATA_DIR
    copy = Store(restored)
    try:
        after = _snapshot(copy, draft_id, tmp_path / "export-restored")
    finally:
        copy.close()
    assert after == before
    _assert_complete(after)


def _assert_complete(snapshot: dict[str, Any]) -> None:
    """The snapshot holds what was written: an edit, the signature, the addendum, their audit rows, the view."""
    assert [e["kind"] for e in snapshot["draft"]["edits"]] == ["edit", "sign", "addendum"]
    assert snapshot["draft"]["signed_by"] == USER
    assert {"edit.save", "report.sign", "addendum.add"} <= {row["action"] for row in snapshot["audit"]}
    assert len(snapshot["images"]) == 1 and snapshot["images"][0][3].startswith(b"\x89PNG")
    assert snapshot["records"].count(b"\n") == 1


def test_postgresql_dump_and_restore_bring_back_reports_and_images_in_the_database(tmp_path: Path,
                                                                                   pg_cluster) -> None:
    from app.schema import upgrade

    url = pg_cluster.create_database("backup_live")
    upgrade(url)  # `echo-app db upgrade`
    draft_id = _fill(tmp_path / "live", url)
    libpq = url.replace("postgresql+psycopg://", "postgresql://")  # the SQLAlchemy URL without "+psycopg"
    dump = tmp_path / "echo.dump"
    store = Store(tmp_path / "live", url=url)
    try:
        subprocess.run([str(pg_cluster.bin_dir / "pg_dump"), "--format=custom", f"--file={dump}", libpq], check=True)
        before = _snapshot(store, draft_id, tmp_path / "export-live")
    finally:
        store.close()
    env = {**os.environ, "PGPASSWORD": pg_cluster.password}
    subprocess.run([str(pg_cluster.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", "echo",
                    "echo_restored"], check=True, env=env)
    restored_url = url.rsplit("/", 1)[0] + "/echo_restored"
    subprocess.run([str(pg_cluster.bin_dir / "pg_restore"), "--no-owner", "--exit-on-error",
                    f"--dbname={restored_url.replace('postgresql+psycopg://', 'postgresql://')}", str(dump)], check=True)
    copy = Store(tmp_path / "restored-replica", url=restored_url)  # a replica's fresh local folder: images from the dump
    try:
        assert copy.schema_revision() == copy.expected_revision  # `echo-app db current` exits 0
        after = _snapshot(copy, draft_id, tmp_path / "export-restored")
    finally:
        copy.close()
    assert after == before
    _assert_complete(after)
    assert copy.image_mode == "database"  # the view came back from the dump, not from a folder
