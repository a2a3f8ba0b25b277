"""Tests of the rule-based CheXpert labeler and the clinical-efficacy scores.

Every sentence here is hand-written for the test (no dataset text).
"""

from __future__ import annotations

import pytest

from echo_eval.metrics import COMPETITION_OBSERVATIONS, OBSERVATIONS, Label, ce_scores, label_report

POS, NEG, UNC = Label.POSITIVE, Label.NEGATIVE, Label.UNCERTAIN

# observation -> (positive, negated, uncertain) sentence
FORMS: dict[str, tuple[str, str, str]] = {
    "Enlarged Cardiomediastinum": (
        "The superior mediastinum is widened.",
        "No mediastinal widening.",
        "Possible mediastinal widening.",
    ),
    "Cardiomegaly": (
        "There is moderate cardiomegaly.",
        "No cardiomegaly.",
        "Possible mild cardiomegaly.",
    ),
    "Lung Lesion": (
        "There is a 1 cm nodule in the right upper lobe.",
        "No pulmonary nodules or masses.",
        "Questionable nodule at the left lung base.",
    ),
    "Lung Opacity": (
        "Patchy opacity in the left lower lobe.",
        "No focal opacity.",
        "Opacity at the right base may be artifact.",
    ),
    "Edema": (
        "Mild interstitial pulmonary edema.",
        "There is no pulmonary edema.",
        "Findings may represent mild pulmonary edema.",
    ),
    "Consolidation": (
        "Dense consolidation in the right lower lobe.",
        "No focal consolidation.",
        "Consolidation cannot be excluded.",
    ),
    "Pneumonia": (
        "Findings are consistent with right lower lobe pneumonia.",
        "No evidence of pneumonia.",
        "Possible early pneumonia.",
    ),
    "Atelectasis": (
        "Bibasilar subsegmental atelectasis.",
        "No atelectasis.",
        "Likely atelectasis at the left base.",
    ),
    "Pneumothorax": (
        "Small right apical pneumothorax.",
        "No pneumothorax.",
        "Questionable small left pneumothorax.",
    ),
    "Pleural Effusion": (
        "There is a small left pleural effusion.",
        "No pleural effusion.",
        "Possible small pleural effusion.",
    ),
    "Pleural Other": (
        "Right apical pleural thickening.",
        "No pleural thickening.",
        "Possible pleural thickening at the left base.",
    ),
    "Fracture": (
        "Healed fracture of the left sixth rib.",
        "No acute fracture.",
        "Possible nondisplaced rib fracture.",
    ),
    "Support Devices": (
        "A pacemaker is present with leads in the right ventricle.",
        "The endotracheal tube has been removed.",
        "Possible retained catheter fragment.",
    ),
}
CASES = [
    pytest.param(obs, sentence, label, id=f"{obs}-{label.value}")
    for obs, sentences in FORMS.items()
    for sentence, label in zip(sentences, (POS, NEG, UNC), strict=True)
]


def test_forms_cover_every_observation_but_no_finding() -> None:
    assert set(FORMS) == set(OBSERVATIONS) - {"No Finding"}


@pytest.mark.parametrize(("observation", "sentence", "expected"), CASES)
def test_positive_negated_and_uncertain_forms(observation: str, sentence: str, expected: Label) -> None:
    labels = label_report(sentence)
    assert labels.get(observation) is expected, labels
    # the sentence mentions nothing else, except that a single finding switches No Finding
    others = {o for o in labels if o not in (observation, "No Finding")}
    assert others == set(), labels


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("The heart is enlarged.", POS),
        ("Heart size is mildly enlarged.", POS),
        ("The heart is not enlarged.", NEG),
        ("Heart size is normal.", NEG),
        ("Normal heart size.", NEG),
        ("The heart size and mediastinal contours are within normal limits.", NEG),
        ("Heart size is at the upper limits of normal.", NEG),
        ("Borderline cardiomegaly.", UNC),
        ("No change in moderate cardiomegaly.", POS),
    ],
)
def test_cardiomegaly_phrasings(sentence: str, expected: Label) -> None:
    assert label_report(sentence).get("Cardiomegaly") is expected


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        # one negation cue covers a list ...
        (
            "No focal consolidation, pneumothorax, or pleural effusion.",
            {"Consolidation": NEG, "Pneumothorax": NEG, "Pleural Effusion": NEG},
        ),
        # ... but stops at a contrast word
        (
            "No pneumothorax, but there is a small pleural effusion.",
            {"Pneumothorax": NEG, "Pleural Effusion": POS},
        ),
        ("No pneumothorax. Small left pleural effusion.", {"Pneumothorax": NEG, "Pleural Effusion": POS}),
        # post-negation and post-uncertainty
        ("The left pleural effusion has resolved.", {"Pleural Effusion": NEG}),
        ("A pneumothorax is not seen.", {"Pneumothorax": NEG}),
        ("Pneumonia is not excluded.", {"Pneumonia": UNC}),
        ("Atelectasis versus pneumonia at the left base.", {"Atelectasis": UNC, "Pneumonia": UNC}),
        # "no ... to suggest" negates rather than hedges
        ("There is no focal opacity to suggest pneumonia.", {"Lung Opacity": NEG, "Pneumonia": NEG}),
        # a pericardial effusion is not a pleural effusion; a rib lesion is not a lung lesion
        ("Small pericardial effusion.", {}),
        ("Lytic lesion in the right sixth rib.", {}),
    ],
)
def test_scope_of_cues(report: str, expected: dict[str, Label]) -> None:
    labels = {o: label for o, label in label_report(report).items() if o != "No Finding"}
    assert labels == expected


