"""The draft edited by region: findings one line per region in the editor, stored as typed,
plain again for a re-draft and for the export; and the embedded model's limitation where it drafts.

Unit tests of the layout functions (``echo_model.data.report_text``), then the handlers with the tiny test
model, then the app served on loopback and driven by ``gradio_client``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import synthetic_cxr

from app.handlers import DRAFT_FIELDS, Handlers
from app.main import about_markdown
from app.service import Services, editor_findings, redraft_prefix
from app.settings import EMBEDDED, AppSettings
from echo_model.data import load_dataset
from echo_model.data.normalize import REGION_NAMES, normalize_report, split_regions
from echo_model.data.report_text import (
    OTHER_LABEL,
    findings_by_region,
    findings_from_region_text,
    region_labels,
)
from echo_model.loading import EMBEDDED_LIMITATION, REAL_CHECKPOINT_HINT

F = {name: i for i, name in enumerate(DRAFT_FIELDS)}
# gr.Warning outside a running server falls back to warnings.warn; the app's input warnings are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

RAW_REPORTS = [
    "Findings: Heart size normal. Lungs are clear. Impression: Normal chest.",
    ("Findings: There is a small left pleural effusion with adjacent atelectasis. Mild cardiomegaly. "
     "Sternotomy wires are intact. Degenerative changes of the thoracic spine. Impression: Small effusion."),
    ("FINDINGS: The cardiomediastinal silhouette is within normal limits. No pneumothorax. Patient is rotated. "
     "IMPRESSION: No acute disease."),
    ("Findings: Pulmonary vascular congestion without frank edema. Hilar contours are normal. Free air under "
     "the diaphragm is not seen. Impression: Congestion."),
]
#: Two region sentences, in the model's plain form, and the region layout the editor shows for them.
PLAIN = "The heart is normal in size. The lungs are clear."
LAYOUT = "Lung fields: The lungs are clear.\nCardiac silhouette: The heart is normal in size."
#: The layout's plain findings: the region order, which the model is given back when re-drafting.
KEPT = "The lungs are clear. The heart is normal in size."


# ------------------------------------------------------------------ layout functions
@pytest.mark.parametrize("raw", RAW_REPORTS)
def test_normalized_findings_round_trip_one_line_per_region(raw: str) -> None:
    findings = normalize_report(raw).findings
    layout = findings_by_region(findings)
    assert findings_from_region_text(layout) == findings
    regions = split_regions(findings)
    labels = region_labels()
    lines = layout.split("\n")
    assert len(lines) == len(regions) >= 5  # the normalizer addresses every region with a normal statement
    for line, (key, sentences) in zip(lines, regions.items()):
        assert line == f"{labels[key]}: {' '.join(sentences)}"
    order = [key for key in (*REGION_NAMES, "other") if key in regions]
    assert list(regions) == order


def test_labels_are_the_region_display_names_then_other() -> None:
    labels = region_labels()
    assert list(labels) == [*REGION_NAMES, "other"] and labels["other"] == OTHER_LABEL == "Other"
    assert labels["hila"] == "Hila" and labels["heart"] == "Cardiac silhouette"
    assert findings_by_region(PLAIN) == LAYOUT and findings_from_region_text(LAYOUT) == KEPT


def test_text_that_names_no_region_goes_to_other() -> None:
    raw = "Tiny demonstration text. Nothing anatomical here!"
    assert findings_by_region(raw) == f"Other: {raw}"
    assert findings_by_region("Lungs are clear. See note.") == "Lung fields: Lungs are clear.\nOther: See note."
    assert findings_from_region_text(findings_by_region(raw)) == raw


def test_empty_text() -> None:
    assert findings_by_region("") == "" and findings_by_region("  \n ") == ""
    assert findings_from_region_text("") == "" and findings_from_region_text("\n \n") == ""
    with pytest.raises(TypeError, match="got NoneType"):
        findings_from_region_text(None)  # type: ignore[arg-type]


def test_a_line_without_its_label_is_kept_where_it_was() -> None:
    edited = "Lung fields: The lungs are clear.\nThe heart is mildly enlarged.\nOther: Old rib fracture."
    assert findings_from_region_text(edited) == ("The lungs are clear. The heart is mildly enlarged. "
                                                 "Old rib fracture.")
    # a label is removed only at the start of a line; a label with nothing after it gives nothing
    assert findings_from_region_text("Hila:\nlung fields：Clear.  \r\nHila: Hila: odd.") == "Clear. Hila: odd."
    # a sentence that starts like a label gets its own label first, so the round trip keeps it
    assert findings_from_region_text(findings_by_region("Hila: normal.")) == "Hila: normal."


def test_editor_findings_lays_out_only_text_with_a_region() -> None:
    garbled = "Hm\ufffd\ufffdonges\ufffd\x19UU"
    assert editor_findings(garbled) == garbled
    assert editor_findings("肺清。心影不大。") == "肺清。心影不大。"
    assert editor_findings(PLAIN) == LAYOUT
    assert editor_findings("") == ""


def test_redraft_prefix_strips_the_region_labels() -> None:
    assert redraft_prefix(LAYOUT, "Normal.", draft_impression="Normal.") == \
        "Findings: The lungs are clear. The heart is normal in size."
    assert redraft_prefix(LAYOUT + "\nOther: See note.", "Effusion.", draft_impression="Normal.") == \
        "Findings: The lungs are clear. The heart is normal in size. See note. Impression: Effusion."
    assert redraft_prefix("Lungs clear.", "", draft_impression="x") == "Findings: Lungs clear."


# ------------------------------------------------------------------ handlers, tiny test model
@pytest.fixture(scope="module")
def handlers(tmp_path_factory, model_dir: Path) -> Handlers:
    """The tiny model is the default; the embedded family is on the menu too (never loaded here)."""
    root = tmp_path_factory.mktemp("app")
    settings = AppSettings(models=(str(model_dir), EMBEDDED), data_dir=root / "data",
                           upload_cache_dir=root / "cache", max_new_tokens=12)
    h = Handlers(Services.create(settings))
    h.export_root = root / "exports"
    return h


def _upload(h: Handlers, seed: int) -> str:
    folder = h.settings.upload_cache_dir / f"u{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_cxr(seed, (256, 240)).save(folder / "frontal.png")
    return str(folder / "frontal.png")


def _generate(h: Handlers, seed: int) -> list[tuple]:
    return list(h.generate([_upload(h, seed)], "cough", "en", "", "echo", 12, 0.0, 0.85, 0, ""))


def _redraft(h: Handlers, draft_id: str, findings: str, impression: str) -> list[tuple]:
    return list(h.redraft(draft_id, findings, impression, "", "echo", 8, 0.0, 0.85, 0))


@pytest.fixture(scope="module")
def redrafted(handlers: Handlers) -> dict[str, Any]:
    """A tiny-model draft (no region words), then a re-draft that keeps two region sentences typed as region lines."""
    source = _generate(handlers, 1)[-1]
    updates = _redraft(handlers, source[F["draft_id"]], LAYOUT, source[F["impression"]])
    return {"source": source, "updates": updates,
            "child": handlers.store.get_draft(updates[-1][F["draft_id"]], "local")}


def test_the_finished_draft_is_laid_out_by_region_the_stream_is_plain(redrafted, handlers: Handlers) -> None:
    updates, child = redrafted["updates"], redrafted["child"]
    assert child.findings.startswith(KEPT) and "\n" not in child.findings  # the draft record is the model's text
    shown = updates[-1][F["findings"]]
    assert shown == findings_by_region(child.findings) != child.findings
    lines = shown.split("\n")
    assert lines[0].startswith("Lung fields: The lungs are clear.")
    assert lines[1].startswith("Cardiac silhouette: The heart is normal in size.")
    assert all(line.split(": ", 1)[0] in region_labels().values() for line in lines)
    assert all("\n" not in u[F["findings"]] for u in updates[:-1])  # plain running text while blocks stream
    assert handlers.open_draft(child.id)[F["findings"]] == shown


def test_redraft_sends_the_model_plain_findings_and_keeps_the_edit_verbatim(redrafted, handlers: Handlers) -> None:
    child, source = redrafted["child"], redrafted["source"]
    assert child.settings["prefix"] == f"Findings: {KEPT}"
    assert redrafted["updates"][0][F["report_view"]][0] == (child.settings["prefix"] + " ", "kept")
    kept = handlers.store.get_draft(source[F["draft_id"]], "local")
    assert kept.current == (LAYOUT, source[F["impression"]])  # the edit, saved before re-drafting, as typed


def test_redraft_of_an_unedited_region_draft_saves_no_edit(redrafted, handlers: Handlers) -> None:
    child, shown = redrafted["child"], redrafted["updates"][-1]
    again = _redraft(handlers, child.id, shown[F["findings"]], shown[F["impression"]])
    assert handlers.store.get_draft(child.id, "local").versions == ()
    grandchild = handlers.store.get_draft(again[-1][F["draft_id"]], "local")
    assert grandchild.settings["prefix"] == "Findings: " + findings_from_region_text(shown[F["findings"]])


def test_save_and_sign_store_the_editor_text_byte_for_byte(redrafted, handlers: Handlers) -> None:
    child = redrafted["child"]
    shown = redrafted["updates"][-1][F["findings"]]
    edited = shown.replace("The heart is normal in size.", "Mild cardiomegaly. ") + "\r\nA line I added  \n"
    impression = " Mild cardiomegaly.\n"
    handlers.save_edit(child.id, edited, impression, ["missed finding"], "", 0)
    stored = handlers.store.get_draft(child.id, "local").current
    assert stored[0].encode("utf-8") == edited.encode("utf-8") and stored[1].encode("utf-8") == impression.encode()
    assert handlers.open_draft(child.id)[F["findings"]] == edited  # shown back as saved, not laid out again
    status, findings, _, copy = handlers.sign(child.id, edited, impression, [], "", 1, True)
    signed = handlers.store.get_draft(child.id, "local")
    assert "Signed" in status and findings == edited and signed.current == (edited, impression)
    assert "Cardiac silhouette: Mild cardiomegaly." in copy

    zip_path, _ = handlers.export_corrections("", "")
    out = Path(zip_path).parent / "unzipped"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out)
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    record = {r.id: r for r in load_dataset(folder)}[child.id]
    assert record.findings == findings_from_region_text(edited) and "\n" not in record.findings
    assert record.findings.startswith("The lungs are clear. Mild cardiomegaly.")
    assert handlers.store.get_draft(child.id, "local").current[0] == edited  # the export leaves the store alone


def test_the_limitation_shows_for_the_embedded_model_only(handlers: Handlers, model_dir: Path) -> None:
    embedded = handlers.model_notice(EMBEDDED)
    assert EMBEDDED_LIMITATION in embedded and "ECHO_MODEL" in embedded and "echo-model-limitation" in embedded
    assert handlers.model_notice(str(model_dir)) == "" and handlers.model_notice("") == ""  # the default: tiny
    with pytest.raises(gr.Error, match="not offered"):
        handlers.model_notice("/somewhere/else")
    assert handlers.drafting.limitation(EMBEDDED) == f"{EMBEDDED_LIMITATION} {REAL_CHECKPOINT_HINT}"


def test_about_states_the_limitation_with_the_embedded_family(handlers: Handlers, model_dir: Path) -> None:
    infos = [handlers.drafting.model_info(str(model_dir))]
    about = about_markdown(handlers.settings, infos)
    assert EMBEDDED_LIMITATION in about and REAL_CHECKPOINT_HINT in about and "normalized reports" in about
    assert "steps" not in about.split("### Models")[1].split("### Data")[0]
    real = about_markdown(AppSettings(models=(str(model_dir),)), infos)
    assert EMBEDDED_LIMITATION not in real and "configured with `ECHO_MODEL`" in real


# ------------------------------------------------------------------ served, gradio_client
@pytest.fixture(scope="module")
def served(tmp_path_factory, checkpoint):
    """The app on loopback with the tiny checkpoint standing in for the embedded one (the browser tests' helper)."""
    from test_app_browser import served_app

    with served_app(tmp_path_factory.mktemp("served-regions"), checkpoint, max_new_tokens=12) as out:
        yield out


def test_client_redraft_by_region_then_save_stores_the_text_byte_for_byte(served, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    url, services = served
    client = Client(url, verbose=False)
    image = tmp_path / "frontal.png"
    synthetic_cxr(4, (256, 240)).save(image)
    source = client.predict([handle_file(str(image))], api_name="/generate")
    redrafted = client.predict(source[F["draft_id"]], LAYOUT, source[F["impression"]], api_name="/redraft_from_edit")
    child = services.store.get_draft(redrafted[F["draft_id"]], "local")
    assert child.settings["prefix"] == f"Findings: {KEPT}"
    shown = redrafted[F["findings"]]
    assert shown == findings_by_region(child.findings) and shown.startswith(LAYOUT)
    assert client.predict(child.id, api_name="/open_draft")[F["findings"]] == shown

    edited = shown.replace("The lungs are clear.", "Small left pleural effusion.") + "\nOther: “quoted” 所见\t "
    status, _ = client.predict(child.id, edited, " No change.\r\n", [], "", 0, api_name="/save_edit")
    assert "Saved version 1" in status
    stored = services.store.get_draft(child.id, "local").current
    assert (stored[0].encode("utf-8"), stored[1].encode("utf-8")) == (edited.encode("utf-8"), b" No change.\r\n")
    assert client.predict(child.id, api_name="/open_draft")[F["findings"]] == edited
