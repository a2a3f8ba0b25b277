"""``echo-train --normalize/--no-normalize``: training text is normalized by default (method.md §3.5),
record files (the app's correction export) never are. Hand-written synthetic reports only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_model.data.records import StudyRecord, write_jsonl
from train import cli


def _iu_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "iu"
    folder.mkdir()
    rows = [
        {"id": f"CXR{i}", "images": [], "views": [], "findings": f, "impression": imp, "indication": "cough",
         "split": split}
        for i, (f, imp, split) in enumerate([
            ("The heart is XXXX enlarged. Lungs clear.", "Cardiomegaly.", "train"),
            ("Lungs clear.", "Normal.", "train"),
            ("Small left effusion.", "", "test"),
        ])
    ]
    (folder / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def test_flag_parses_both_ways() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["ar", "--out", "x"]).normalize is True
    assert parser.parse_args(["ar", "--out", "x", "--no-normalize"]).normalize is False
    assert parser.parse_args(["ar", "--out", "x", "--normalize"]).normalize is True


def test_training_records_normalized_by_default(tmp_path: Path) -> None:
    folder = _iu_folder(tmp_path)
    normalized = cli.training_records([str(folder)])
    raw = cli.training_records([str(folder)], normalize=False)
    assert [r.id for r in normalized] == [r.id for r in raw] == ["CXR0", "CXR1"]
    assert all(r.raw_report and "The hila are not enlarged." in r.findings for r in normalized)
    assert raw[0].findings == "The heart is XXXX enlarged. Lungs clear." and raw[0].raw_report is None
    assert normalized[0].raw_report == "Findings: The heart is XXXX enlarged. Lungs clear. Impression: Cardiomegaly."


def test_record_files_are_used_as_written(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    rec = StudyRecord(id="c1", findings="Heart enlarged.", impression="Cardiomegaly.", split="train", source="echo_app")
    write_jsonl([rec], path)
    (got,) = cli.training_records([str(path)])
    assert (got.findings, got.impression, got.raw_report) == (rec.findings, rec.impression, None)


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--no-normalize"], False)])
def test_main_passes_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], expected: bool) -> None:
    seen = {}

    def fake(paths, limit=None, *, image_repeats=1, normalize=True):
        seen["normalize"] = normalize
        return []

    monkeypatch.setattr(cli, "training_records", fake)
    with pytest.raises(SystemExit, match="no training studies"):
        cli.main(["ar", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *flag])
    assert seen == {"normalize": expected}


def test_init_embedded_tokenizer_learns_the_normalized_train_reports(tmp_path: Path) -> None:
    from train import init_embedded

    folder = _iu_folder(tmp_path)
    text = list(init_embedded.dataset_text([str(folder)]))
    assert "The hila are not enlarged." in " ".join(text)  # normalized: the regions the report did not mention
    assert not any("Small left effusion" in t for t in text)  # the test split is never seen
    assert not any("XXXX" in t for t in text)


def test_main_validation_and_augmentation_flags(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["ar", "--out", "x"])
    assert (args.eval_every, args.plateau, args.val_limit, args.augment) == (50, 0.01, 192, True)
    folder = _iu_folder(tmp_path)
    val = cli.validation_records([str(folder)], normalize=True)
    assert val == []  # the synthetic folder has no val split
    with pytest.raises(SystemExit, match="needs a val split"):
        cli.main(["ar", "--data", str(folder), "--out", str(tmp_path / "run")])


def test_checkpoints_trained_on_normalized_reports_say_so(tokenizer) -> None:
    from conftest import make_checkpoint

    ck = make_checkpoint(tokenizer, block_length=4)
    assert ck.spec.report_style == "raw"
    assert cli.with_report_style(ck, normalize=False).spec.report_style == "raw"
    styled = cli.with_report_style(ck, normalize=True)
    assert styled.spec.report_style == "normalized" and styled.processor.spec.report_style == "normalized"