def test_positive_beats_uncertain_beats_negative() -> None:
    assert label_report("No pleural effusion. Small left pleural effusion.")["Pleural Effusion"] is POS
    assert label_report("No pneumothorax. Possible tiny pneumothorax.")["Pneumothorax"] is UNC
    assert label_report("Possible effusion. Large right pleural effusion.")["Pleural Effusion"] is POS


@pytest.mark.parametrize(
    ("report", "has_no_finding"),
    [
        ("No acute cardiopulmonary abnormality.", True),
        ("Heart size is normal. Lungs are clear. No effusion or pneumothorax.", True),
        ("Right internal jugular catheter tip in the SVC. Lungs are clear.", True),  # devices do not count
        ("Lungs are clear. Possible small right pleural effusion.", False),  # uncertain counts
        ("Mild cardiomegaly. Lungs are clear.", False),
    ],
)
def test_no_finding_rule(report: str, has_no_finding: bool) -> None:
    labels = label_report(report)
    assert ("No Finding" in labels) is has_no_finding
    if has_no_finding:
        assert labels["No Finding"] is POS


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": NEG}),
        ("The heart is XXXX enlarged.", {"Cardiomegaly": POS}),
        ("No XXXX pneumothorax. XXXX XXXX opacity in the right base.", {"Pneumothorax": NEG, "Lung Opacity": POS}),
        ("Right chest XXXX tip in the SVC.", {"Support Devices": POS}),
        ("Normal chest x-XXXX. XXXX XXXX.", {}),
    ],
)
def test_deidentification_mask_is_an_unknown_word(report: str, expected: dict[str, Label]) -> None:
    labels = {o: label for o, label in label_report(report).items() if o != "No Finding"}
    assert labels == expected


def test_result_keys_are_in_chexpert_order_and_values_are_labels() -> None:
    labels = label_report("Small right pleural effusion. Mild cardiomegaly. Pacemaker in place.")
    assert list(labels) == [o for o in OBSERVATIONS if o in labels]
    assert all(isinstance(value, Label) for value in labels.values())


def test_text_without_words_has_no_labels() -> None:
    assert label_report("") == {}
    assert label_report(" .. 1. ") == {}


