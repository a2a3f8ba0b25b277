"""The app's store: exact round trips, signed reports frozen (in code and in the database), deletion and audit."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from conftest import run_at_once, synthetic_cxr
from PIL import Image

from app.store import (
    AccessError,
    NewDraft,
    NewImage,
    NotFoundError,
    SignedReportError,
    Store,
    StoreError,
    needs_single_connection,
)
from echo_model.imaging import pixel_content_hash

AWKWARD = "  Lungs: clear.\n\tNo effusion — “quoted” 所见 \u00a0trailing  \n"


def _image(seed: int = 0) -> NewImage:
    img = synthetic_cxr(seed, (64, 48))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return NewImage(content_hash=pixel_content_hash(img), png=buf.getvalue(), width=48, height=64, view="pa",
                    metadata={"source_format": "png"}, warnings=("small image",), cxr_likeness=0.7)


def _draft(store: Store, owner: str = "alice", *, seed: int = 0) -> tuple[str, str]:
    study = store.create_study(owner, [_image(seed)])
    draft = store.add_draft(NewDraft(
        study_id=study.id, author=owner, model="m", model_revision="r1", sampler="echo", language="en",
        report="Findings: a Impression: b", findings="a", impression="b", seed=7,
        settings={"threshold": 0.85, "indication": "cough"}, trace=[{"block": 0, "token_ids": [1], "confidences": [0.5],
                                                                      "text": "a", "ms": 1.0}],
        timings={"blocks": 1},
    ))
    return study.id, draft.id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data", single_connection=False)
    yield s
    s.close()


def test_draft_round_trip_keeps_provenance(store: Store) -> None:
    _, draft_id = _draft(store)
    draft = store.get_draft(draft_id, "alice")
    assert (draft.model, draft.model_revision, draft.sampler, draft.seed) == ("m", "r1", "echo", 7)
    assert draft.settings["threshold"] == 0.85 and draft.trace[0]["token_ids"] == [1]
    assert draft.status == "draft" and draft.current == ("a", "b")
    assert draft.created_at.tzinfo is not None


def test_edit_is_stored_exactly_as_sent(store: Store) -> None:
    _, draft_id = _draft(store)
    store.save_edit(draft_id, "alice", findings=AWKWARD, impression="", reasons=["style", "other"], comment=AWKWARD)
    draft = store.get_draft(draft_id, "alice")
    assert draft.current == (AWKWARD, "")
    assert draft.versions[-1].comment == AWKWARD and draft.versions[-1].reasons == ("style", "other")
    assert draft.status == "edited"


def test_unknown_edit_reason_is_refused_by_name(store: Store) -> None:
    _, draft_id = _draft(store)
    with pytest.raises(StoreError, match="'typo'"):
        store.save_edit(draft_id, "alice", findings="x", impression="y", reasons=["typo"])


def test_signed_report_is_immutable_and_takes_addenda(store: Store) -> None:
    _, draft_id = _draft(store)
    with pytest.raises(StoreError, match="not signed"):
        store.add_addendum(draft_id, "alice", "too early")
    store.sign(draft_id, "alice", findings="final f", impression="final i")
    with pytest.raises(SignedReportError, match="addendum"):
        store.save_edit(draft_id, "alice", findings="changed", impression="changed")
    with pytest.raises(SignedReportError):
        store.sign(draft_id, "alice", findings="again", impression="again")
    store.add_addendum(draft_id, "alice", "Comparison with prior added.")
    draft = store.get_draft(draft_id, "alice")
    assert draft.status == "signed" and draft.current == ("final f", "final i")
    assert [a.comment for a in draft.addenda] == ["Comparison with prior added."]
    actions = [e.action for e in store.audit_trail(draft_id=draft_id)]
    assert actions == ["draft.create", "report.sign", "addendum.add"]


def test_database_itself_refuses_to_rewrite_signed_or_append_only_rows(store: Store, tmp_path: Path) -> None:
    _, draft_id = _draft(store)
    store.sign(draft_id, "alice", findings="f", impression="i")
    store.close()
    con = sqlite3.connect(tmp_path / "data" / "echo.sqlite")
    try:
        for sql in ("UPDATE draft SET findings = 'tampered'", "UPDATE edit SET findings = 'tampered'",
                    "DELETE FROM audit", "UPDATE audit SET actor = 'mallory'", "DELETE FROM edit", "DELETE FROM draft"):
            with pytest.raises(sqlite3.IntegrityError):
                con.execute(sql)
        with pytest.raises(sqlite3.IntegrityError, match="addenda only"):
            con.execute("INSERT INTO edit (draft_id, kind, author, created_at, findings, impression, reasons, comment,"
                        " seconds_since_draft) VALUES (?, 'edit', 'x', '2026-01-01', 'f', 'i', '[]', '', 0)", (draft_id,))
    finally:
        con.close()


def test_signing_an_empty_report_is_refused(store: Store) -> None:
    _, draft_id = _draft(store)
    with pytest.raises(StoreError, match="both empty"):
        store.sign(draft_id, "alice", findings="  ", impression="")


def test_other_users_cannot_read_or_change(store: Store) -> None:
    study_id, draft_id = _draft(store)
    with pytest.raises(AccessError):
        store.get_draft(draft_id, "bob")
    with pytest.raises(AccessError):
        store.save_edit(draft_id, "bob", findings="x", impression="y")
    with pytest.raises(AccessError):
        store.delete_study(study_id, "bob")
    assert store.history("bob") == []
    assert [r.draft_id for r in store.history("alice")] == [draft_id]


def test_delete_removes_study_images_drafts_edits_and_keeps_a_content_free_audit(store: Store) -> None:
    study_id, draft_id = _draft(store, seed=1)
    other_study, _ = _draft(store, seed=2)
    store.save_edit(draft_id, "alice", findings="SECRET findings", impression="SECRET impression")
    png = store.get_study(study_id, "alice").images[0].path
    shared = store.get_study(other_study, "alice").images[0].path
    counts = store.delete_study(study_id, "alice")
    assert counts == {"views": 1, "drafts": 1, "edits": 1, "files": 1}
    assert not png.exists() and shared.exists()
    with pytest.raises(NotFoundError):
        store.get_draft(draft_id, "alice")
    assert store.count("edit") == 0 and store.count("draft") == 1 and store.count("image") == 1
    deletion = [e for e in store.audit_trail(study_id=study_id) if e.action == "study.delete"]
    assert len(deletion) == 1 and "SECRET" not in repr(deletion) and "cough" not in repr(deletion)


def test_images_shared_by_two_studies_survive_one_deletion(store: Store) -> None:
    a = store.create_study("alice", [_image(3)])
    b = store.create_study("alice", [_image(3)])
    path = a.images[0].path
    store.delete_study(a.id, "alice")
    assert path.exists() and store.get_study(b.id, "alice").images[0].path == path
    store.delete_study(b.id, "alice")
    assert not path.exists()


def test_stored_png_is_the_sent_bytes_and_named_by_pixel_hash(store: Store) -> None:
    img = _image(4)
    study = store.create_study("alice", [img])
    stored = study.images[0]
    assert stored.path.name == f"{img.content_hash}.png" and stored.path.read_bytes() == img.png
    with Image.open(stored.path) as png:
        assert pixel_content_hash(png.convert("L")) == img.content_hash


def test_views_can_be_added_only_before_the_first_draft(store: Store) -> None:
    study_id, _ = _draft(store)
    with pytest.raises(StoreError, match="already has drafts"):
        store.add_images(study_id, "alice", [_image(5)])
    fresh = store.create_study("alice", [_image(6)])
    assert len(store.add_images(fresh.id, "alice", [_image(7)]).images) == 2


def test_wal_mode_on_local_disk_and_single_connection_mode_without_wal(tmp_path: Path) -> None:
    wal = Store(tmp_path / "wal", single_connection=False)
    single = Store(tmp_path / "single", single_connection=True)
    try:
        assert wal.journal_mode == "wal"
        assert single.journal_mode == "delete"
        _, draft_id = _draft(single)
        single.save_edit(draft_id, "alice", findings="f", impression="i")
        assert single.get_draft(draft_id, "alice").current == ("f", "i")
    finally:
        wal.close()
        single.close()


@pytest.mark.parametrize(("fstype", "expected"), [("ext4", False), ("nfs4", True), ("fuse.hf-mount", True),
                                                 ("cifs", True), ("overlay", False)])
def test_network_and_fuse_mounts_need_a_single_connection(tmp_path: Path, fstype: str, expected: bool) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/root / ext4 rw 0 0\nremote:/x /mnt/remote\\040dir {fstype} rw 0 0\n")
    assert needs_single_connection(Path("/mnt/remote dir/echo"), mounts_file=mounts) is expected
    assert needs_single_connection(Path("/home/echo"), mounts_file=mounts) is False


def test_a_save_based_on_another_version_is_refused(store: Store) -> None:
    """Optimistic concurrency: two tabs open version 0; the first saves, the second's save and sign are refused."""
    from app.store import StaleVersionError

    _, draft_id = _draft(store)
    store.save_edit(draft_id, "alice", findings="tab 1", impression="", expected_version=0)
    with pytest.raises(StaleVersionError, match="is at version 1, but this editor holds version 0"):
        store.save_edit(draft_id, "alice", findings="tab 2", impression="", expected_version=0)
    with pytest.raises(StaleVersionError, match="version 1"):
        store.sign(draft_id, "alice", findings="tab 2", impression="x", expected_version=0)
    store.save_edit(draft_id, "alice", findings="tab 1 again", impression="", expected_version=1)
    store.save_edit(draft_id, "alice", findings="no version: no check", impression="")
    assert [v.findings for v in store.get_draft(draft_id, "alice").versions] == [
        "tab 1", "tab 1 again", "no version: no check"]
    with pytest.raises(StoreError, match="-1"):
        store.save_edit(draft_id, "alice", findings="x", impression="", expected_version=-1)


