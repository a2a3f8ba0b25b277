"""Property-based tests (hypothesis) for the report parser, the study-record schema and the data adapters.

These complement the example tests of ``test_report_text.py``, ``test_records.py`` and ``test_adapters.py``
(which already check format -> parse round trips, never-raising parsing and the generic adapter's JSONL
round trip) with the properties a user's messy input relies on: header spelling does not matter, any
corruption of a record is a ``RecordError`` naming the field (never a ``TypeError`` or a silently wrong
record), and the adapters account for every row and keep only clean, publishable text.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from echo_model.data.report_text import SECTION_KEYWORDS, ParsedReport, format_report, parse_report
from echo_model.data.covid_notes import (
    COVID_IMAGES_DIR,
    COVID_RECORDS_FILE,
    covid_split,
    licence_decision,
    map_covid_view,
    radiograph_sentences,
    read_covid_cxr_notes,
    stable_split,
)
from echo_model.data.dedup import deduplicate, remove_overlap, report_key
from echo_model.data.iu_xray import IU_REPORTS_FILE, map_iu_view, read_iu_xray
from echo_model.data.jsonl import clean_text

FAST = settings(max_examples=40, deadline=None)
FILES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYWORDS = [word for words in SECTION_KEYWORDS.values() for word in words]
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)  # lone surrogates cannot be UTF-8 encoded
# Section text without any section keyword (so it cannot hold a header), with awkward characters.
SECTION = TEXT.filter(lambda t: not any(word in t.lower() for word in KEYWORDS))
# Report-like sentences: words a parser must not mistake for headers ("no findings", "impressive").
SENTENCE = st.lists(st.sampled_from(["Heart", "size", "normal.", "No", "effusion", "impressive", "opacity",
                                     "refinding", "是", "心影", "清晰。", "(", ")", "-", "1.", "XXXX"]),
                    min_size=1, max_size=8).map(" ".join)


def _spelled(word: str, data: st.DataObject) -> str:
    """``word`` with each ASCII letter's case drawn at random ("fInDiNgS")."""
    return "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) if c.isascii() else c for c in word)


# --- report parser ------------------------------------------------------------------------------


@FAST
@given(findings=SENTENCE, impression=SENTENCE, data=st.data())
def test_header_case_colon_and_layout_do_not_change_the_sections(findings: str, impression: str,
                                                                 data: st.DataObject) -> None:
    f_word = _spelled(data.draw(st.sampled_from(["findings", "finding"])), data)
    i_word = _spelled(data.draw(st.sampled_from(["impression", "impressions"])), data)
    colon = data.draw(st.sampled_from([":", "：", " :", "\t:"]))
    gap = data.draw(st.sampled_from([" ", "\n", "\n\n", "  \t"]))
    text = f"{f_word}{colon}{gap}{findings}{gap}{i_word}{colon}{gap}{impression}"
    assert parse_report(text) == ParsedReport(findings=findings.strip(), impression=impression.strip())


@FAST
@given(findings=SENTENCE, impression=SENTENCE, zh=st.booleans())
def test_section_order_does_not_matter(findings: str, impression: str, zh: bool) -> None:
    text = f"结论：{impression}\n所见：{findings}" if zh else f"Impression: {impression}\nFindings: {findings}"
    assert parse_report(text) == ParsedReport(findings=findings.strip(), impression=impression.strip())


@FAST
@given(text=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="fFiI所结"), max_size=120))
def test_text_without_a_header_is_all_findings(text: str) -> None:
    assert parse_report(text) == ParsedReport(findings=text.strip(), impression="")


@FAST
@given(text=st.lists(st.one_of(SENTENCE, st.sampled_from(["Findings:", "IMPRESSION\n", "所见：", "结论：", "\n",
                                                          ": ", "impression"])), max_size=12).map("".join),
       pad=st.sampled_from(["", " ", "\n", " \n\t"]))
def test_parsing_is_stable_under_padding_and_reformatting(text: str, pad: str) -> None:
    parsed = parse_report(text)
    assert parse_report(pad + text + pad) == parsed
    try:
        rebuilt = format_report(parsed.findings, parsed.impression)
    except ValueError:  # a joined section that now reads as a header is refused, never mis-split
        return
    assert parse_report(rebuilt) == parsed


# --- record schema (echo.study/1) ----------------------------------------------------------------

