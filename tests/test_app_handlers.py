"""Gradio callbacks called directly (no server): streaming per block, correct/sign/addendum, export, delete."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import synthetic_cxr

from app.handlers import DRAFT_FIELDS, VIEWER_FIELDS, Handlers
from app.main import build_demo
from app.service import MASK_GLYPH, DraftingService, Services
from app.settings import AppSettings, SettingsError
from echo_model.data import load_dataset
from echo_model.data.records import EDIT_REASONS

F = {name: i for i, name in enumerate(DRAFT_FIELDS)}
# gr.Warning outside a running server falls back to warnings.warn; the app's input warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


@pytest.fixture(scope="module")
def handlers(tmp_path_factory, model_dir: Path) -> Handlers:
    root = tmp_path_factory.mktemp("app")
    settings = AppSettings(models=(str(model_dir),), data_dir=root / "data", upload_cache_dir=root / "cache",
                           max_new_tokens=12)
    h = Handlers(Services.create(settings))
    h.export_root = root / "exports"
    h.export_root.mkdir()
    return h


def _upload(h: Handlers, name: str = "frontal.png", seed: int = 0, size: tuple[int, int] = (256, 240)) -> str:
    folder = h.settings.upload_cache_dir / f"u{seed}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_cxr(seed, size).save(folder / name)
    return str(folder / name)


def _generate(h: Handlers, files: list[str] | None = None, *, study_id: str = "", **kw: Any) -> list[tuple]:
    args = {"indication": "cough", "language": "en", "model": "", "sampler": "echo", "max_new_tokens": 12,
            "temperature": 0.0, "threshold": 0.85, "seed": 0}
    args.update(kw)
    return list(h.generate(files, args["indication"], args["language"], args["model"], args["sampler"],
                           args["max_new_tokens"], args["temperature"], args["threshold"], args["seed"], study_id))


@pytest.fixture(scope="module")
def drafted(handlers: Handlers) -> list[tuple]:
    return _generate(handlers, [_upload(handlers, size=(120, 100))], temperature=0.7, seed=5)


def test_one_update_per_block_with_placeholder_until_the_last(drafted: list[tuple], handlers: Handlers) -> None:
    last = drafted[-1]
    timing = last[F["timing"]]
    assert len(drafted) == timing["blocks"] == len(timing["per_block_ms"]) >= 2
    for n, update in enumerate(drafted[:-1], start=1):
        assert update[F["report_view"]][-1] == (MASK_GLYPH * 4, "masked")
        assert update[F["draft_id"]] == "" and len(update[F["blocks"]]) == n
    assert all(cat != "masked" for _, cat in last[F["report_view"]])
    assert last[F["draft_id"]] and timing["done"] is True
    assert timing["time_to_first_block_s"] > 0 and timing["total_s"] >= timing["time_to_first_block_s"]
    assert timing["tokens_per_forward"] > 0 and "tokens/forward" in last[F["summary"]]


def test_draft_records_model_revision_seed_and_settings(drafted: list[tuple], handlers: Handlers) -> None:
    draft = handlers.store.get_draft(drafted[-1][F["draft_id"]], "local")
    assert draft.model == str(handlers.settings.models[0]) and draft.model_revision == "unversioned"
    assert draft.seed == 5 and draft.settings["temperature"] == 0.7 and draft.settings["indication"] == "cough"
    assert len(draft.trace) == len(drafted) and all("token_ids" in t and "ms" in t for t in draft.trace)
    assert (drafted[-1][F["findings"]], drafted[-1][F["impression"]]) == (draft.findings, draft.impression)


def test_input_warnings_are_shown(drafted: list[tuple]) -> None:
    assert "view 1:" in drafted[-1][F["warnings"]] and "small" in drafted[-1][F["warnings"]]


def test_generate_without_images_or_with_bad_language_names_the_problem(handlers: Handlers, drafted) -> None:
    with pytest.raises(gr.Error, match="no image"):
        _generate(handlers)
    with pytest.raises(gr.Error, match="language 'zh' is not supported"):
        _generate(handlers, study_id=drafted[-1][F["study_id"]], language="zh")
    with pytest.raises(gr.Error, match="not offered"):
        _generate(handlers, study_id=drafted[-1][F["study_id"]], model="/somewhere/else")


def test_upload_error_names_the_file_and_viewer_shows_stored_views(handlers: Handlers) -> None:
    bad = Path(_upload(handlers, "scan.png", seed=9))
    bad.write_text("%PDF-1.4 not an x-ray")
    with pytest.raises(gr.Error, match=r"scan\.png: .*PDF"):
        handlers.upload([str(bad)], "")
    assert not bad.exists()
    out = handlers.upload([_upload(handlers, "pa.png", seed=3)], "")
    viewer = dict(zip(VIEWER_FIELDS, out))
    assert viewer["study_id"] and viewer["viewer"].count("<img") == 1 and out[-1] is None
    html, info = handlers.render_view(viewer["study_id"], 0, 128, 64)
    assert html.count("<img") == 1 and html != viewer["viewer"] and "view 1" in info


def test_edit_sign_addendum_and_immutability(handlers: Handlers) -> None:
    updates = _generate(handlers, [_upload(handlers, seed=11)])
    draft_id = updates[-1][F["draft_id"]]
    assert handlers.editor_lock(draft_id)[2]["visible"] is True  # the tiny model's echo draft is warned
    status, copy = handlers.save_edit(draft_id, " Heart normal.\n", "No acute disease. ", ["style"], "tidied")
    assert handlers.editor_lock(draft_id)[2]["visible"] is False  # edited: a re-draft would not carry the edit
    assert "version 1" in status and copy == "Findings: Heart normal. Impression: No acute disease."
    assert handlers.store.get_draft(draft_id, "local").current == (" Heart normal.\n", "No acute disease. ")
    with pytest.raises(gr.Error, match="unknown edit reasons"):
        handlers.save_edit(draft_id, "a", "b", ["typo"], "")
    # the tiny model's draft fails the report check, so signing it needs sign_anyway
    signed = handlers.sign(draft_id, "Heart normal.", "Normal chest.", ["false finding"], "", sign_anyway=True)
    assert "Signed" in signed[0] and signed[1:3] == ("Heart normal.", "Normal chest.")
    *boxes, offer = handlers.editor_lock(draft_id)
    assert all(u["interactive"] is False for u in boxes) and offer["visible"] is False  # signed: no re-draft offer
    *boxes, offer = handlers.editor_lock(updates[-1][F["draft_id"]] + "-unknown")
    assert all(u["interactive"] is True for u in boxes) and offer["visible"] is False
    with pytest.raises(gr.Error, match="add an addendum"):
        handlers.save_edit(draft_id, "changed", "changed", [], "")
    status, cleared = handlers.add_addendum(draft_id, "Compared with prior: unchanged.")
    assert "1 addendum" in status and cleared == ""
    opened = handlers.open_draft(draft_id)
    assert opened[F["findings"]] == "Heart normal." and opened[F["impression"]] == "Normal chest."


def test_redraft_keeps_the_edited_findings(handlers: Handlers, drafted: list[tuple]) -> None:
    source = drafted[-1][F["draft_id"]]
    impression = drafted[-1][F["impression"]]
    updates = list(handlers.redraft(source, "The heart is normal in size.", impression, "", "echo", 8, 0.0, 0.85, 0))
    assert updates[0][F["report_view"]][0] == ("Findings: The heart is normal in size. ", "kept")
    child = handlers.store.get_draft(updates[-1][F["draft_id"]], "local")
    assert child.parent_id == source and child.report.startswith("Findings: The heart is normal in size.")
    assert child.settings["prefix"] == "Findings: The heart is normal in size."


def test_redraft_tells_the_user_when_the_model_code_cannot(handlers: Handlers, drafted, monkeypatch) -> None:
    class OldDrafter:
        def __init__(self, model):
            pass

        def stream(self, images, *, sampler="echo", indication=None, lang="en", config=None, warnings=()):
            raise AssertionError("must not be called")

    old = Handlers(Services(settings=handlers.settings, store=handlers.store,
                            drafting=DraftingService(handlers.settings, drafter_factory=OldDrafter)))
    told: list[str] = []
    monkeypatch.setattr(gr, "Info", told.append)
    updates = list(old.redraft(drafted[-1][F["draft_id"]], "x", "y", "", "echo", 8, 0.0, 0.85, 0))
    assert told == ["Re-draft from edit is not available with this model."]
    assert len(updates) == 1 and all(isinstance(u, dict) and u.get("__type__") == "update" for u in updates[0])


def test_export_round_trips_through_load_dataset(handlers: Handlers, tmp_path: Path) -> None:
    updates = _generate(handlers, [_upload(handlers, seed=21)])
    draft_id = updates[-1][F["draft_id"]]
    handlers.save_edit(draft_id, "Draft-edited.", "x", ["missed finding"], "first pass")
    handlers.save_edit(draft_id, "Draft-edited again.", "x", [], "first pass")  # the comment left in the box
    handlers.sign(draft_id, "Small left pleural effusion.", "Effusion.", ["missed finding", "severity"], "ok",
                  sign_anyway=True)  # the tiny model's draft fails the report check
    zip_path, status = handlers.export_corrections("", "")
    assert "Exported" in status
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    records = {r.id: r for r in load_dataset(folder)}
    rec = records[draft_id]
    draft = handlers.store.get_draft(draft_id, "local")
    assert (rec.findings, rec.impression, rec.source) == ("Small left pleural effusion.", "Effusion.", "echo_app")
    assert rec.correction.draft_findings == draft.findings and rec.correction.model_revision == "unversioned"
    assert rec.correction.edit_reasons == ("missed finding", "severity") and rec.correction.editor == "local"
    assert rec.correction.comment == "first pass\nok"  # each comment once
    assert set(rec.correction.edit_reasons) <= set(EDIT_REASONS) and rec.indication == "cough"
    assert all(Path(img.path).is_file() for img in rec.images)
    with pytest.raises(gr.Error, match="no signed report"):
        handlers.export_corrections("2999-01-01", "")
    with pytest.raises(gr.Error, match="is not a date"):
        handlers.export_corrections("yesterday", "")


def test_delete_needs_confirmation_and_removes_the_study(handlers: Handlers) -> None:
    updates = _generate(handlers, [_upload(handlers, seed=31)])
    study_id = updates[-1][F["study_id"]]
    with pytest.raises(gr.Error, match="tick the confirmation"):
        handlers.delete_study(study_id, False)
    status, rows = handlers.delete_study(study_id, True)
    assert "Deleted study" in status and all(r[-2] != study_id for r in rows)
    with pytest.raises(gr.Error, match="does not exist"):
        handlers.open_draft(updates[-1][F["draft_id"]])
    assert any(r[2] == "study.delete" for r in handlers.audit(""))


def test_build_demo_wires_the_public_endpoints(handlers: Handlers) -> None:
    demo = build_demo(handlers.settings, services=handlers.services)
    names = {d.api_name for d in demo.fns.values() if d.api_visibility != "private"}
    assert {"generate", "redraft_from_edit", "save_edit", "sign", "add_addendum", "export_corrections",
            "open_draft", "history", "delete_study", "upload_views", "audit"} <= names
    queued = {d.api_name: d.queue for d in demo.fns.values() if d.api_name and d.fn is not None}
    # Every event is queued (so its error reaches the browser in words) and none waits behind a draft.
    assert all(queued.values()), queued
    assert all(d.concurrency_limit is None for d in demo.fns.values() if d.fn is not None)
    gen = next(d for d in demo.fns.values() if d.api_name == "generate")
    assert gen.concurrency_id == "gpu" and gen.concurrency_limit is None  # bounded by Services.gate instead
    gate = handlers.services.gate
    assert (gate.slots, gate.max_waiting) == (handlers.settings.generation_concurrency, handlers.settings.queue_size)


def test_dicom_without_extension_is_shown_with_its_window_and_no_header_is_kept(handlers: Handlers) -> None:
    import numpy as np

    from echo_model.imaging.synthetic import dicom_bytes, phantom_cxr_array, synthetic_dicom_dataset

    pixels = (phantom_cxr_array((256, 256), seed=4).astype(np.uint16) * 16)
    ds = synthetic_dicom_dataset(pixels, bits_stored=12, attributes={
        "PatientName": "DOE^JOHN", "PatientID": "MRN-998877", "ViewPosition": "PA", "BodyPartExamined": "CHEST",
        "WindowCenter": 2048, "WindowWidth": 4096})
    folder = handlers.settings.upload_cache_dir / "dicom-upload"
    folder.mkdir(parents=True)
    (folder / "IM0001").write_bytes(dicom_bytes(ds))
    viewer = dict(zip(VIEWER_FIELDS, handlers.upload([str(folder / "IM0001")], "")))
    assert "DICOM" in viewer["view_info"] and "pa" in viewer["view_info"]
    assert "window C 2048" in viewer["view_info"] and "(dicom)" in viewer["view_info"]
    stored = b"".join(p.read_bytes() for p in handlers.settings.data_dir.rglob("*") if p.is_file())
    assert b"DOE^JOHN" not in stored and b"MRN-998877" not in stored and not (folder / "IM0001").exists()


def test_two_tabs_a_stale_save_is_refused_and_warnings_need_sign_anyway(handlers: Handlers) -> None:
    """Two sessions hold version 0 of one draft; the second's save is refused in words, its text stays unsaved."""
    from app.current import Current

    updates = _generate(handlers, [_upload(handlers, seed=31)])
    draft_id, tab = updates[-1][F["draft_id"]], updates[-1][F["current"]]
    assert isinstance(tab, Current) and (tab.draft_id, tab.version, tab.state) == (draft_id, 0, "draft")
    # Each tab sends the draft id and version of its editor (as the browser does from its boxes).
    handlers.save_edit(draft_id, "Tab one.", "x", [], "", tab.version, tab)
    with pytest.raises(gr.Error, match="is at version 1, but this editor holds version 0"):
        handlers.save_edit(draft_id, "Tab two.", "x", [], "", tab.version, tab)
    handlers.save_edit(draft_id, "API call without a version: no check.", "x", [], "")
    with pytest.raises(gr.Error, match="no draft on study"):
        handlers.save_edit("", "Typed on another study.", "x", [], "", None, Current(study_id="b" * 32))
    assert [v.findings for v in handlers.store.get_draft(draft_id, "local").versions] == [
        "Tab one.", "API call without a version: no check."]

    # A draft with a warning: signing needs sign_anyway, through the UI and the API.
    study = handlers.store.get_study(tab.study_id, "local")
    from app.store import NewDraft

    warned = handlers.store.add_draft(NewDraft(
        study_id=study.id, author="local", model="m", model_revision="r", sampler="echo", language="en",
        report="Findings: a Impression: b", findings="a", impression="b", warnings=["repeated header"]))
    assert handlers.editor_lock(warned.id)[2]["visible"] is True  # a warned one-step draft: the teacher offered
    teacher = handlers.store.add_draft(NewDraft(
        study_id=study.id, author="local", model="m", model_revision="r", sampler="teacher", language="en",
        report="Findings: a Impression: b", findings="a", impression="b", warnings=["repeated header"]))
    assert handlers.editor_lock(teacher.id)[2]["visible"] is False  # already the teacher's
    with pytest.raises(gr.Error, match="Sign anyway"):
        handlers.sign(warned.id, "a", "b", [], "")
    _, text, anyway = handlers.confirm_sign(warned.id, "a", "b")
    assert "repeated header" in text and anyway["visible"] is True
    handlers.sign(warned.id, "a", "b", [], "", None, True)
    assert handlers.editor_lock(warned.id)[2]["visible"] is False  # signed
    with pytest.raises(gr.Error, match="already signed"):
        handlers.confirm_sign(warned.id, "a", "b")