def test_concurrent_saves_on_one_sqlite_file_are_numbered_once_each(store: Store, tmp_path: Path) -> None:
    """Two stores on one file (two processes): saves of version 0 commit once; unversioned saves and addenda
    all commit, each with its own number."""
    from app.store import StaleVersionError

    other = Store(tmp_path / "data", single_connection=False)
    _, draft_id = _draft(store)
    outcomes: list[str] = []

    def run(target, **kwargs) -> None:
        def one(i: int) -> None:
            try:
                target((store, other)[i % 2], i, **kwargs)
                outcomes.append("ok")
            except StaleVersionError:
                outcomes.append("stale")

        run_at_once(6, one)

    def save(s: Store, i: int, *, version: int | None) -> None:
        s.save_edit(draft_id, "alice", findings=f"tab {i}", impression="", expected_version=version)

    try:
        run(save, version=0)
        assert sorted(outcomes) == ["ok"] + ["stale"] * 5
        outcomes.clear()
        run(save, version=None)
        store.sign(draft_id, "alice", findings="f", impression="i")
        run(lambda s, i: s.add_addendum(draft_id, "alice", f"addendum {i}"))
        assert outcomes == ["ok"] * 12
        draft = other.get_draft(draft_id, "alice")
        assert len(draft.versions) == 8 and len(draft.addenda) == 6
    finally:
        other.close()
    con = sqlite3.connect(tmp_path / "data" / "echo.sqlite")
    try:
        numbers = con.execute("SELECT version, addendum FROM edit ORDER BY id").fetchall()
    finally:
        con.close()
    assert [v for v, _ in numbers if v] == list(range(1, 9)) and [a for _, a in numbers if a] == list(range(1, 7))
