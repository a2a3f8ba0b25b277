"""Data adapters (IU X-ray, covid_cxr_notes, generic JSONL), de-duplication and layout dispatch.

Every fixture is synthetic and hand-written: folders that imitate the real layouts and field
names, tiny PNGs drawn with PIL. No text or image of the real data sets is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from echo_model.data.records import (
    EDIT_REASONS,
    LANGUAGES,
    SPLITS,
    VIEWS,
    Correction,
    ImageRef,
    RecordError,
    StudyRecord,
    read_jsonl,
    write_jsonl,
)
from echo_model.data import (
    DatasetLayoutError,
    ImageHasher,
    RecordFileError,
    deduplicate,
    load_covid_cxr_notes,
    load_dataset,
    load_iu_xray,
    load_records_jsonl,
    read_covid_cxr_notes,
    read_dataset,
    read_iu_xray,
    remove_overlap,
)
from echo_model.data.covid_notes import (
    covid_split,
    keep_sentence,
    licence_decision,
    map_covid_view,
    radiograph_sentences,
    split_note,
)
from echo_model.data.iu_xray import kaggle_name, map_iu_view, r2gen_folder
from echo_model.data.registry import detect_layout, main

# --------------------------------------------------------------------------------------- helpers


def _png(path: Path, seed: int, size: int = 40) -> Path:
    """A small grey PNG whose pixels depend on ``seed`` (at least 32 px a side: the loader's minimum)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _iu_row(n: int, images: list[str], **kw) -> dict:
    """A row with the real IU field names; text is hand-written."""
    row = {
        "id": f"CXR{n}", "iuxr_id": n, "images": images, "views": ["frontal", "lateral", None][: len(images)],
        "view_source": ["tsne"] * len(images), "views_dicom": [None] * len(images), "images_available": False,
        "findings": "Heart size is normal. Lungs are clear.", "impression": "No acute disease.",
        "indication": "Cough for two weeks.", "comparison": "None.", "mesh_major": ["normal"], "mesh_automatic": [],
        "image_captions": ["Chest PA and lateral"] * len(images), "split": "train", "r2gen_split": "train",
        "r2gen_id": images[0][:-4].rsplit("-", 1)[0] if images else None,
        "license_url": "http://creativecommons.org/licenses/by-nc-nd/4.0/",
    }
    row.update(kw)
    return row


@pytest.fixture()
def iu_folder(tmp_path: Path) -> Path:
    rows = [
        _iu_row(1, ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"],
                findings="  The  heart is XXXX normal.\n Lungs   clear. ", impression="Normal chest x-XXXX.",
                indication="Positive TB test"),
        _iu_row(2, ["CXR2_IM-0002-1001.png", "CXR2_IM-0002-2001.png"], split="val", r2gen_split="val"),
        _iu_row(3, ["CXR3_IM-0003-1001.png"], findings="", impression=" ", split="test"),
        _iu_row(4, ["CXR4_IM-0004-1001.png"], indication="", split="test", r2gen_split=None, r2gen_id=None),
        _iu_row(5, ["CXR5_IM-0005-1001-0001.png", "CXR5_IM-0005-1001-0002.png", "CXR5_IM-0005-2001.png"],
                findings="", impression="Mild cardiomegaly.", indication="Chest pain", r2gen_split=None,
                r2gen_id=None),
    ]
    return _jsonl(tmp_path / "iu" / "reports.jsonl", rows).parent


# --------------------------------------------------------------------------------------- IU X-ray


def test_iu_text_only_records(iu_folder: Path) -> None:
    # normalize=False: this test is about the raw text rules (the normalized text is tested below)
    result = read_iu_xray(iu_folder, normalize=False)
    recs = {r.id: r for r in result.records}
    assert set(recs) == {"CXR1", "CXR2", "CXR4", "CXR5"}
    assert result.report.skipped == {"findings and impression both empty": 1}
    one = recs["CXR1"]
    assert one.findings == "The heart is XXXX normal. Lungs clear."  # whitespace cleaned, mask kept
    assert one.impression == "Normal chest x-XXXX."
    assert (one.source, one.licence, one.language, one.split) == ("iu_xray", "CC BY-NC-ND 4.0", "en", "train")
    assert all(r.images == () for r in recs.values())
    # the indication is what makes image-less inputs differ; "" becomes None
    assert one.indication == "Positive TB test" and recs["CXR4"].indication is None
    assert recs["CXR2"].indication != recs["CXR5"].indication
    assert recs["CXR5"].findings == "" and recs["CXR5"].impression == "Mild cardiomegaly."


def test_iu_split_fields_and_filter(iu_folder: Path) -> None:
    assert [r.id for r in load_iu_xray(iu_folder, split="test")] == ["CXR4"]
    r2gen = {r.id: r.split for r in load_iu_xray(iu_folder, split_field="r2gen_split")}
    assert r2gen == {"CXR1": "train", "CXR2": "val", "CXR4": None, "CXR5": None}
    with pytest.raises(ValueError, match="'mimic_split'"):
        load_iu_xray(iu_folder, split_field="mimic_split")
    with pytest.raises(ValueError, match="'dev'"):
        load_iu_xray(iu_folder, split="dev")


def test_iu_openi_flat_layout_and_missing_images(iu_folder: Path, tmp_path: Path, caplog) -> None:
    images = tmp_path / "NLMCXR_png"
    _png(images / "CXR1_1_IM-0001-3001.png", 1)
    _png(images / "CXR1_1_IM-0001-4001.png", 2)
    _png(images / "CXR5_IM-0005-2001.png", 3)
    with caplog.at_level("WARNING"):
        result = read_iu_xray(iu_folder, images_dir=images)
    recs = {r.id: r for r in result.records}
    assert [Path(i.path).name for i in recs["CXR1"].images] == ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"]
    assert [i.view for i in recs["CXR1"].images] == ["frontal", "lateral"]
    assert all(Path(i.path).is_absolute() and Path(i.path).is_file() for i in recs["CXR1"].images)
    assert [i.view for i in recs["CXR5"].images] == ["unknown"]  # third view is null in the row
    assert recs["CXR2"].images == () and recs["CXR4"].images == ()  # not found: text-only, no crash
    rep = result.report
    assert (rep.images_found, rep.images_missing, rep.studies_without_found_image) == (3, 5, 2)
    assert "were not found" in caplog.text


def test_iu_r2gen_and_kaggle_layouts(iu_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "r2gen"
    _png(root / "images" / "CXR2_IM-0002" / "0.png", 4)
    _png(root / "images" / "CXR2_IM-0002" / "1.png", 5)
    _png(root / "CXR5_IM-0005-1001" / "1.png", 6)  # derived folder name, no r2gen_id in the row
    _png(root / "1_IM-0001-4001.dcm.png", 7)  # Kaggle name of CXR1_1_IM-0001-4001.png
    recs = {r.id: r for r in load_iu_xray(iu_folder, images_dir=root)}
    assert [Path(i.path).name for i in recs["CXR2"].images] == ["0.png", "1.png"]
    assert {i.view for i in recs["CXR2"].images} == {"unknown"}  # R2Gen does not record which view is which
    assert [Path(i.path).parent.name for i in recs["CXR5"].images] == ["CXR5_IM-0005-1001"]
    assert [(Path(i.path).name, i.view) for i in recs["CXR1"].images] == [("1_IM-0001-4001.dcm.png", "lateral")]


def test_iu_helpers() -> None:
    assert r2gen_folder(["CXR7_IM-2063-1001-0001.png", "CXR7_IM-2063-2001.png"]) == "CXR7_IM-2063-1001"
    assert r2gen_folder([]) is None
    assert kaggle_name("CXR1_1_IM-0001-3001.png") == "1_IM-0001-3001.dcm.png"
    assert kaggle_name("CXR22_IM-0010-1001.png") == "22_IM-0010-1001.dcm.png"
    assert [map_iu_view(v) for v in ("frontal", "Lateral", None, "PA", "LL", "oblique")] == [
        "frontal", "lateral", "unknown", "pa", "lateral", "unknown"]


def test_iu_malformed_row_names_file_line_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "iu_bad"
    _jsonl(folder / "reports.jsonl", [_iu_row(1, ["CXR1_IM-0001-1001.png"]), _iu_row(2, [], findings=7)])
    with pytest.raises(RecordFileError) as info:
        load_iu_xray(folder)
    msg = str(info.value)
    assert "reports.jsonl" in msg and "line 2" in msg and "'CXR2'" in msg and "'findings'" in msg
    assert info.value.line == 2 and info.value.field_name == "findings"


# --------------------------------------------------------------------------------------- covid_cxr_notes

HISTORY = "A 60-year-old man presented with fever and cough for five days."
LABS = "Laboratory tests showed raised CRP and lymphopenia."
CXR = "Chest radiograph shows patchy consolidation in the right lower zone (arrow)."
NO_EFFUSION = "No pleural effusion."
CT_ONLY = "CT showed ground-glass opacities in both lower lobes."


def _covid_row(rid: str, *, patient: str, licence: str, notes: str, **kw) -> dict:
    row = {
        "id": rid, "image": f"{rid}.png", "orig_filename": f"{rid}.jpg", "orig_size": [300, 280],
        "size": [274, 256], "patientid": patient, "offset_days": "0", "sex": "M", "age": "60",
        "finding": "Pneumonia", "view": "PA", "view_group": "frontal", "modality": "X-ray", "date": "2020",
        "location": "Nowhere", "clinical_notes": notes, "other_notes": "", "doi": "", "url": "",
        "license": licence, "split": "train", "source_repo": "example/repo", "source_commit": "0" * 40,
    }
    row.update(kw)
    return row


@pytest.fixture()
def covid_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "covid"
    rows = [
        _covid_row("p1-a", patient="101", licence="CC BY-NC-SA 4.0",
                   notes=f"{HISTORY} {LABS} {CXR} {NO_EFFUSION} {CT_ONLY}"),
        _covid_row("p1-b", patient="101", licence="CC BY-NC-SA", view="AP Supine",
                   notes="Presentation: Short of breath.. Imaging Notes: Bilateral peripheral airspace opacification.. "
                         "Heart size normal. Effacement of the right heart border in keeping with middle lobe "
                         "consolidation. Discussion: This case shows the typical pattern of viral pneumonia. "
                         "The patient recovered after treatment."),
        _covid_row("p2", patient="102", licence="CC BY-NC-ND 4.0", notes=CXR),
        _covid_row("p3", patient="103", licence="", notes=CXR),
        _covid_row("p4", patient="104", licence="listed as authorized for everyone", notes=CXR),
        _covid_row("p5", patient="105", licence="CC BY 3.0", notes=""),
        _covid_row("p6", patient="106", licence="CC BY-SA", notes=f"{HISTORY} {LABS} {CT_ONLY}"),
        _covid_row("p7", patient="107", licence="CC BY 4.0", notes=CXR),  # image file missing
        _covid_row("p8", patient="108", licence="CC BY", notes=CXR, modality="CT"),
        _covid_row("p9", patient="", licence="CC BY", view="", notes="Chest X-ray: Normal"),
    ]
    _jsonl(folder / "records.jsonl", rows)
    for i, row in enumerate(rows):
        if row["id"] != "p7":
            _png(folder / "images" / row["image"], 10 + i)
    return folder


def test_covid_licence_filter_and_counts(covid_folder: Path) -> None:
    result = read_covid_cxr_notes(covid_folder)
    assert [r.id for r in result.records] == ["p1-a", "p1-b", "p9"]
    assert result.report.skipped == {
        "licence has no-derivatives (ND)": 1, "licence none stated": 1,
        "licence not a recognised open licence": 1, "no clinical notes": 1,
        "no sentence describes the radiograph": 1, "image file missing": 1, "modality is not X-ray (CT)": 1,
    }
    assert result.report.rows == 10 and result.report.kept == 3


def test_covid_sentences_become_sections(covid_folder: Path) -> None:
    # normalize=False: this test is about which sentences are picked (the normalized text is tested below)
    recs = {r.id: r for r in load_covid_cxr_notes(covid_folder, normalize=False)}
    a = recs["p1-a"]
    assert a.findings == "Chest radiograph shows patchy consolidation in the right lower zone. No pleural effusion."
    assert a.impression == ""
    assert "fever" not in a.report and "CRP" not in a.report and "CT" not in a.report
    b = recs["p1-b"]
    assert b.findings == "Bilateral peripheral airspace opacification. Heart size normal."
    assert b.impression == "Effacement of the right heart border in keeping with middle lobe consolidation."
    assert recs["p9"].findings == "Normal."
    assert [(r.images[0].view, Path(r.images[0].path).name) for r in recs.values()] == [
        ("pa", "p1-a.png"), ("ap", "p1-b.png"), ("unknown", "p9.png")]
    assert all(Path(r.images[0].path).is_absolute() and r.indication is None for r in recs.values())
    assert {r.licence for r in recs.values()} == {"CC BY-NC-SA 4.0", "CC BY-NC-SA", "CC BY"}


def test_covid_split_is_by_patient(covid_folder: Path) -> None:
    recs = {r.id: r for r in load_covid_cxr_notes(covid_folder)}
    assert recs["p1-a"].split == recs["p1-b"].split == covid_split("101", "p1-a")
    h = int(hashlib.sha256(b"covid_cxr_notes|101").hexdigest()[:8], 16) % 100
    assert covid_split("101", "x") == ("train" if h < 70 else "val" if h < 80 else "test")
    # no patient id: the image id decides, deterministically
    assert recs["p9"].split == covid_split(None, "p9") == covid_split("  ", "p9")
    counts = {s: sum(covid_split(str(p), "x") == s for p in range(2000)) for s in ("train", "val", "test")}
    assert 0.65 < counts["train"] / 2000 < 0.75 and 0.07 < counts["val"] / 2000 < 0.13


@pytest.mark.parametrize("licence,reason", [
    ("CC BY-NC-SA 4.0", None), ("CC BY 4.0", None), ("cc by-sa", None), ("CC BY-NC", None), ("CC0", None),
    ("CC BY 3.0", None), ("CC BY-NC-ND", "licence has no-derivatives (ND)"),
    ("CC BY-ND 4.0", "licence has no-derivatives (ND)"), ("", "licence none stated"), (None, "licence none stated"),
    ("listed as authorized for everyone", "licence not a recognised open licence"),
    ("Copyright Elsevier", "licence not a recognised open licence"),
])
def test_licence_decision(licence, reason) -> None:
    assert licence_decision(licence) == reason


def test_sentence_filter_rules() -> None:
    assert not keep_sentence(HISTORY, None)
    assert not keep_sentence(LABS, None)
    assert not keep_sentence(CT_ONLY, None)
    assert keep_sentence(CXR, None)
    assert keep_sentence("No pleural effusion.", None)
    assert not keep_sentence("Progressive respiratory failure requiring ventilation.", None)
    assert keep_sentence("Radiological worsening.", None)  # a change word next to the radiograph
    assert not keep_sentence("Consolidation is a common finding in this case.", "discussion")
    assert not keep_sentence("A chest x-ray was taken and a nasal swab was positive for influenza.", None)
    # '?' is an encoding artefact ("39?C"), not a sentence end; labels are removed
    pieces = split_note("Presentation: Fever of 39? C. Imaging Notes: Left basal opacity.. Discussion: Fine.")
    assert pieces == [("clinical", "Fever of 39? C."), ("imaging", "Left basal opacity."), ("discussion", "Fine.")]
    sections = radiograph_sentences("Patient 2 - CXR: bilateral hazy opacities (arrowheads in A). Fig. 2 shows more.")
    assert sections.findings == "Bilateral hazy opacities."
    assert map_covid_view("AP Supine") == "ap" and map_covid_view("?") == "unknown"


# --------------------------------------------------------------------------------------- generic JSONL


def _record(rid: str, **kw) -> StudyRecord:
    base: dict = {"id": rid, "findings": "The lungs are clear.", "impression": "No acute disease.",
                  "source": "synthetic", "split": "train", "licence": "CC0"}
    base.update(kw)
    return StudyRecord(**base)


def test_generic_jsonl_resolves_images_and_filters_split(tmp_path: Path) -> None:
    path = tmp_path / "export" / "corrections.jsonl"
    path.parent.mkdir()
    _png(path.parent / "img" / "a.png", 1)
    write_jsonl([_record("s1", images=(ImageRef("img/a.png", "pa"),)),
                 _record("s2", split="test", images=(ImageRef("img/missing.png"),))], path)
    recs = load_records_jsonl(path)
    assert recs[0].images == (ImageRef(os.path.normpath((path.parent / "img" / "a.png").absolute()), "pa"),)
    assert [r.id for r in load_records_jsonl(path, split="test")] == ["s2"]
    assert read_dataset(path).report.images_missing == 1


def test_generic_jsonl_malformed_row_names_file_line_record_field(tmp_path: Path) -> None:
    path = tmp_path / "mimic_converted.jsonl"
    good = _record("s1").to_dict()
    bad = _record("s2").to_dict() | {"language": "fr"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(RecordFileError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert "mimic_converted.jsonl" in msg and "line 3" in msg and "record 's2'" in msg and "field 'language'" in msg
    assert isinstance(info.value, RecordError) and info.value.line == 3

    path.write_text(json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(RecordFileError, match=r"mimic_converted.jsonl.*line 2.*invalid JSON"):
        load_dataset(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    with pytest.raises(RecordFileError, match=r"line 2, record 's1', field 'id': duplicate id \(first on line 1\)"):
        load_dataset(path)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_PATHS = st.from_regex(r"\A(/abs/)?[a-z0-9_]{1,8}(/[a-z0-9_]{1,8})?\.png\Z")


@st.composite
def _records(draw) -> list[StudyRecord]:
    n = draw(st.integers(1, 4))
    ids = draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
                        .filter(str.strip), min_size=n, max_size=n, unique=True))
    out = []
    for rid in ids:
        findings, impression = draw(_TEXT), draw(_TEXT)
        if not (findings.strip() or impression.strip()):
            findings = "Clear lungs."
        correction = draw(st.none() | st.builds(
            Correction, draft_id=_TEXT, model=_TEXT, model_revision=_TEXT, draft_findings=_TEXT,
            draft_impression=_TEXT, editor=_TEXT,
            signed_at=st.datetimes().map(lambda d: d.isoformat()),
            edit_reasons=st.lists(st.sampled_from(EDIT_REASONS), unique=True, max_size=3).map(tuple),
            comment=_TEXT))
        images = draw(st.lists(st.builds(ImageRef, path=_PATHS, view=st.sampled_from(VIEWS)), max_size=3))
        out.append(StudyRecord(
            id=rid, findings=findings, impression=impression, images=tuple(images),
            indication=draw(st.none() | _TEXT), language=draw(st.sampled_from(LANGUAGES)), source=draw(_TEXT),
            split=draw(st.sampled_from(SPLITS)), licence=draw(_TEXT), correction=correction,
        ))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_records())
def test_generic_adapter_round_trips_valid_records(records: list[StudyRecord]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        write_jsonl(records, path)
        back = load_dataset(path)
    expected = [
        StudyRecord(**{**r.__dict__, "images": tuple(
            ImageRef(i.path if i.path.startswith("/") else os.path.normpath((Path(tmp) / i.path).absolute()), i.view)
            for i in r.images)})
        for r in records
    ]
    assert back == expected


# --------------------------------------------------------------------------------------- de-duplication


def test_dedup_within_a_list() -> None:
    a = _record("a", indication="Cough")
    same_input = _record("b", indication="cough.", findings="The lungs are  clear!")  # same after normalising
    other_indication = _record("c", indication="Chest pain")
    other_text = _record("d", indication="Cough", impression="Small left effusion.")
    kept, rep = deduplicate([a, same_input, other_indication, other_text])
    assert [r.id for r in kept] == ["a", "c", "d"]
    assert (rep.kept, rep.duplicates_within, rep.removed) == (3, 1, 1)


def test_dedup_matches_image_content_not_file(tmp_path: Path) -> None:
    # the same pixels saved twice (different names, folders and PNG compression) are one radiograph
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "y.png"
    for p, level in ((first, 1), (second, 9)):
        p.parent.mkdir()
        Image.fromarray(pixels, mode="L").save(p, compress_level=level)
    other = _png(tmp_path / "c.png", 5, size=48)
    train = [
        _record("t1", images=(ImageRef(str(second)),), findings="Different words entirely."),
        _record("t2", images=(ImageRef(str(other)),), findings="Small right effusion.", impression=""),
        _record("t3", images=(ImageRef(str(other)),), findings="Heart is enlarged.", impression="Cardiomegaly."),
    ]
    evaluation = [_record("e1", split="test", images=(ImageRef(str(first)),), findings="Small right effusion.",
                          impression="")]
    hasher = ImageHasher()
    kept, rep = remove_overlap(train, evaluation, hasher=hasher)
    assert [r.id for r in kept] == ["t3"]
    assert (rep.overlap_image, rep.overlap_text) == (1, 1)
    assert hasher.hashed == 3  # each file decoded once
    kept_img, rep_img = remove_overlap(train, evaluation, by_text=False)
    assert [r.id for r in kept_img] == ["t2", "t3"] and rep_img.overlap_image == 1
    kept_path, rep_path = remove_overlap(train, evaluation, by_text=False, hash_images=False)
    assert len(kept_path) == 3 and rep_path.removed == 0  # different paths, and pixels not compared
    within, rep_within = deduplicate(train + [_record("t4", images=(ImageRef(str(first)),),
                                                      findings="Different words entirely.")])
    assert [r.id for r in within] == ["t1", "t2", "t3"] and rep_within.duplicates_within == 1
    with pytest.raises(ValueError, match="by_image or by_text"):
        remove_overlap(train, evaluation, by_image=False, by_text=False)


def test_dedup_unreadable_image_falls_back_to_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    recs = [_record("a", images=(ImageRef(str(broken)),)), _record("b", images=(ImageRef(str(broken)),))]
    kept, rep = deduplicate(recs)
    assert [r.id for r in kept] == ["a"] and rep.images_unreadable == 1


# --------------------------------------------------------------------------------------- registry


def test_registry_dispatches_on_layout(iu_folder: Path, covid_folder: Path, tmp_path: Path) -> None:
    assert detect_layout(iu_folder) == ("iu_xray", iu_folder)
    assert detect_layout(covid_folder) == ("covid_cxr_notes", covid_folder)
    assert {r.source for r in load_dataset(iu_folder)} == {"iu_xray"}
    assert {r.source for r in load_dataset(covid_folder, split=covid_split("101", "x"))} == {"covid_cxr_notes"}
    export = tmp_path / "app_export"
    export.mkdir()
    write_jsonl([_record("s1", source="echo_app")], export / "records.jsonl")
    assert detect_layout(export) == ("jsonl", export / "records.jsonl")
    assert [r.source for r in load_dataset(export)] == ["echo_app"]
    assert [r.id for r in load_dataset("iu", data_root=iu_folder.parent, split="val")] == ["CXR2"]
    with pytest.raises(ValueError, match="images_dir is only used by the IU X-ray adapter"):
        load_dataset(covid_folder, images_dir=tmp_path)


def test_registry_errors_name_the_path(tmp_path: Path) -> None:
    odd = tmp_path / "mystery"
    _jsonl(odd / "reports.jsonl", [{"study": 1, "text": "hello"}])
    with pytest.raises(DatasetLayoutError, match=r"mystery'.*not a known data set layout.*reports\.jsonl"):
        load_dataset(odd)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DatasetLayoutError, match="notes.csv"):
        load_dataset(tmp_path / "notes.csv")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="'iu_xray'"):
        load_dataset("iu_xray", data_root=tmp_path)


def test_summary_command(iu_folder: Path, covid_folder: Path, tmp_path: Path, capsys) -> None:
    assert main([str(iu_folder), str(covid_folder), "--dedup"]) == 0
    out = capsys.readouterr().out
    assert "== iu_xray" in out and "== covid_cxr_notes" in out
    assert "skipped:     1  findings and impression both empty" in out
    assert "skipped:     1  licence has no-derivatives (ND)" in out
    assert "train vs val+test" in out
    assert main([str(tmp_path / "absent")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------- normalization


def test_iu_reports_are_normalized_by_default_and_keep_the_raw_text(iu_folder: Path) -> None:
    from echo_model.data.normalize import normalize_sections

    result = read_iu_xray(iu_folder)
    recs = {r.id: r for r in result.records}
    one = recs["CXR1"]
    assert one.raw_report == "Findings: The heart is XXXX normal. Lungs clear. Impression: Normal chest x-XXXX."
    expected = normalize_sections("The heart is XXXX normal. Lungs clear.", "Normal chest x-XXXX.")
    assert (one.findings, one.impression) == (expected.findings, expected.impression)
    assert "XXXX" not in one.report and "The hila are not enlarged." in one.findings
    # an impression-only study gets region statements that do not contradict "Mild cardiomegaly"
    five = recs["CXR5"]
    assert five.impression == "Mild cardiomegaly." and "normal in size" not in five.findings
    assert five.raw_report == "Findings:  Impression: Mild cardiomegaly."  # as StudyRecord.report writes it
    assert any("normalized" in note for note in result.report.notes)
    assert all(r.raw_report is None for r in load_iu_xray(iu_folder, normalize=False))


def test_covid_reports_are_normalized_by_default(covid_folder: Path) -> None:
    raw = {r.id: r for r in load_covid_cxr_notes(covid_folder, normalize=False)}
    recs = {r.id: r for r in load_covid_cxr_notes(covid_folder)}
    a = recs["p1-a"]
    assert a.raw_report == raw["p1-a"].report
    assert "Chest radiograph shows patchy consolidation in the right lower zone." in a.findings
    assert a.impression and a.findings.index("consolidation") < a.findings.index("The hila are not enlarged.")
    assert all(r.raw_report is None for r in raw.values())


def test_load_dataset_normalize_flag_and_record_files_are_never_normalized(
    iu_folder: Path, covid_folder: Path, tmp_path: Path
) -> None:
    assert all(r.raw_report for r in load_dataset(iu_folder))
    assert all(r.raw_report is None for r in load_dataset(iu_folder, normalize=False))
    assert all(r.raw_report for r in load_dataset(covid_folder))
    # a correction export / record file carries the clinician's text as written, whatever the flag says
    clinician = StudyRecord(id="c1", findings="Heart XXXX enlarged; lungs clear.", impression="Cardiomegaly.",
                            source="echo_app")
    path = tmp_path / "export.jsonl"
    write_jsonl([clinician], path)
    for flag in (True, False):
        (rec,) = load_dataset(path, normalize=flag)
        assert (rec.findings, rec.impression, rec.raw_report) == (clinician.findings, clinician.impression, None)


def test_raw_report_round_trips_and_is_optional(tmp_path: Path) -> None:
    rec = StudyRecord(id="r1", findings="The lungs are clear.", impression="Normal.", raw_report="Findings: Clear.")
    plain = StudyRecord(id="r2", findings="Clear.", impression="")
    path = tmp_path / "records.jsonl"
    write_jsonl([rec, plain], path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert '"raw_report"' in lines[0] and '"raw_report"' not in lines[1]  # absent when not set
    assert list(read_jsonl(path)) == [rec, plain]
    with pytest.raises(RecordError, match="raw_report"):
        StudyRecord(id="r3", findings="x", impression="", raw_report=5)  # type: ignore[arg-type]
