"""Fallback samplers: a draft that fails the report check is drafted again by the next sampler, and the drafts it
replaced stay in the output (``Drafter.draft(fallback=...)``, ``echo-report --fallback``, ``--batch``)."""

from __future__ import annotations

import json

import pytest
from conftest import synthetic_cxr

from echo_model import drafting
from echo_model.cli import main
from echo_model.data.records import RecordError, StudyRecord, read_jsonl
from echo_model.drafting import Drafter
from echo_model.report_check import ReportCheck
from echo_model.sampling import SamplerConfig, check_fallback

CONFIG = SamplerConfig(max_new_tokens=16)


@pytest.fixture(scope="module")
def drafter(model_dir) -> Drafter:
    return Drafter(str(model_dir), device="cpu", warm_up=False)


def test_each_failed_draft_is_replaced_by_the_next_samplers_own_draft(drafter):
    image = [synthetic_cxr(3)]
    alone = {name: drafter.draft(image, sampler=name, config=CONFIG) for name in ("echo", "teacher", "ar")}
    assert all(d.check_warnings for d in alone.values())  # random tiny weights: every draft fails the check

    draft = drafter.draft(image, sampler="echo", config=CONFIG, fallback=("teacher", "ar"))

    assert draft.sampler == "ar" and draft.report == alone["ar"].report
    assert draft.warnings == alone["ar"].warnings  # the last one tried keeps its warnings
    assert [r["sampler"] for r in draft.replaced] == ["echo", "teacher"]
    for entry in draft.replaced:
        assert entry["report"] == alone[entry["sampler"]].report
        assert entry["warnings"] == alone[entry["sampler"]].check_warnings
        assert entry["tokens"] == alone[entry["sampler"]].result.tokens
    assert draft.to_json()["replaced"] == draft.replaced
    assert alone["echo"].to_json()["replaced"] == []


def test_a_draft_that_passes_is_kept_and_input_warnings_never_trigger_a_fallback(drafter, monkeypatch):
    monkeypatch.setattr(drafting, "check_report", lambda text, **_: ReportCheck(text=text, warnings=()))
    image = [synthetic_cxr(4)]
    draft = drafter.draft(image, sampler="echo", config=CONFIG, fallback=("teacher",),
                          warnings=["view 1: low contrast"])
    assert draft.sampler == "echo" and draft.replaced == []
    assert draft.warnings == ["view 1: low contrast"] and draft.check_warnings == []


def test_the_default_fallback_covers_the_embedded_familys_one_step_drafts_only():
    assert drafting.default_fallback(None, "echo") == ("teacher", "ar") == drafting.EMBEDDED_FALLBACK
    assert drafting.default_fallback("embedded", "vanilla") == ("teacher", "ar")
    assert drafting.default_fallback("embedded", "teacher") == () and drafting.default_fallback(None, "ar") == ()
    for model in ("embedded:student", "/models/echo", "Midea-AIRC/ECHO_block8"):
        assert drafting.default_fallback(model, "echo") == ()
    with pytest.raises(ValueError, match="fast"):
        drafting.default_fallback(None, "fast")


@pytest.mark.parametrize(("sampler", "fallback", "message"), [
    ("echo", ["echo"], "names the draft's own sampler 'echo'"),
    ("echo", ["teacher", "teacher"], "names a sampler twice"),
    ("echo", ["fast"], "unknown fallback sampler 'fast'; choose from echo, teacher, vanilla, ar"),
])
def test_bad_fallbacks_are_refused_by_name(sampler, fallback, message):
    with pytest.raises(ValueError, match=message):
        check_fallback(sampler, fallback)


@pytest.mark.parametrize(("argv", "message"), [
    (["--fallback", "echo", "a.png"], "--fallback: fallback ['echo'] names the draft's own sampler 'echo'"),
    (["--fallback", "tea", "a.png"], "argument --fallback: 'tea': give sampler names separated by commas"),
    (["--sampler", "ar", "--fallback", "teacher,ar", "--batch", "x", "--out", "o.jsonl"],
     "names the draft's own sampler 'ar'"),
])
def test_cli_usage_errors(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


def test_echo_report_json_and_text_name_the_replaced_draft(model_dir, tmp_path, capsys):
    path = tmp_path / "v.png"
    synthetic_cxr(5).save(path)
    common = ["--model", str(model_dir), "--max-new-tokens", "16", str(path)]
    assert main(["--json", "--fallback", "teacher", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampler"] == "teacher" and [r["sampler"] for r in out["replaced"]] == ["echo"]
    assert out["replaced"][0]["warnings"] and out["replaced"][0]["report"]

    assert main(["--fallback", "teacher", *common]) == 0
    err = capsys.readouterr().err
    assert "note: the echo draft failed the report check (" in err and "re-drafted with teacher" in err
    assert "s with the draft it replaced)" in err


def test_batch_rows_keep_the_drafts_they_replaced_and_plain_rows_are_unchanged(model_dir, tmp_path, capsys):
    root = tmp_path / "night"
    for i in range(3):
        (root / f"s{i}").mkdir(parents=True)
        synthetic_cxr(10 + i).save(root / f"s{i}" / "v.png")
    plain, with_fb = tmp_path / "plain.jsonl", tmp_path / "fb.jsonl"
    common = ["--model", str(model_dir), "--max-new-tokens", "16", "--batch", str(root), "--batch-size", "2"]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--out", str(with_fb), "--key-file", str(plain) + ".key", "--fallback", "teacher,ar"]) == 0
    assert "(6 re-drafted by --fallback)" in capsys.readouterr().err  # 3 by teacher, then 3 by ar

    before = {r["id"]: r for r in map(json.loads, plain.read_text().splitlines())}
    after = [json.loads(line) for line in with_fb.read_text().splitlines()]
    assert len(after) == 3 and all("replaced" not in r["draft"] for r in before.values())
    for row in after:
        d = row["draft"]
        assert d["sampler"] == "ar" and [r["sampler"] for r in d["replaced"]] == ["echo", "teacher"]
        assert d["replaced"][0]["report"] == before[row["id"]]["draft"]["report"]  # the batch's own echo draft
    records = list(read_jsonl(with_fb))
    assert [r.draft.replaced[0]["sampler"] for r in records] == ["echo"] * 3
    assert StudyRecord.from_dict(records[0].to_dict()) == records[0]


def test_a_record_with_malformed_replaced_drafts_is_refused():
    row = {"schema": "echo.study/1", "id": "a", "findings": "", "impression": "",
           "draft": {"report": "", "sampler": "ar", "model": "m", "model_revision": "r", "replaced": ["echo"]}}
    with pytest.raises(RecordError, match="draft.replaced.*list of objects"):
        StudyRecord.from_dict(row)
