"""Tests of the report form check. Drafts are hand-written; the check never changes them."""

from __future__ import annotations

import pytest

from echo_model.data.normalize import REGIONS, normalize_sections
from echo_model.report_check import ReportCheck, check_report

NORMAL = (
    "Findings: The thorax is symmetric. The mediastinum and trachea are midline. The lungs are clear. "
    "There is no pneumothorax or pleural effusion. The pulmonary vasculature is normal. The cardiac silhouette "
    "is normal in size. The hila are not enlarged. The diaphragms are normal. The costophrenic angles are sharp. "
    "There is no acute osseous abnormality. Impression: No acute cardiopulmonary abnormality."
)


def _check(text: str, **kwargs) -> ReportCheck:
    result = check_report(text, normalized=kwargs.pop("normalized", True), **kwargs)
    assert result.text == text  # judged as given, never repaired
    return result


def test_garbled_draft_names_every_failure() -> None:
    text = "Findings: Bilateralound--lloundlllllllll---, pre alveolar.. Impression Impression Impression:"
    result = _check(text)
    warnings = result.warnings
    assert not result.well_formed
    assert "The draft repeats the word 'impression' 3 times in a row" in warnings
    assert "The header word 'Impression' is repeated 3 times in a row" in warnings
    assert "The draft stops mid-sentence" in warnings
    assert "Unknown word 'lloundlllllllll'" in warnings and "Unknown word 'Bilateralound'" in warnings
    assert any(w.startswith("The letter 'l' repeats") and "lloundlllllllll" in w for w in warnings)
    assert "The draft has repeated punctuation '..'" in warnings
    assert "The impression section is empty" in warnings
    assert "No statement about the hila" in warnings


def test_truncated_draft_without_impression() -> None:
    text = "Findings: Chest radiographss bilateral lung opacities with"
    warnings = _check(text, normalized=False).warnings
    assert "The draft stops mid-sentence" in warnings
    assert "Unknown word 'radiographss'" in warnings
    assert "The draft has no 'Impression:' section header" in warnings
    assert not any(w.startswith("No statement") for w in warnings)  # not asked for


def test_truncated_normalized_draft() -> None:
    text = NORMAL[: NORMAL.index("Impression:") + len("Impression: No acute cardio")]
    warnings = _check(text).warnings
    assert "The draft stops mid-sentence" in warnings and "Unknown word" not in " ".join(warnings)


@pytest.mark.parametrize("region", [r for r in REGIONS if r.parts], ids=lambda r: r.key)
def test_normalized_draft_missing_one_region(region) -> None:
    findings = " ".join(r.normal for r in REGIONS if r.normal and r.key != region.key)
    text = f"Findings: {findings} Impression: No acute cardiopulmonary abnormality."
    warnings = _check(text).warnings
    assert len(warnings) == 1 and warnings[0].startswith("No statement about ")
    assert check_report(text, normalized=False).well_formed


def test_no_statement_about_the_hila_by_name() -> None:
    text = NORMAL.replace("The hila are not enlarged. ", "")
    assert _check(text).warnings == ["No statement about the hila"]


def test_well_formed_reports_give_no_warning() -> None:
    assert _check(NORMAL).warnings == []
    for findings, impression in [
        ("The heart is mildly enlarged. Small left pleural effusion. Right PICC tip in the SVC.", "Cardiomegaly."),
        ("", "Possible right lower lobe pneumonia."),
        ("Hyperinflated lungs. Calcified granuloma in the left upper lobe. Surgical clips.", ""),
    ]:
        text = normalize_sections(findings, impression).text
        assert _check(text).warnings == [], text


def test_section_order_repeats_and_empty() -> None:
    assert "The 'Impression:' section comes before the 'Findings:' section" in _check(
        "Impression: Normal. Findings: Lungs clear.", normalized=False).warnings
    assert "The section header 'Findings:' appears 2 times" in _check(
        "Findings: Lungs clear. Findings: Heart normal. Impression: Normal.", normalized=False).warnings
    assert "The findings section is empty" in _check("Findings: Impression: Normal.", normalized=False).warnings
    assert _check("", normalized=False).warnings == ["The draft is empty"]


def test_phrase_runs_and_vocabulary() -> None:
    text = "Findings: No effusion no effusion no effusion. Impression: Normal."
    assert "The draft repeats 'no effusion' 3 times in a row" in _check(text, normalized=False).warnings
    odd = "Findings: Lungs clear. Impression: Frobnicated chest."
    assert "Unknown word 'Frobnicated'" in _check(odd, normalized=False).warnings
    assert _check(odd, normalized=False, vocabulary=["frobnicated"]).well_formed



def test_a_doubled_word_is_a_stutter_but_a_word_across_sentences_is_not() -> None:
    stutter = NORMAL.replace("The lungs are clear.", "Bilateral opacities more prominent peripheral peripheral "
                             "distribution.")
    result = _check(stutter)
    assert result.warnings == ["The draft repeats the word 'peripheral' twice in a row"] and not result.well_formed
    assert _check(NORMAL.replace("The thorax", "The the thorax")).warnings == [
        "The draft repeats the word 'the' twice in a row"]
    # the same word either side of a full stop, a short word, or three times (reported once, by the run check)
    assert _check(NORMAL.replace("pleural effusion.", "pleural effusion. Effusion is absent.")).well_formed
    assert _check(NORMAL.replace("in size", "in in size")).well_formed
    tripled = _check(NORMAL.replace("symmetric", "symmetric symmetric symmetric")).warnings
    assert tripled == ["The draft repeats the word 'symmetric' 3 times in a row"]

def test_chinese_template() -> None:
    assert _check("所见：双肺纹理清晰。 结论：心肺未见异常。", normalized=True, language="zh").well_formed
    warnings = _check("所见：双肺纹理清晰", normalized=False, language="zh").warnings
    assert "The draft has no '结论：' section header" in warnings and "The draft stops mid-sentence" in warnings


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="int"):
        check_report(3, normalized=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'fr'"):
        check_report("Findings: x. Impression: y.", normalized=True, language="fr")  # type: ignore[arg-type]


def test_pure_text_modules_import_no_model_code() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, echo_model.report_check, echo_model.data.normalize, echo_model.data.normalize_cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'echo_eval', 'train', 'app')"
        " or m.startswith(('echo_model.sampling', 'echo_model.loading', 'echo_model.modeling'))];"
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": ""}, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
