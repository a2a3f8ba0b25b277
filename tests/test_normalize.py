"""Tests of report normalization (method.md §3.5) and its CLI.

Every report here is hand-written for the test (no data-set text).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from echo_model.data.normalize import (
    DEFAULT_IMPRESSION,
    OTHER_REGION,
    REGION_NAMES,
    REGIONS,
    NormalizeConfig,
    added_statement_conflicts,
    normalize_report,
    normalize_sections,
    region_of,
    split_regions,
)
from echo_model.data.normalize_cli import main as cli_main
from echo_model.data.normalize_recall import measure_recall
from echo_model.data.report_text import parse_report
from echo_model.labeler import Label, label_report

ROOT = Path(__file__).resolve().parents[1]

REPORTS: list[tuple[str, str]] = [
    ("Heart size is normal. Lungs are clear.", "No acute disease."),
    ("The heart is mildly enlarged. There is a small left pleural effusion. No pneumothorax.", "Cardiomegaly and small left effusion."),
    ("", "Mild cardiomegaly. Possible small right pleural effusion."),
    ("Stable tortuous aorta. Right upper lobe 8 mm nodule. Degenerative changes of the thoracic spine.", ""),
    ("The XXXX are normal. Heart XXXX, mediastinum and lung XXXX are unremarkable. No XXXX of effusion.", "Normal chest."),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle; lungs are clear, and the heart is normal.", "No acute findings."),
    ("Compared with the prior study, the heart is unchanged in size. Persistent right basilar atelectasis.", "Stable chest."),
    ("Hyperinflated lungs with flattened diaphragms. Calcified granuloma in the left lower lobe.", "COPD. No acute process."),
    ("No pneumothorax, effusion, or focal consolidation. Mild degenerative changes. Surgical clips in the upper abdomen.", ""),
    ("Patient is rotated. Streaky opacity at the left base, likely atelectasis versus early pneumonia.", "Left basilar opacity, possibly pneumonia."),
]


def _all_clauses_kept(source: str, normalized: str) -> list[str]:
    missing = []
    for clause in [c.strip() for c in source.replace(";", ".").split(".") if c.strip()]:
        if "XXXX" in clause:
            continue
        if clause[0].upper() + clause[1:] not in normalized and clause not in normalized:
            missing.append(clause)
    return missing


@pytest.mark.parametrize(("findings", "impression"), REPORTS)
def test_idempotent_deterministic_and_parses(findings: str, impression: str) -> None:
    first = normalize_sections(findings, impression)
    assert normalize_sections(findings, impression) == first  # deterministic
    again = normalize_report(first.text)
    assert again.text == first.text  # idempotent
    parsed = parse_report(first.text)
    assert parsed.findings == first.findings and parsed.impression == first.impression
    assert first.text.startswith("Findings: ") and " Impression: " in first.text
    assert "XXXX" not in first.text


def test_region_order_and_normal_statements_for_a_sparse_report() -> None:
    result = normalize_sections("Lungs are clear.", "Normal.")
    sentences = [s for clauses in result.regions.values() for s in clauses]
    assert result.findings == " ".join(sentences)
    keys = list(result.regions)
    assert keys == [k for k in REGION_NAMES if k in keys]  # region order
    assert "devices" not in result.regions  # only when present
    for region in REGIONS:
        if region.normal and region.key != "lungs":
            assert region.normal in result.findings
    assert result.regions["lungs"] == ["Lungs are clear."]  # the source statement, not the default
    assert result.impression == "Normal." and not result.impression_derived


def test_abnormal_clauses_move_verbatim() -> None:
    findings = ("There is a 2.5 cm spiculated mass in the right upper lobe. The heart is mildly enlarged; "
                "severe degenerative changes of the lower thoracic spine, and the left hemidiaphragm is elevated.")
    result = normalize_sections(findings, "Right upper lobe mass.")
    for clause in ("There is a 2.5 cm spiculated mass in the right upper lobe.", "The heart is mildly enlarged.",
                   "Severe degenerative changes of the lower thoracic spine.", "The left hemidiaphragm is elevated."):
        assert clause in result.findings
    assert result.regions["lungs"][0] == "There is a 2.5 cm spiculated mass in the right upper lobe."
    assert result.regions["heart"] == ["The heart is mildly enlarged."]
    assert result.regions["diaphragm"] == ["The left hemidiaphragm is elevated."]


def test_negation_keeps_its_scope() -> None:
    result = normalize_sections("No pneumothorax, effusion, or focal consolidation.", "")
    assert "No pneumothorax, effusion, or focal consolidation." in result.findings
    labels = label_report(result.text)
    assert labels["Pleural Effusion"] is Label.NEGATIVE and labels["Consolidation"] is Label.NEGATIVE


def test_unmatched_clause_is_kept_in_other() -> None:
    result = normalize_sections("The examination was obtained at the bedside. Lungs clear.", "")
    assert result.regions[OTHER_REGION] == ["The examination was obtained at the bedside."]
    assert list(result.regions)[-1] == OTHER_REGION


@pytest.mark.parametrize(
    ("findings", "impression", "withheld"),
    [
        ("", "Cardiomegaly.", "The cardiac silhouette is normal in size."),
        ("", "Small bilateral pleural effusions.", "There is no pleural effusion."),
        ("Lungs are clear.", "Blunting of the left costophrenic angle, possible effusion.", "The costophrenic angles are sharp."),
        ("", "Pulmonary edema.", "The pulmonary vasculature is normal."),
        ("", "Possible right lower lobe pneumonia.", "The lungs are clear."),
        ("", "Right hilar mass.", "The hila are not enlarged."),
    ],
)
def test_no_default_contradicts_the_source(findings: str, impression: str, withheld: str) -> None:
    result = normalize_sections(findings, impression)
    assert withheld not in result.findings
    assert added_statement_conflicts(result, label_report(f"{findings}\n{impression}")) == []
    assert result.suppressed


def test_partial_lung_default_keeps_the_parts_that_do_not_contradict() -> None:
    result = normalize_sections("Blunting of the right costophrenic angle.", "No acute disease.")
    assert result.regions["lungs"] == ["The lungs are clear. There is no pneumothorax."]


def test_unmentioned_omit_adds_nothing() -> None:
    result = normalize_sections("The heart is enlarged.", "Cardiomegaly.", NormalizeConfig(unmentioned="omit"))
    assert result.findings == "The heart is enlarged." and result.added == {}


def test_mask_removed_word_or_clause_and_counted() -> None:
    result = normalize_sections("Heart XXXX is normal. There are no XXXX of effusion. Lungs clear.", "")
    assert "XXXX" not in result.text
    assert "Heart is normal." in result.findings
    assert "of effusion" not in result.findings  # clause made meaningless by the mask is dropped
    assert result.masks_removed == 2 and result.clauses_dropped_for_mask == 1


def test_mask_never_drops_a_finding() -> None:
    result = normalize_sections("A right XXXX catheter is in XXXX with tip at the cavoatrial junction.", "")
    assert label_report(result.text)["Support Devices"] is Label.POSITIVE
    assert "XXXX" not in result.text


def test_drop_priors() -> None:
    findings = "Compared with the prior study there is no change. Stable cardiomegaly. Lungs are clear."
    kept = normalize_sections(findings, "Unchanged chest.")
    dropped = normalize_sections(findings, "Unchanged chest.", NormalizeConfig(drop_priors=True))
    assert "Stable cardiomegaly." in kept.findings and "prior" in kept.findings
    assert "prior" not in dropped.findings.lower() and "stable" not in dropped.text.lower()
    assert "Cardiomegaly." in dropped.findings
    assert label_report(dropped.text)["Cardiomegaly"] is Label.POSITIVE
    assert dropped.impression_derived and dropped.priors_dropped >= 2


def test_impression_derived_only_when_missing() -> None:
    derived = normalize_sections("The heart is enlarged. Lungs clear.", "")
    assert derived.impression_derived and derived.impression == "The heart is enlarged."
    normal = normalize_sections("Lungs clear.", "")
    assert normal.impression_derived and normal.impression == DEFAULT_IMPRESSION
    given = normalize_sections("Lungs clear.", "  no acute disease . . ")
    assert not given.impression_derived and given.impression == "No acute disease."


def test_embedded_headers_do_not_break_the_format() -> None:
    result = normalize_sections("Heart normal. IMPRESSION: nothing acute.", "Clear. FINDINGS: lungs clear.")
    assert parse_report(result.text).impression == result.impression


def test_chinese_passes_through_in_its_template() -> None:
    result = normalize_sections(" 双肺纹理清晰。 ", "心肺未见异常。", NormalizeConfig(language="zh"))
    assert result.text == "所见：双肺纹理清晰。 结论：心肺未见异常。"


def test_split_regions_round_trips() -> None:
    result = normalize_sections(REPORTS[1][0], REPORTS[1][1])
    regions = split_regions(result.findings)
    assert regions == result.regions
    assert " ".join(s for ss in regions.values() for s in ss) == result.findings


def test_region_of_a_device_clause_is_devices() -> None:
    assert region_of("Right PICC tip in the superior vena cava.") == ("devices", ("devices",))
    assert region_of("The hila are not enlarged.")[0] == "hila"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"unmentioned": "sometimes"}, "'sometimes'"), ({"language": "fr"}, "'fr'"), ({"drop_priors": "yes"}, "'yes'")],
)
def test_config_errors_show_the_bad_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        NormalizeConfig(**kwargs)


def test_nothing_lost_on_a_synthetic_mini_corpus() -> None:
    corpus = REPORTS * 2 + [
        ("Moderate cardiomegaly. Small right effusion.", ""),
        ("No focal airspace disease. Possible left lower lobe infiltrate.", "Possible pneumonia."),
        ("Right rib fracture. Left chest tube.", "Rib fracture."),
    ] * 6
    result = measure_recall(corpus)
    assert result.failures() == []
    assert result.positive.get("Cardiomegaly", 0) >= 10
    assert result.conflicting_defaults == 0


# ------------------------------------------------------------------------------------------- CLI
def test_cli_text_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "reports.txt"
    source.write_text("Findings: Heart is enlarged. Impression: Cardiomegaly.\n\nLungs clear.\n", encoding="utf-8")
    assert cli_main([str(source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("Findings: ") for line in lines)
    again = tmp_path / "again.txt"
    again.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli_main([str(again)]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_cli_jsonl_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"id": "a", "findings": "XXXX heart enlarged.", "impression": ""}, {"id": "b", "report": "Lungs clear."}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli_main([str(source), "-o", str(out), "--unmentioned", "omit", "--drop-priors"]) == 0
    result = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in result] == ["a", "b"]
    assert result[0]["masks_removed"] == 1 and result[0]["impression_derived"] is True
    assert result[1]["findings"] == "Lungs clear."
    assert cli_main([str(out), "--jsonl", "--unmentioned", "omit"]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["report"] for r in again] == [r["report"] for r in result]


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("not json\n", ["--jsonl"], "line 1: invalid JSON"),
        ('{"id": 1}\n', ["--jsonl"], "needs 'findings'/'impression' or a 'report'"),
        ('{"findings": 3}\n', ["--jsonl"], "must be strings"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, content: str, args: list, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    assert cli_main([str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_missing_file_and_bad_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([str(tmp_path / "nope.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli_main(["--unmentioned", "maybe"])
    assert info.value.code == 2


def test_cli_reads_stdin_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "echo_model.data.normalize_cli", "--lang", "en"], input="Lungs clear.\n",
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Findings: ") and proc.stdout.count("\n") == 1


def test_masked_abnormal_clause_is_kept_and_blocks_its_normal_statement() -> None:
    result = normalize_sections("Mild blunting of the right costophrenic XXXX. Prominent pulmonary XXXX.", "Normal.")
    assert "Mild blunting of the right costophrenic." in result.findings  # kept without the mask
    assert "The costophrenic angles are sharp." not in result.findings
    assert "The pulmonary vasculature is normal." not in result.findings  # the mask may have hidden the vessels
    assert "XXXX" not in result.text and normalize_report(result.text).text == result.text
