import json

import pytest

from echo_model.data.records import (
    EDIT_REASONS, Correction, ImageRef, RecordError, StudyRecord, read_jsonl, resolve_image, write_jsonl,
)


def _record(**kw):
    base = dict(id="s1", findings="The lungs are clear.", impression="Normal chest.", images=(ImageRef("a.png", "frontal"),),
                indication="cough", source="synthetic", split="train", licence="CC0")
    base.update(kw)
    return StudyRecord(**base)


def test_round_trip_through_jsonl(tmp_path):
    corr = Correction(draft_id="d1", model="echo-b8", model_revision="r1", draft_findings="x", draft_impression="y",
                      editor="dr.a", signed_at="2026-01-02T03:04:05+00:00", edit_reasons=("missed finding",), comment="c")
    recs = [_record(), _record(id="s2", language="zh", findings="双肺清晰。", impression="未见异常。", correction=corr)]
    path = tmp_path / "r.jsonl"
    assert write_jsonl(recs, path) == 2
    back = list(read_jsonl(path))
    assert back == recs
    assert back[1].report == "所见：双肺清晰。 结论：未见异常。"
    assert back[0].report == "Findings: The lungs are clear. Impression: Normal chest."
    assert resolve_image(path, back[0].images[0]) == tmp_path / "a.png"


@pytest.mark.parametrize("change,field", [
    ({"language": "fr"}, "language"),
    ({"split": "dev"}, "split"),
    ({"findings": "", "impression": " "}, "findings"),
    ({"images": [{"path": "a.png", "view": "oblique"}]}, "images"),
    ({"images": "a.png"}, "images"),
    ({"colour": "red"}, "colour"),
    ({"id": ""}, "id"),
    ({"schema": "echo.study/9"}, "schema"),
    ({"correction": {"draft_id": "d"}}, "correction"),
])
def test_malformed_records_name_the_field(change, field):
    data = _record().to_dict()
    data.update(change)
    with pytest.raises(RecordError, match=f"field '{field}"):
        StudyRecord.from_dict(data)


def test_bad_edit_reason_and_time():
    data = _record().to_dict()
    data["correction"] = dict(draft_id="d", model="m", model_revision="r", draft_findings="", draft_impression="",
                              editor="e", signed_at="yesterday", edit_reasons=["style"])
    with pytest.raises(RecordError, match="signed_at"):
        StudyRecord.from_dict(data)
    data["correction"].update(signed_at="2026-01-01T00:00:00", edit_reasons=["typo"])
    with pytest.raises(RecordError, match="unknown reasons"):
        StudyRecord.from_dict(data)
    assert "typo" not in EDIT_REASONS


def test_jsonl_errors_carry_line_numbers(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps(_record().to_dict())
    path.write_text(good + "\n\n{not json\n")
    with pytest.raises(RecordError, match="line 3"):
        list(read_jsonl(path))
    bad = _record().to_dict() | {"language": "xx"}
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"line 2, record 's1', field 'language'"):
        list(read_jsonl(path))