def test_stop_leaves_the_study_without_a_draft(handlers: Handlers) -> None:
    from app.current import Current

    drafting = Current(study_id="s" * 32, views=("pa",), state="drafting")
    banner, now, status = handlers.draft_stopped(drafting)
    assert (now.study_id, now.state, now.draft_id) == (drafting.study_id, "", "") and "Stopped" in status
    assert "no draft yet" in banner
    signed = Current(study_id="s" * 32, draft_id="d" * 32, version=1, state="signed")
    assert handlers.draft_stopped(signed)[1] == signed  # Stop when nothing drafts changes nothing


def test_fallback_drafts_a_warned_study_again_and_keeps_every_attempt(tmp_path: Path, model_dir: Path) -> None:
    settings = AppSettings(models=(str(model_dir),), data_dir=tmp_path / "data", upload_cache_dir=tmp_path / "cache",
                           max_new_tokens=12, fallback=("teacher", "ar"))
    h = Handlers(Services.create(settings))
    updates = _generate(h, [_upload(h, seed=3)])
    study_id = updates[-1][F["study_id"]]
    rows = sorted((r for r in h.store.history("local") if r.study_id == study_id and r.draft_id),
                  key=lambda r: r.created_at)
    drafts = [h.store.get_draft(r.draft_id, "local") for r in rows]
    samplers = [d.sampler for d in drafts]
    assert samplers[:2] == ["echo", "teacher"] and samplers == ["echo", "teacher", "ar"][: len(samplers)]
    for earlier in drafts[:-1]:  # every attempt but the last failed the check, and each is kept
        assert earlier.warnings
    assert len(drafts) == 3 or not [w for w in drafts[-1].warnings if not w.startswith("view ")]
    # the editor shows the last attempt, and says why it is not the one-step draft
    last = updates[-1]
    assert last[F["draft_id"]] == drafts[-1].id
    assert "the echo draft failed the report check" in last[F["status"]] or \
        "the teacher draft failed the report check" in last[F["status"]]
    ids = [u[F["draft_id"]] for u in updates if u[F["draft_id"]]]
    assert ids == [d.id for d in drafts]  # each attempt's finished draft was on screen once, in order
    redrafting = [u for u in updates if u[F["status"]].startswith("Drafted again by the teacher")]
    assert redrafting and all("failed the report check" in u[F["status"]] for u in redrafting)


