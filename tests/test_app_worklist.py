"""The worklist: one row per study (thumbnail, the impression's first line, indication, state, time), the search
in SQL, and *Next unsigned* / *Previous*."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import synthetic_cxr
from PIL import Image, ImageStat

from app.current import Current
from app.handlers import DRAFT_FIELDS, VIEWER_FIELDS, Handlers
from app.service import Services
from app.settings import AppSettings
from app.store import NewDraft, NewImage, Store, WorklistEntry, like_pattern
from app.worklist import (
    WORKLIST_HEADERS,
    WorklistView,
    first_line,
    neighbour,
    state_label,
    thumbnail_uri,
    worklist_rows,
)
from echo_model.imaging import pixel_content_hash

# gr.Warning outside a running server falls back to warnings.warn; the app's input warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")
D = {name: i for i, name in enumerate(DRAFT_FIELDS)}
V = {name: i for i, name in enumerate(VIEWER_FIELDS)}
W = {name: i for i, name in enumerate(WORKLIST_HEADERS)}


def _image(seed: int, size: tuple[int, int] = (200, 160)) -> NewImage:
    img = synthetic_cxr(seed, size)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return NewImage(content_hash=pixel_content_hash(img), png=buf.getvalue(), width=size[1], height=size[0],
                    view="pa", metadata={"source_format": "png"})


def _study(store: Store, owner: str, *, seed: int, impression: str | None = None, indication: str = "",
           findings: str = "Lungs: clear.") -> tuple[str, str | None]:
    """A study with one view and, unless ``impression`` is None, one draft."""
    study = store.create_study(owner, [_image(seed)])
    if impression is None:
        return study.id, None
    draft = store.add_draft(NewDraft(
        study_id=study.id, author=owner, model="m", model_revision="r", sampler="echo", language="en",
        report=f"Findings: {findings} Impression: {impression}", findings=findings, impression=impression,
        settings={"indication": indication},
    ))
    return study.id, draft.id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", single_connection=False)
    yield s
    s.close()


def _entry(study_id: str, state: str = "draft", warnings: int = 0) -> WorklistEntry:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return WorklistEntry(study_id=study_id, draft_id=None if state == "no draft" else f"d-{study_id}", state=state,
                         versions=0, created_at=now, updated_at=now, findings="", impression="", indication="",
                         views=1, drafts=0, first_image=None, warnings=warnings)


# ---------------------------------------------------------------------------------------- the store
def test_worklist_has_one_entry_per_study_with_the_latest_text_and_state(store: Store) -> None:
    empty, _ = _study(store, "alice", seed=0)
    drafted, draft_a = _study(store, "alice", seed=1, impression="No acute disease.\nSecond line.",
                              indication="cough")
    edited, draft_b = _study(store, "alice", seed=2, impression="Small effusion.")
    store.save_edit(draft_b, "alice", findings="Lungs: clear.", impression="Edited impression.")
    store.save_edit(draft_b, "alice", findings="Lungs: clear.", impression="Edited again.")
    signed, draft_c = _study(store, "alice", seed=3, impression="Drafted.")
    store.sign(draft_c, "alice", findings="f", impression="Signed impression.")
    _study(store, "bob", seed=4, impression="Bob's study.")

    entries = store.worklist("alice")
    assert [e.study_id for e in entries] == [signed, edited, drafted, empty]  # newest first, alice's only
    by_id = {e.study_id: e for e in entries}
    assert (by_id[empty].state, by_id[empty].draft_id, by_id[empty].impression) == ("no draft", None, "")
    assert (by_id[drafted].state, by_id[drafted].draft_id, by_id[drafted].indication) == ("draft", draft_a, "cough")
    assert (by_id[edited].state, by_id[edited].versions, by_id[edited].impression) == ("edited", 2, "Edited again.")
    assert (by_id[signed].state, by_id[signed].impression) == ("signed", "Signed impression.")
    assert by_id[signed].updated_at > by_id[signed].created_at
    assert all(e.first_image is not None and e.first_image.is_file() for e in entries)


def test_a_signed_draft_stands_for_its_study_over_a_later_draft(store: Store) -> None:
    study_id, first = _study(store, "alice", seed=0, impression="First.")
    store.sign(first, "alice", findings="f", impression="Signed.")
    store.add_draft(NewDraft(study_id=study_id, author="alice", model="m", model_revision="r", sampler="echo",
                             language="en", report="Impression: later", findings="", impression="later"))
    (entry,) = store.worklist("alice")
    assert (entry.draft_id, entry.state, entry.drafts) == (first, "signed", 2)


@pytest.mark.parametrize(("query", "expected"), [
    ("effusion", {"effusion"}),                     # drafted text
    ("EFFUSION", {"effusion"}),                     # case-insensitive
    ("pneumothorax", {"edited"}),                   # a saved version's text
    ("fever", {"effusion"}),                        # the indication
    ("100%", {"percent"}),                          # LIKE wildcards taken literally
    ("_", set()),
    ("x' OR '1'='1", set()),                        # a bound parameter, not SQL
])
def test_search_filters_by_text_and_indication_in_sql(store: Store, query: str, expected: set[str]) -> None:
    ids = {
        "effusion": _study(store, "alice", seed=0, impression="Small effusion.", indication="fever")[0],
        "edited": _study(store, "alice", seed=1, impression="Clear.")[0],
        "percent": _study(store, "alice", seed=2, impression="Heart 100% normal.")[0],
    }
    _study(store, "bob", seed=3, impression="Bob's effusion.", indication="fever")
    (edited,) = [e for e in store.worklist("alice") if e.study_id == ids["edited"]]
    store.save_edit(edited.draft_id, "alice", findings="x", impression="Apical pneumothorax.")
    names = {v: k for k, v in ids.items()}
    assert {names[e.study_id] for e in store.worklist("alice", query=query)} == expected


def test_search_by_study_or_draft_id(store: Store) -> None:
    study_id, draft_id = _study(store, "alice", seed=0, impression="a")
    other, _ = _study(store, "alice", seed=1, impression="b")
    assert [e.study_id for e in store.worklist("alice", query=study_id[:8])] == [study_id]
    assert [e.study_id for e in store.worklist("alice", query=draft_id[:8].upper())] == [study_id]
    assert {e.study_id for e in store.worklist("alice", query="  ")} == {study_id, other}


def test_like_pattern_escapes_wildcards(store: Store) -> None:
    assert like_pattern("a%b_c\\") == "%a\\%b\\_c\\\\%"
    with pytest.raises(ValueError, match="-1"):
        store.worklist("alice", limit=-1)


# ---------------------------------------------------------------------------------------- rows
def test_a_warned_draft_says_so_in_the_worklist_until_it_is_edited(store: Store) -> None:
    study = store.create_study("alice", [_image(0)])
    draft = store.add_draft(NewDraft(
        study_id=study.id, author="alice", model="m", model_revision="r", sampler="echo", language="en",
        report="Findings: Lungs clear. Impression: Bilateral ground--glass in the", findings="Lungs clear.",
        impression="Bilateral ground--glass in the", settings={},
        warnings=["The draft stops mid-sentence", "The draft has repeated punctuation '--'"],
    ))
    clean, _ = _study(store, "alice", seed=1, impression="No acute disease.")
    rows = {r[W["study"]]: r for r in worklist_rows(store.worklist("alice"))}
    assert rows[study.id[:8]][W["state"]] == "draft · ⚠ 2 warnings"
    assert rows[clean[:8]][W["state"]] == "draft"
    store.save_edit(draft.id, "alice", findings="Lungs clear.", impression="No acute disease.")
    rows = {r[W["study"]]: r for r in worklist_rows(store.worklist("alice"))}
    assert rows[study.id[:8]][W["state"]] == "edited v1"


def test_rows_show_a_thumbnail_first_line_state_and_short_ids(store: Store) -> None:
    study_id, draft_id = _study(store, "alice", seed=0, impression="\n  No acute disease.\nMore.", indication="cough")
    store.save_edit(draft_id, "alice", findings="Lungs: clear.", impression="Edited line one.\nline two")
    empty, _ = _study(store, "alice", seed=1)
    rows = worklist_rows(store.worklist("alice"))
    assert [r[W["study"]] for r in rows] == [empty[:8], study_id[:8]]
    edited = rows[1]
    assert edited[W["impression (first line)"]] == "Edited line one."
    assert (edited[W["indication"]], edited[W["state"]], edited[W["draft"]]) == ("cough", "edited v1", draft_id[:8])
    assert rows[0][W["state"]] == "no draft" and rows[0][W["draft"]] == ""
    datetime.strptime(edited[W["time (UTC)"]], "%Y-%m-%d %H:%M")
    uri = edited[W["view"]].split("(", 1)[1].rstrip(")")
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,"))))
    assert max(thumb.size) == 96 and thumb.size == (77, 96)  # 160 x 200 view, aspect kept
    stored = Image.open(store.worklist("alice")[1].first_image).convert("L").resize(thumb.size)
    assert abs(ImageStat.Stat(stored).mean[0] - ImageStat.Stat(thumb.convert("L")).mean[0]) < 3  # the same picture


def test_first_line_state_label_and_thumbnail_edges(tmp_path: Path) -> None:
    assert first_line("\n\n  Heart normal.  \nlungs") == "Heart normal."
    assert first_line("x" * 200, limit=10) == "x" * 9 + "…" and first_line("") == ""
    assert state_label(_entry("s", "signed")) == "signed"
    assert state_label(_entry("s", "draft", warnings=3)) == "draft · ⚠ 3 warnings"
    assert state_label(_entry("s", "draft", warnings=1)) == "draft · ⚠ 1 warning"
    assert state_label(_entry("s", "signed", warnings=3)) == "signed"  # the reader signed it (anyway)
    assert thumbnail_uri(None) == "" and thumbnail_uri(tmp_path / "missing.png") == ""
    with pytest.raises(ValueError, match="4"):
        thumbnail_uri(tmp_path / "x.png", size=4)


# ---------------------------------------------------------------------------------------- navigation
def test_next_unsigned_goes_down_the_list_and_wraps_previous_goes_up() -> None:
    entries = [_entry("a"), _entry("b", "signed"), _entry("c", "edited"), _entry("d", "no draft")]
    assert neighbour(entries, "a", direction="next").study_id == "c"  # b is signed
    assert neighbour(entries, "c", direction="next").study_id == "d"
    assert neighbour(entries, "d", direction="next").study_id == "a"  # wraps to the top
    assert neighbour(entries, "", direction="next").study_id == "a"
    assert neighbour(entries, "c", direction="previous").study_id == "b"  # any state
    assert neighbour(entries, "", direction="previous").study_id == "a"
    with pytest.raises(ValueError, match="first of the worklist"):
        neighbour(entries, "a", direction="previous")
    with pytest.raises(ValueError, match="no other unsigned study"):
        neighbour([_entry("a"), _entry("b", "signed")], "a", direction="next")
    with pytest.raises(ValueError, match="empty"):
        neighbour([], "a", direction="next")
    with pytest.raises(ValueError, match="'sideways'"):
        neighbour(entries, "a", direction="sideways")


# ---------------------------------------------------------------------------------------- handlers
@pytest.fixture
def handlers(tmp_path: Path) -> Iterator[Handlers]:
    services = Services.create(AppSettings(data_dir=tmp_path / "app", upload_cache_dir=tmp_path / "cache"))
    yield Handlers(services)
    services.store.close()


def test_the_all_drafts_table_marks_the_warned_draft_beside_its_re_draft(handlers: Handlers) -> None:
    store = handlers.store
    study = store.create_study("local", [_image(0)])
    common = {"study_id": study.id, "author": "local", "model": "m", "model_revision": "r", "language": "en",
              "settings": {}}
    warned = store.add_draft(NewDraft(sampler="echo", report="Findings: Lungs clear. Impression: Bilateral in the",
                                      findings="Lungs clear.", impression="Bilateral in the",
                                      warnings=["The draft stops mid-sentence"], **common))
    again = store.add_draft(NewDraft(sampler="teacher", report="Findings: Lungs clear. Impression: Normal.",
                                     findings="Lungs clear.", impression="Normal.", **common))
    rows = {row[-1]: row for row in handlers.history()}
    assert rows[warned.id][1] == "draft · ⚠ 1 warning" and rows[warned.id][2] == "echo"
    assert rows[again.id][1] == "draft" and rows[again.id][2] == "teacher"
    store.sign(warned.id, "local", findings="Lungs clear.", impression="No acute disease.")
    rows = {row[-1]: row for row in handlers.history()}
    assert rows[warned.id][1] == "signed"


def test_handler_next_and_previous_open_studies_with_their_drafts(handlers: Handlers) -> None:
    store = handlers.store
    older, draft_older = _study(store, "local", seed=0, impression="Older impression.")
    signed, draft_signed = _study(store, "local", seed=1, impression="Signed.")
    store.sign(draft_signed, "local", findings="f", impression="Signed.")
    newer, _ = _study(store, "local", seed=2)
    table, view = handlers.worklist("")
    assert [r[W["study"]] for r in table] == [newer[:8], signed[:8], older[:8]]

    out = handlers.next_unsigned(Current(), view)  # nothing open: the top unsigned study (no draft yet)
    assert (out[D["study_id"]], out[D["draft_id"]], out[D["current"]].study_id) == (newer, "", newer)
    out = handlers.next_unsigned(out[D["current"]], view)  # skips the signed study
    assert (out[D["study_id"]], out[D["draft_id"]]) == (older, draft_older)
    assert out[D["impression"]] == "Older impression." and out[D["current"]].draft_id == draft_older
    back = handlers.previous_study(out[D["current"]], view)
    assert (back[D["draft_id"]], back[D["current"]].state) == (draft_signed, "signed")
    shown = handlers.show_study(out[D["study_id"]])
    assert shown[V["study_id"]] == older and shown[V["viewer"]] is not None

    # The search narrows the navigation too.
    _, only_older = handlers.worklist("older impression")
    with pytest.raises(gr.Error, match="no other unsigned study"):
        handlers.next_unsigned(out[D["current"]], only_older)


def test_clicked_row_gives_full_ids_and_open_shows_a_study_without_draft(handlers: Handlers) -> None:
    store = handlers.store
    study_id, draft_id = _study(store, "local", seed=0, impression="x")
    empty, _ = _study(store, "local", seed=1)
    table, view = handlers.worklist("")
    row = table[1]
    event = gr.SelectData(None, {"index": [1, 0], "value": row[0], "row_value": row, "selected": True})
    assert handlers.pick_worklist_row(view, event) == (study_id, draft_id)
    stale = WorklistView(query="", ids=())
    assert all(v is not None and not isinstance(v, str) for v in handlers.pick_worklist_row(stale, event))
    out = handlers.open_draft("", empty)
    assert (out[D["study_id"]], out[D["draft_id"]], out[D["findings"]]) == (empty, "", "")
    assert handlers.open_draft(draft_id)[D["draft_id"]] == draft_id  # the API call with a draft id only


def test_only_the_users_own_studies(handlers: Handlers) -> None:
    _study(handlers.store, "bob", seed=0, impression="bob's")
    request: Any = type("R", (), {"username": "alice"})()
    table, _ = handlers.worklist("", request)
    assert table == []
    with pytest.raises(gr.Error, match="empty"):
        handlers.next_unsigned(Current(), WorklistView(), request)


def test_worklist_time_is_the_latest_event(store: Store) -> None:
    _, draft_id = _study(store, "alice", seed=0, impression="x")
    before = store.worklist("alice")[0].updated_at
    store.save_edit(draft_id, "alice", findings="f", impression="y")
    after = store.worklist("alice")[0].updated_at
    assert after >= before and after - before < timedelta(minutes=1)
    assert after == store.get_draft(draft_id, "alice").versions[-1].created_at


# ---------------------------------------------------------------------------------------- honest figures
def test_draft_summary_shows_end_to_end_seconds_beside_the_first_block(tmp_path: Path, model_dir: Path,
                                                                        monkeypatch) -> None:
    """End to end runs from Generate to the last block, so it holds what the sampler's clock does not: here a
    slow image read (0.3 s) before the model starts. Reopening the draft shows the same figure."""
    import time

    import app.handlers

    settings = AppSettings(models=(str(model_dir),), data_dir=tmp_path / "data", upload_cache_dir=tmp_path / "cache",
                           max_new_tokens=12)
    h = Handlers(Services.create(settings))
    real = app.handlers.load_study_images

    def slow(study: Any) -> Any:
        time.sleep(0.3)
        return real(study)

    monkeypatch.setattr(app.handlers, "load_study_images", slow)
    image = tmp_path / "frontal.png"
    synthetic_cxr(0, (120, 100)).save(image)
    updates = list(h.generate([str(image)], "cough", "en", "", "echo", 12, 0.0, 0.85, 0, ""))
    first, last = updates[0][D["timing"]], updates[-1][D["timing"]]
    assert first["end_to_end_s"] >= 0.3 + first["time_to_first_block_s"] - 0.05  # the read is in, not in the clock
    assert last["end_to_end_s"] >= last["total_s"] + 0.3 and last["end_to_end_s"] >= first["end_to_end_s"]
    summary = updates[-1][D["summary"]]
    assert f"first block {last['time_to_first_block_s']:.2f} s" in summary
    assert f"end to end {last['end_to_end_s']:.2f} s (from Generate to the last block" in summary
    assert "tokens/forward" in summary and f"total {last['total_s']:.2f} s" in summary  # the existing facts stay
    assert "to the latest block" in updates[0][D["summary"]] or len(updates) == 1
    reopened = h.open_draft(updates[-1][D["draft_id"]])
    assert reopened[D["summary"]] == summary
    h.store.close()


def test_upload_then_generate_counts_from_the_upload_not_from_the_press(tmp_path: Path, model_dir: Path,
                                                                          monkeypatch) -> None:
    """On the Draft tab the views are stored by the upload, before Generate: the summary then gives upload to last
    block = the upload's de-identification and storage (here slowed by 0.4 s) + Generate to last block, and
    leaves out the time between the two (a reader typing the indication)."""
    import time

    import app.handlers

    settings = AppSettings(models=(str(model_dir),), data_dir=tmp_path / "data", upload_cache_dir=tmp_path / "cache",
                           max_new_tokens=12)
    h = Handlers(Services.create(settings))
    real = app.handlers.ingest_uploads

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(app.handlers, "ingest_uploads", slow)
    image = tmp_path / "frontal.png"
    synthetic_cxr(1, (120, 100)).save(image)
    study_id = h.upload([str(image)])[V["study_id"]]
    assert h.upload_seconds(study_id) >= 0.4
    time.sleep(0.5)  # typing the indication: not part of the figure
    updates = list(h.generate(None, "cough", "en", "", "echo", 12, 0.0, 0.85, 0, study_id))
    last = updates[-1][D["timing"]]
    assert last["upload_s"] == h.upload_seconds(study_id)
    assert last["upload_to_last_block_s"] == pytest.approx(last["upload_s"] + last["end_to_end_s"], abs=1e-3)
    assert last["upload_to_last_block_s"] < last["end_to_end_s"] + 0.4 + 0.5  # the pause is left out
    summary = updates[-1][D["summary"]]
    assert f"upload to last block {last['upload_to_last_block_s']:.2f} s" in summary
    assert f"storing the upload {last['upload_s']:.2f} s" in summary and "typing excluded" in summary
    assert h.open_draft(updates[-1][D["draft_id"]])[D["summary"]] == summary  # stored with the draft
    # A study opened from History (no upload in this process) keeps the Generate-based figure.
    h._upload_seconds.clear()
    again = list(h.generate(None, "", "en", "", "echo", 12, 0.0, 0.85, 0, study_id))[-1]
    assert "upload_s" not in again[D["timing"]] and "end to end" in again[D["summary"]]
    h.store.close()