IDS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12).filter(str.strip)


@st.composite
def records(draw: st.DrawFn) -> StudyRecord:
    findings, impression = draw(TEXT), draw(TEXT)
    if not (findings.strip() or impression.strip()):
        impression = "No acute disease."
    correction = draw(st.none() | st.builds(
        Correction, draft_id=TEXT, model=TEXT, model_revision=TEXT, draft_findings=TEXT, draft_impression=TEXT,
        editor=TEXT, signed_at=st.datetimes().map(lambda d: d.isoformat()),
        edit_reasons=st.lists(st.sampled_from(EDIT_REASONS), unique=True, max_size=3).map(tuple), comment=TEXT))
    images = draw(st.lists(st.builds(ImageRef, path=TEXT.filter(bool), view=st.sampled_from(VIEWS)), max_size=3))
    return StudyRecord(
        id=draw(IDS), findings=findings, impression=impression, images=tuple(images),
        indication=draw(st.none() | TEXT), language=draw(st.sampled_from(LANGUAGES)), source=draw(TEXT),
        split=draw(st.sampled_from(SPLITS)), licence=draw(TEXT), correction=correction,
    )


JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT,
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """Every field of a record dict that a corruption may hit, including nested ones."""
    out: list[tuple[str, ...]] = [(key,) for key in data]
    out += [("images", str(i), key) for i, image in enumerate(data["images"]) for key in image]
    if data["correction"] is not None:
        out += [("correction", key) for key in data["correction"]]
    return out


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target: Any = data
    for part in path[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[path[-1]] = value


@FAST
@given(record=records())
def test_records_survive_json(record: StudyRecord) -> None:
    assert StudyRecord.from_dict(json.loads(json.dumps(record.to_dict(), ensure_ascii=False))) == record


@settings(max_examples=150, deadline=None)
@given(record=records(), data=st.data())
def test_any_corruption_is_a_record_error_or_a_valid_record(record: StudyRecord, data: st.DataObject) -> None:
    raw = json.loads(json.dumps(record.to_dict()))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "add":
        raw[data.draw(st.text(min_size=1, max_size=8))] = data.draw(JUNK)
    else:
        path = data.draw(st.sampled_from(_paths(raw)))
        if action == "delete":
            _set(raw, path, None) if len(path) > 1 else raw.pop(path[0])
        else:
            _set(raw, path, data.draw(JUNK))
    try:
        parsed = StudyRecord.from_dict(raw)
    except RecordError as err:
        assert err.field_name and f"field {err.field_name!r}" in str(err)
        return
    # Accepted: then it is a well-typed record that survives JSON unchanged.
    for name in ("id", "findings", "impression", "language", "source", "licence", "schema"):
        assert isinstance(getattr(parsed, name), str), (name, getattr(parsed, name))
    assert parsed.indication is None or isinstance(parsed.indication, str)
    assert all(isinstance(image.path, str) and image.view in VIEWS for image in parsed.images)
    if parsed.correction is not None:
        assert all(isinstance(v, str) for k, v in vars(parsed.correction).items() if k != "edit_reasons")
    assert StudyRecord.from_dict(json.loads(json.dumps(parsed.to_dict()))) == parsed


@FAST
@given(findings=SENTENCE, impression=st.one_of(st.just(""), SENTENCE), language=st.sampled_from(LANGUAGES))
def test_record_report_parses_back_into_its_sections(findings: str, impression: str, language: str) -> None:
    record = StudyRecord(id="s", findings=findings, impression=impression, language=language)
    assert parse_report(record.report) == ParsedReport(findings=findings.strip(), impression=impression.strip())


@FILES
@given(good=st.lists(records(), min_size=1, max_size=5, unique_by=lambda r: r.id), bad_at=st.integers(0, 5),
       bad=st.sampled_from(['{"id": "x"', "[1, 2]", '{"id": ""}', '{"id": "x", "findings": 3, "impression": ""}']))
def test_a_bad_line_is_reported_with_its_line_number(good: list[StudyRecord], bad_at: int, bad: str) -> None:
    lines = [json.dumps(r.to_dict(), ensure_ascii=False) for r in good]
    bad_at = min(bad_at, len(lines))
    lines.insert(bad_at, bad)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(RecordError) as info:
            list(read_jsonl(path))
    assert info.value.line == bad_at + 1 and f"line {bad_at + 1}," in str(info.value)


@FILES
@given(batch=st.lists(records(), max_size=6, unique_by=lambda r: r.id))
def test_write_then_read_gives_the_same_records(batch: list[StudyRecord]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        assert write_jsonl(batch, path) == len(batch)
        assert list(read_jsonl(path)) == batch


# --- data adapters ------------------------------------------------------------------------------


@FAST
@given(text=st.one_of(st.none(), TEXT))
def test_clean_text_collapses_whitespace_and_keeps_every_word(text: str | None) -> None:
    cleaned = clean_text(text)
    assert cleaned == clean_text(cleaned) == cleaned.strip()
    assert cleaned.split() == (text or "").split() and "  " not in cleaned


@FAST
@given(key=TEXT, namespace=st.sampled_from(["covid_cxr_notes", "iu_xray"]), train=st.integers(0, 100),
       extra=st.integers(0, 100))
def test_stable_split_is_deterministic_and_monotone(key: str, namespace: str, train: int, extra: int) -> None:
    split = stable_split(key, namespace=namespace, train=train, val=0)
    assert split == stable_split(key, namespace=namespace, train=train, val=0) and split in ("train", "test")
    more = min(train + extra, 100)
    if split == "train":  # a bigger training share never moves a key out of training
        assert stable_split(key, namespace=namespace, train=more, val=0) == "train"
    assert stable_split(key, namespace=namespace, train=100, val=0) == "train"
    assert stable_split(key, namespace=namespace, train=0, val=0) == "test"


LICENCE = st.tuples(st.sampled_from(["CC BY", "cc-by", "CC BY-NC", "CC BY-SA", "CC BY-NC-SA", "CC0"]),
                    st.sampled_from(["", " 4.0", "-3.0", " 2.0"]))


@FAST
@given(parts=LICENCE, nd=st.booleans(), spaces=st.sampled_from([" ", "  ", "\t"]), lower=st.booleans())
def test_licence_decision_ignores_spelling_and_always_refuses_nd(parts: tuple[str, str], nd: bool, spaces: str,
                                                                lower: bool) -> None:
    base, version = parts
    licence = (re.sub("(?i)by", "BY-ND", base) if nd and "BY" in base.upper() else base) + version
    licence = licence.replace(" ", spaces)
    licence = licence.lower() if lower else licence
    decision = licence_decision(f" {licence} ")
    if nd and "BY" in base.upper():
        assert decision == "licence has no-derivatives (ND)"
    else:
        assert decision is None, licence


@FAST
@given(value=JUNK)
def test_licence_and_view_mapping_take_anything(value: Any) -> None:
    decision = licence_decision(value)
    assert decision is None or decision.startswith("licence ")
    assert map_iu_view(value) in VIEWS and map_covid_view(value) in VIEWS


NOTE_PIECES = st.sampled_from([
    "Chest X-ray shows bilateral opacities.", "The patient presented with fever and cough.", "PCR was positive.",
    "CT showed ground-glass opacities.", "Imaging Notes:", "Discussion:", "Presentation:", "Impression:",
    "Consolidation in the right lower lobe (arrow).", "Normal.", "Findings consistent with pneumonia.",
    "A nasopharyngeal swab for COVID-19 was positive and the radiograph shows effusion.", "Fig. 2",
    "If untreated, this case could progress.", "Small left pleural effusion.", "He died on day 3.",
])


@FAST
@given(note=st.lists(st.one_of(NOTE_PIECES, TEXT), max_size=10).map(" ".join))
def test_note_sentences_never_raise_and_keep_no_tests_or_outcomes(note: str) -> None:
    sections = radiograph_sentences(note)
    kept = f"{sections.findings} {sections.impression}"
    assert not re.search(r"(?i)swab|\bPCR\b|\bdied\b|positive for", kept)
    for section in (sections.findings, sections.impression):
        assert section == clean_text(section)
        assert not section or section.endswith((".", "!"))


IU_ROW = st.fixed_dictionaries({
    "findings": st.one_of(st.none(), st.just(""), st.just("  "), TEXT),
    "impression": st.one_of(st.none(), st.just(""), TEXT),
    "indication": st.one_of(st.none(), st.just(""), TEXT),
    "images": st.lists(st.sampled_from(["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"]), max_size=2),
    "views": st.lists(st.sampled_from(["frontal", "lateral", None]), max_size=2),
    "split": st.sampled_from(["train", "val", "test", None]),
})


@FILES
@given(rows=st.lists(IU_ROW, max_size=8))
def test_iu_adapter_accounts_for_every_row(rows: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lines = [json.dumps({"id": f"CXR{n}", **row}, ensure_ascii=False) for n, row in enumerate(rows)]
        (Path(tmp) / IU_REPORTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        # normalize=False: the raw-text rules; the normalized default must keep that raw text in raw_report
        result = read_iu_xray(tmp, normalize=False)
        normalized = read_iu_xray(tmp)
    assert [(r.id, r.raw_report) for r in normalized.records] == [
        (r.id, f"Findings: {r.findings} Impression: {r.impression}".rstrip()) for r in result.records
    ]
    report = result.report
    assert report.rows == len(rows) and report.kept + sum(report.skipped.values()) == len(rows)
    expected_ids = [f"CXR{n}" for n, row in enumerate(rows) if clean_text(row["findings"]) or
                    clean_text(row["impression"])]
    assert [r.id for r in result.records] == expected_ids
    for record, row in zip(result.records, [r for r in rows if clean_text(r["findings"]) or clean_text(r["impression"])]):
        assert (record.findings, record.impression) == (clean_text(row["findings"]), clean_text(row["impression"]))
        assert record.indication == (clean_text(row["indication"]) or None) and record.split == row["split"]
        assert record.images == () and record.language == "en" and record.source == "iu_xray"


COVID_ROW = st.fixed_dictionaries({
    "patientid": st.one_of(st.none(), st.sampled_from(["p1", "p2", " p3 "])),
    "license": st.one_of(st.none(), st.sampled_from(["CC BY 4.0", "CC BY-NC-ND 4.0", "", "CC0", "all rights"])),
    "modality": st.sampled_from(["X-ray", "CT", "", "xray"]),
    "clinical_notes": st.one_of(st.none(), st.lists(NOTE_PIECES, max_size=4).map(" ".join)),
    "view": st.sampled_from(["PA", "AP Supine", "L", "", "axial"]),
    "has_image": st.booleans(),
})


@FILES
@given(rows=st.lists(COVID_ROW, max_size=8))
def test_covid_adapter_keeps_only_publishable_described_images(rows: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / COVID_IMAGES_DIR).mkdir()
        lines = []
        for n, row in enumerate(rows):
            fields = {k: v for k, v in row.items() if k != "has_image"}
            lines.append(json.dumps({"id": f"img{n}", "image": f"img{n}.png", **fields}))
            if row["has_image"]:
                (folder / COVID_IMAGES_DIR / f"img{n}.png").write_bytes(b"not decoded by the adapter")
        (folder / COVID_RECORDS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = read_covid_cxr_notes(folder)
    report = result.report
    assert report.rows == len(rows) and report.kept + sum(report.skipped.values()) == len(rows)
    by_id = {f"img{n}": row for n, row in enumerate(rows)}
    for record in result.records:
        row = by_id[record.id]
        assert row["has_image"] and licence_decision(row["license"]) is None and row["modality"] != "CT"
        assert record.findings or record.impression
        assert record.split == covid_split(row["patientid"], record.id) and len(record.images) == 1


@FAST
@given(batch=st.lists(records(), max_size=8, unique_by=lambda r: r.id), data=st.data())
def test_dedup_is_idempotent_order_keeping_and_overlap_free(batch: list[StudyRecord], data: st.DataObject) -> None:
    twice = batch + [StudyRecord(**{**vars(r), "id": r.id + "-copy"}) for r in batch]
    kept, summary = deduplicate(twice, hash_images=False)
    assert summary.duplicates_within == len(twice) - len(kept)
    assert not any(r.id.endswith("-copy") and r not in batch for r in kept)  # each copy follows its original
    positions = [twice.index(r) for r in kept]
    assert positions == sorted(positions)
    assert deduplicate(kept, hash_images=False)[0] == kept
    evaluation = data.draw(st.lists(st.sampled_from(batch), max_size=3)) if batch else []
    train, _ = remove_overlap(batch, evaluation, hash_images=False)
    eval_texts = {report_key(r) for r in evaluation}
    assert all(report_key(r) not in eval_texts and r in batch for r in train)