def test_label_report_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="NoneType"):
        label_report(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- clinical efficacy
# Three hand-labelled studies (absent = not mentioned):
#   1: pred Cardiomegaly+, Edema+         ref Cardiomegaly+
#   2: pred Pleural Effusion uncertain    ref Pleural Effusion+
#   3: pred Atelectasis+, Fracture+       ref Atelectasis+, Fracture+
PRED = [
    {"Cardiomegaly": POS, "Edema": POS},
    {"Pleural Effusion": UNC},
    {"Atelectasis": POS, "Fracture": POS},
]
REF = [
    {"Cardiomegaly": POS},
    {"Pleural Effusion": POS},
    {"Atelectasis": POS, "Fracture": POS},
]


def test_ce_micro_scores_by_hand() -> None:
    scores = ce_scores(PRED, REF)
    # 5 competition observations: TP = Cardiomegaly + Atelectasis = 2, FP = Edema = 1,
    # FN = Pleural Effusion (uncertain counts as absent) = 1 -> P = R = F1 = 2/3.
    assert scores["ce_precision_5"] == pytest.approx(2 / 3)
    assert scores["ce_recall_5"] == pytest.approx(2 / 3)
    assert scores["ce_f1_5"] == pytest.approx(2 / 3)
    # all 14: Fracture adds a TP -> TP 3, FP 1, FN 1 -> 3/4 each.
    assert scores["ce_precision_14"] == pytest.approx(3 / 4)
    assert scores["ce_recall_14"] == pytest.approx(3 / 4)
    assert scores["ce_f1_14"] == pytest.approx(3 / 4)


def test_ce_macro_scores_by_hand() -> None:
    scores = ce_scores(PRED, REF)
    # per-observation F1 over the 5: Atelectasis 1, Cardiomegaly 1, Consolidation 0
    # (nothing predicted or present: zero_division = 0), Edema 0 (one FP),
    # Pleural Effusion 0 (one FN) -> macro = 2/5; precision and recall likewise.
    assert scores["ce_macro_f1_5"] == pytest.approx(2 / 5)
    assert scores["ce_macro_precision_5"] == pytest.approx(2 / 5)
    assert scores["ce_macro_recall_5"] == pytest.approx(2 / 5)
    # over 14: Atelectasis, Cardiomegaly, Fracture have F1 1, the other 11 have 0.
    assert scores["ce_macro_f1_14"] == pytest.approx(3 / 14)


def test_ce_accepts_plain_string_labels_and_perfect_agreement_scores_one() -> None:
    ref = [{"Edema": "positive", "Cardiomegaly": "negative"}, {"Pleural Effusion": "positive"}]
    scores = ce_scores(ref, ref)
    assert scores["ce_f1_5"] == 1.0
    assert scores["ce_f1_14"] == 1.0


def test_ce_competition_set_is_the_usual_five() -> None:
    assert set(COMPETITION_OBSERVATIONS) == {
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
    }


def test_ce_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 predictions and 2 references"):
        ce_scores(PRED, REF[:2])


# ------------------------------------------------------------------ normalized phrasing
# The report normalizer (echo_model/data/normalize.py, method.md §3.5) writes one statement per region.
# The labeler must read those statements: normal statements are negative or no observation, abnormal
# ones positive for the right observation.
NORMALIZED_PHRASES: list[tuple[str, dict[str, Label]]] = [
    ("Hila are not enlarged.", {}),
    ("The hila are not enlarged.", {}),
    ("The mediastinum and trachea are midline.", {}),
    ("No osseous abnormalities.", {}),
    ("There is no acute osseous abnormality.", {}),
    ("The thorax is symmetric.", {}),
    ("The lungs are clear.", {}),
    ("The lungs are clear. There is no pneumothorax or pleural effusion.",
     {"Pneumothorax": NEG, "Pleural Effusion": NEG}),
    ("There is no pneumothorax.", {"Pneumothorax": NEG}),
    ("There is no pleural effusion.", {"Pleural Effusion": NEG}),
    ("The pulmonary vasculature is normal.", {"Edema": NEG}),
    ("The pulmonary vasculature is prominent.", {"Edema": POS}),
    ("The cardiac silhouette is normal in size.", {"Cardiomegaly": NEG}),
    ("Cardiac silhouette is enlarged.", {"Cardiomegaly": POS}),
    ("The cardiac silhouette is mildly enlarged.", {"Cardiomegaly": POS}),
    ("The diaphragms are normal.", {}),
    ("The costophrenic angles are sharp.", {"Pleural Effusion": NEG}),
    ("The diaphragms are normal. The costophrenic angles are sharp.", {"Pleural Effusion": NEG}),
    ("The left costophrenic angle is blunted.", {"Pleural Effusion": POS}),
    ("Blunting of the right costophrenic angle.", {"Pleural Effusion": POS}),
    ("No blunting of the costophrenic angles.", {"Pleural Effusion": NEG}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": POS}),
    ("The mediastinum and trachea are midline. The cardiac silhouette is enlarged.", {"Cardiomegaly": POS}),
    ("There is a small right pleural effusion.", {"Pleural Effusion": POS}),
    ("There is a right internal jugular central venous catheter with its tip in the superior vena cava.",
     {"Support Devices": POS}),
    ("No acute cardiopulmonary abnormality.", {}),
]


@pytest.mark.parametrize(("sentence", "expected"), NORMALIZED_PHRASES)
def test_normalized_phrasing(sentence: str, expected: dict[str, Label]) -> None:
    labels = {k: v for k, v in label_report(sentence).items() if k != "No Finding"}
    assert labels == expected


def test_every_normal_statement_of_the_region_table_is_negative_or_silent() -> None:
    from echo_model.data.normalize import REGIONS

    for region in REGIONS:
        for text, _ in region.parts:
            labels = label_report(text)
            assert all(v is NEG for k, v in labels.items() if k != "No Finding"), (text, labels)
            assert labels.get("No Finding") is POS, text