def test_fallback_settings_are_checked_at_start() -> None:
    env = {"ECHO_FALLBACK": " Teacher , ar "}
    assert AppSettings.from_env(env).fallback == ("teacher", "ar")
    assert AppSettings.from_env({"ECHO_FALLBACK": "None"}).fallback == ()
    assert AppSettings.from_env({}).fallback is None  # unset: each model's default
    with pytest.raises(SettingsError, match=r"ECHO_FALLBACK=teacher,foo: unknown fallback sampler 'foo'"):
        AppSettings.from_env({"ECHO_FALLBACK": "teacher,foo"})
    with pytest.raises(SettingsError, match="names a sampler twice"):
        AppSettings.from_env({"ECHO_FALLBACK": "ar,ar"})


def test_each_request_gets_its_models_fallback(tmp_path: Path, model_dir: Path) -> None:
    def service(**kw: Any) -> DraftingService:
        return DraftingService(AppSettings(data_dir=tmp_path / "d", **kw))

    default = service(fallback=None, models=("embedded", str(model_dir)))
    assert default.fallback_for(None, "echo") == ("teacher", "ar")  # the embedded family's one-step draft
    assert default.fallback_for("embedded", "teacher") == ()
    assert default.fallback_for(str(model_dir), "echo") == ()  # another checkpoint: drafted as asked
    named = service(fallback=("teacher", "ar"))
    assert named.fallback_for(None, "teacher") == ("ar",)  # never the draft's own sampler
    assert service().fallback_for(None, "echo") == ()  # settings made in code: none unless named
    with pytest.raises(ValueError, match="not offered"):
        default.fallback_for("other", "echo")
