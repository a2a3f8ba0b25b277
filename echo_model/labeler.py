"""Rule-based CheXpert 14-observation labeler.

Library code: drafting, the app and the report checks read reports with it; the
clinical-efficacy scores built on it live in :mod:`echo_eval.metrics.chexpert`.

Why: report-generation papers judge *clinical* correctness by labelling the
generated and the reference report with the 14 CheXpert observations and
comparing the labels (clinical efficacy, CE; Chen et al., R2Gen, EMNLP 2020;
Irvin et al., CheXpert, AAAI 2019). The reference CheXpert labeler
(stanfordmlgroup/chexpert-labeler) needs NegBio, a dependency parser and Java,
and CheXbert needs weights from the Hugging Face hub; neither runs offline here.
This module is a dependency-free labeler in the same spirit: per-observation
mention phrases, negation and uncertainty cues, CheXpert's aggregation rules.
The phrase and cue lists are our own, written after the categories and examples
of the CheXpert paper (Irvin et al. 2019, section "Labeler") and NegEx (Chapman
et al., J Biomed Inform 2001) for the cue-and-scope idea.

Pipeline for one report:

1. Normalise: lower-case; IU X-ray's de-identification mask ``XXXX`` (any run of
   four or more x) becomes the word ``xxxx``, an unknown word that matches no phrase
   but does not break a negation or uncertainty scope.
2. Split into sentences (``.``, ``!``, ``?``, ``;``, new line; not the point of a
   decimal number), then into clauses at contrast words (``but``, ``however``,
   ``although``, ``except``, ``otherwise``, ``other than``, ...) and at a new
   ``there is/are``. A cue never reaches across a clause boundary.
3. Find every mention of every observation (regular expressions, one list per
   observation). Some phrases state a normal finding ("heart size is normal",
   "costophrenic angles are sharp"); those are negative mentions. A few
   mentions are dropped when their clause shows they describe something else
   (a "lesion" of a rib, a nodule that is a nipple shadow, "prior granulomatous
   infection").
4. Classify each mention, uncertainty first (so that "cannot be excluded" is not
   read as a negation): *uncertain* if an uncertainty cue occurs in the clause
   before the end of the mention (``possible``, ``may``, ``likely``, ``suggest``,
   ``cannot exclude``, ``versus``, ``evaluate for``...), ``borderline`` occurs
   in the same comma-separated phrase, or a post-cue follows it
   (``... cannot be excluded``, ``... is suspected``, ``... versus ...``); else
   *negative* if a negation cue occurs before the end of the mention (``no``,
   ``not``, ``without``, ``free of``, ``negative for``, ``clear of``,
   ``resolution of``...) or a post-cue follows it (``... has resolved``, ``... is
   not seen``); else *positive*. "No change" / "no interval increase" are not
   negations, and "no opacity to suggest pneumonia" negates pneumonia.
   "Upper limits of normal" heart size counts as normal.
5. Aggregate per observation as CheXpert does: positive beats uncertain beats
   negative; an observation that is never mentioned is absent from the result.
6. "No Finding" is positive when no observation other than Support Devices is
   positive or uncertain (CheXpert's rule), otherwise absent.

Clinical efficacy (CE-F1 on top of these labels) is measured in :mod:`echo_eval.metrics.chexpert`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum

__all__ = [
    "COMPETITION_OBSERVATIONS",
    "OBSERVATIONS",
    "Label",
    "label_report",
    "label_reports",
    "mention_pattern",
]


class Label(str, Enum):
    """CheXpert mention label; an observation that is not mentioned has no label."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"


OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observations, in the order of the CheXpert paper (Irvin et al. 2019)."""

COMPETITION_OBSERVATIONS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
"""The 5 observations of the CheXpert competition, the usual "CE-5" subset."""

# --------------------------------------------------------------------------- phrases
# A "gap" lets a subject and its attribute be a few words apart ("the heart is
# mildly enlarged", "heart size and mediastinal contours are within normal limits").
_GAP = r"(?:\s+[\w-]+){0,5}?\s+"
_HEART = r"(?:heart|cardiac(?:\s+(?:size|silhouette|shadow|contours?|diameter))?|heart\s+size)"
_MEDIASTINUM = r"(?:mediastinum|mediastinal(?:\s+(?:silhouette|contours?|width|shadow))?)"
_CARDIOMED = r"(?:cardiomediastinal|cardio-mediastinal|cardiac\s+and\s+mediastinal)\s+(?:silhouette|contours?|shadow)s?"
_NORMAL = (
    r"(?:normal|within\s+normal\s+limits|unremarkable|not\s+enlarged|normal\s+in\s+size"
    r"|upper\s+limits?\s+(?:of\s+)?normal|top\s+(?:of\s+)?normal|high\s+normal)"
)
# a lesion "of the right 9th rib" or "in the humeral head" is not a lung lesion
_NOT_ON_BONE = (
    r"(?![^,]*\b(?:ribs?|clavic\w+|humer\w+|scapul\w+|vertebra\w*|spine|spinal|osseous|bony|bones?"
    r"|skeletal|stern\w+)\b)"
)
_ENLARGED = r"(?:enlarged|enlargement|increased|large|prominent|prominence|widened|widening)"

# Each observation: mention phrases (positive unless a cue says otherwise) and
# "normal" phrases (negative unless an uncertainty cue says otherwise).
_MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        rf"{_CARDIOMED}{_GAP}{_ENLARGED}",
        rf"{_ENLARGED}\s+(?:of\s+the\s+)?(?:(?:upper|superior)\s+)?(?:{_CARDIOMED}|{_MEDIASTINUM})",
        rf"{_MEDIASTINUM}{_GAP}(?:enlarged|widened|widening|prominent|prominence)",
        r"mediastinal\s+(?:widening|enlargement|prominence)",
        r"widened\s+(?:superior\s+)?mediastin\w*",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"(?:cardiac|heart)\s+enlargement",
        r"(?:enlarged|large)\s+(?:heart|cardiac\s+(?:silhouette|shadow|size|contour))",
        r"enlargement\s+of\s+the\s+(?:heart|cardiac\s+(?:silhouette|shadow|contour))",
        rf"{_HEART}{_GAP}(?:enlarged|increased|large|prominent)",
    ),
    "Lung Lesion": (
        r"nodul(?:e|es|ar\s+(?:densit(?:y|ies)|opacit(?:y|ies)|opacification))",
        r"(?<!soft\s)(?<!soft\stissue\s)mass(?:es|like)?\b(?!\s+effect)",
        r"(?<!bony\s)(?<!osseous\s)(?<!lytic\s)(?<!sclerotic\s)(?<!blastic\s)(?<!skin\s)lesions?"
        + _NOT_ON_BONE,
        r"tumou?rs?",
        r"neoplasm\w*",
        r"carcinoma|malignan\w+|metasta\w+",
        r"cavitary\s+\w+|cavitation",
    ),
    "Lung Opacity": (
        r"opaci\w+",
        r"infiltrat\w*",
        r"air[\s-]?space\s+(?:disease|process|filling)",
        r"(?<!bone\s)(?<!bony\s)(?<!sclerotic\s)(?<!soft\stissue\s)densit(?:y|ies)",
        r"hazy|haziness",
        r"(?<!pleural\s)(?<!pleural-)(?<!pleural\sand\s)scar(?:s|ring)?\b",
        r"interstitial\s+(?:markings?|pattern|prominence|disease|changes?|thickening|lung\s+disease)",
        r"reticul\w+",
        r"ground[\s-]glass",
        r"(?:peribronchial|bronchial\s+wall)\s+(?:thickening|cuffing)",
    ),
    "Edema": (
        r"(?<!soft\stissue\s)edema",
        r"(?:pulmonary|vascular|venous)\s+(?:vascular\s+)?(?:congestion|engorgement|redistribution)",
        r"congestion|engorged|pulmonary\s+venous\s+hypertension",
        r"vascular\s+(?:prominence|indistinctness)|indistinct\s+vascular\w*",
        r"(?:prominen\w+|increased)\s+(?:of\s+the\s+)?(?:central\s+)?(?:pulmonary\s+|lung\s+)?vascular(?:ity|ture)",
        r"congestive\s+heart\s+failure|heart\s+failure|\bchf\b",
        r"cephalization",
        r"fluid\s+overload",
        r"kerley",
        (
            r"vascul(?:arity|ature)(?:\s+[\w-]+){0,3}?\s+(?:is|are|appears?)\s+(?:\w+\s+)?(?:prominent|engorged"
            r"|congested|indistinct|increased|plethoric)"
        ),
    ),
    "Consolidation": (r"consolidat\w*",),
    "Pneumonia": (
        r"pneumonia|bronchopneumonia|pneumonitis",
        r"infection|infectious",
    ),
    "Atelectasis": (
        r"atelecta\w+",
        r"(?<!vertebral\s)(?<!vertebral\sbody\s)(?<!compression\s)collapse",
    ),
    "Pneumothorax": (r"(?:hydro)?pneumothora(?:x|ces)",),
    "Pleural Effusion": (
        r"(?<!pericardial\s)effusions?",
        # blunting of a costophrenic angle is read as pleural fluid (CheXpert counts it as effusion)
        r"blunt\w*\s+(?:of\s+)?(?:the\s+)?(?:[\w-]+\s+){0,2}?(?:costophrenic|cp)\s+(?:angles?|sulc(?:us|i)|recess\w*)",
        r"(?:costophrenic|cp)\s+(?:angles?|sulc(?:us|i)|recess\w*)(?:\s+[\w-]+){0,3}?\s+blunt\w*",
        r"pleural\s+fluid|hydrothorax|fluid\s+in\s+the\s+(?:minor\s+|major\s+)?fissure",
    ),
    "Pleural Other": (
        r"pleural\s+(?:thickening|scar\w*|plaques?|calcifications?|fibrosis)",
        r"pleural(?:-|\s+and\s+|\s+)parenchymal\s+(?:scar\w*|thickening)",
        r"pleuroparenchymal\s+(?:scar\w*|thickening)",
        r"thickening\s+of\s+the\s+pleura",
        r"apical\s+(?:pleural\s+)?cap(?:ping|s)?\b|fissural\s+thickening|thickening\s+of\s+the\s+(?:minor\s+|major\s+)?fissure",
        r"fibrothorax",
    ),
    "Fracture": (r"fractur\w+|\bfx\b",),
    "Support Devices": (
        r"pacemaker|pacer|defibrillator|\baicd\b|\bicd\b",
        r"catheters?|\bpicc\b|port-?a-?cath\w*|\bport\b|\btips?\b|\btubing\b|\bshunt\s+(?:catheter|tubing)",
        r"(?:central|venous|picc|arterial|jugular|subclavian|dialysis)\s+(?:venous\s+)?lines?\b|lines\s+and\s+tubes",
        r"stimulator|sutures?\b|suture\s+material",
        r"(?:pacer|pacemaker|pacing|icd|aicd|cardiac|transvenous|epicardial|defibrillator|monitor\w*)\s+leads?\b",
        r"\bleads?\s+(?:in|within|terminat\w*|project\w*|overl\w*|extend\w*)\b",
        (
            r"(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|chest|enteric|gastric"
            r"|et|ng|og|dobhoff)\s+tubes?"
        ),
        r"tracheostomy",
        r"(?:sternotomy|surgical|cerclage)\s+(?:wires?|clips?|sutures?)",
        r"\bclips?\b",
        r"stents?\b",
        r"(?:prosthetic|mechanical|replacement)\s+(?:aortic\s+|mitral\s+)?valve|valve\s+(?:replacement|prosthesis)",
        r"\bhardware\b|(?<!breast\s)prosthes[ie]s|\bdevices?\b|\bscrews?\b|\bdrains?\b|\bcoils?\b|ivc\s+filter",
    ),
}

_NORMALS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        rf"{_CARDIOMED}{_GAP}{_NORMAL}",
        rf"{_MEDIASTINUM}{_GAP}{_NORMAL}",
        rf"normal\s+(?:{_CARDIOMED}|{_MEDIASTINUM})",
    ),
    "Cardiomegaly": (
        rf"{_HEART}{_GAP}{_NORMAL}",
        rf"{_CARDIOMED}{_GAP}{_NORMAL}",
        rf"normal\s+(?:{_HEART}|{_CARDIOMED})",
        r"normal[\s-]sized\s+heart",
    ),
    "Edema": (
        (
            r"(?:pulmonary\s+)?vascul(?:arity|ature)(?:\s+[\w-]+){0,3}?\s+(?:is|are|appears?)\s+(?:\w+\s+)?"
            r"(?:normal|within\s+normal\s+limits|unremarkable)"
        ),
    ),
    "Pleural Effusion": (
        r"(?:costophrenic|cp)\s+(?:angles?|sulci|sulcus)(?:\s+[\w-]+){0,3}?\s+(?:sharp|clear|normal|preserved)",
    ),
}

# A mention in a clause that matches one of these describes something else: a
# nodule that is a nipple shadow or a mass of the breast or chest wall is not a
# lung lesion, a "prior granulomatous infection" is not a pneumonia.
_EXCLUSIONS: dict[str, re.Pattern[str]] = {
    "Lung Lesion": re.compile(r"\b(?:nipples?|breasts?|chest\s+wall|soft\s+tissues?|thyroid|skin)\b"),
    "Pneumonia": re.compile(
        r"\b(?:granulomatous|tubercul\w+|(?:prior|old|previous|remote|healed)\s+(?:\w+\s+)?infection)\b"
    ),
}

# ------------------------------------------------------------------------------ cues
_PRE_UNCERTAIN = re.compile(
    r"\b(?:may|might|could|possib\w*|probabl[ey]|likely|question(?:able|ably|ed)?"
    r"|suspicious\s+(?:for|of)|suspect(?:ed)?|suspicion|concern(?:ing)?\s+for|worrisome|suggest\w*|differential"
    r"|versus|vs|consider(?:ed|ation)?|equivocal|indeterminate|presum\w+|perhaps|uncertain"
    r"|evaluat(?:e|ion)\s+(?:for|of)|to\s+(?:identify|exclude|evaluate|assess)|assess(?:ment)?\s+for"
    r"|rule\s+out|if"
    r"|cannot\s+(?:be\s+)?(?:exclude[d]?|rule[d]?\s+out)|can\s+not\s+(?:be\s+)?(?:exclude[d]?|rule[d]?\s+out)"
    r"|not\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)"
    r"|difficult\s+to\s+exclude)\b"
)
# Uncertainty that only qualifies the phrase right after it ("borderline heart size, <other finding>").
_LOCAL_UNCERTAIN = re.compile(r"\bborderline\b")
# "no opacity to suggest pneumonia": the finding is negated, not uncertain.
_PSEUDO_UNCERTAIN = re.compile(r"\bto\s+suggest\b")
_POST_UNCERTAIN = re.compile(
    r"\b(?:(?:cannot|can\s+not|could\s+not|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?"
    r"(?:excluded|ruled\s+out)|(?:is|are)\s+(?:also\s+)?(?:possible|suspected|questioned|likely|probable"
    r"|questionable|not\s+excluded)|suspected|(?:may|might|could)\s+(?:be|represent|reflect)"
    r"|versus|vs|(?:a\s+)?consideration)\b"
)
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|free\s+of|negative\s+for|clear\s+of|absence\s+of|absent|resolution\s+of"
    r"|resolved|removal\s+of|clearing\s+of|rather\s+than|nor|neither|never|ruled\s+out)\b"
)
_POST_NEGATION = re.compile(
    r"\b(?:(?:not|no\s+longer)\s+(?:\w+[\s-]+)?(?:seen|identified|present|visualized|demonstrated"
    r"|appreciated|evident|noted|visible|detected|apparent|shown)|(?:has|have)\s+(?:\w+\s+)?resolved"
    r"|resolved|(?:is|are|was|were)\s+absent|removed|cleared|(?:is|are)\s+negative"
    r"|within\s+(?:the\s+)?(?:normal\s+limits|limits\s+of\s+normal))\b"
)
# Phrases that contain a negation word but do not negate the finding next to them.
_PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without|not)\s+(?:(?:significant|definite|appreciable|substantial|other|interval|acute|"
    r"significantly|much|major|marked)\s+){0,2}(?:change|changes|changed|increase|increased|decrease"
    r"|decreased|worsening|worsened|improvement|improved|progression|progressed|difference)\b"
    r"|\bnot\s+only\b|\bno\s+(?:longer\s+)?(?:evidence\s+)?(?:of\s+)?(?:interval\s+)?(?:change|increase)\b"
)

_CLAUSE_BOUNDARY = re.compile(
    r"\b(?:but|however|although|though|whereas|except|otherwise|yet|aside\s+from|apart\s+from"
    r"|other\s+than|with\s+the\s+exception\s+of|which|there\s+(?:is|are|has\s+been|have\s+been))\b"
)
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?;\n]")
_MASK = re.compile(r"x{4,}")

_PRIORITY = {Label.NEGATIVE: 0, Label.UNCERTAIN: 1, Label.POSITIVE: 2}


def _compile(table: Mapping[str, tuple[str, ...]]) -> dict[str, re.Pattern[str]]:
    return {obs: re.compile(r"\b(?:" + "|".join(f"(?:{p})" for p in phrases) + r")") for obs, phrases in table.items()}


_MENTION_RE = _compile(_MENTIONS)
_NORMAL_RE = _compile(_NORMALS)


def mention_pattern(observation: str) -> re.Pattern[str]:
    """The compiled mention phrases of one observation (lower-case text), for other rule-based tools.

    The report normalizer (:mod:`echo_model.data.normalize`) places device clauses with the Support
    Devices phrases, so the two never disagree on what a device is.
    """
    if observation not in _MENTION_RE:
        raise ValueError(f"no mention phrases for {observation!r}; known: {sorted(_MENTION_RE)}")
    return _MENTION_RE[observation]


# ------------------------------------------------------------------------- labelling
def _normalise(text: str) -> str:
    """Lower-case, mask ``XXXX`` as the unknown word ``xxxx``, collapse spaces."""
    text = _MASK.sub(" xxxx ", text.lower())
    return re.sub(r"[ \t\r\f\v]+", " ", text)


def _clauses(text: str) -> Iterable[str]:
    """Sentences, then clauses at contrast words; cues do not cross these boundaries."""
    for sentence in _SENTENCE_SPLIT.split(text):
        start = 0
        for match in _CLAUSE_BOUNDARY.finditer(sentence):
            yield sentence[start : match.start()]
            start = match.start()
        yield sentence[start:]


def _has_cue(pattern: re.Pattern[str], text: str) -> bool:
    return pattern.search(_PSEUDO_NEGATION.sub(" ", text)) is not None


def _classify(clause: str, start: int, end: int, *, normal: bool) -> Label:
    """Label one mention at ``clause[start:end]`` from the cues around it."""
    before, after = _PSEUDO_UNCERTAIN.sub(" ", clause[:end]), clause[start:]
    local = clause[clause.rfind(",", 0, start) + 1 : end]
    if (
        _PRE_UNCERTAIN.search(before)
        or _LOCAL_UNCERTAIN.search(local)
        or _POST_UNCERTAIN.search(clause[end:])
    ):
        return Label.UNCERTAIN
    if normal:
        return Label.NEGATIVE
    if _has_cue(_PRE_NEGATION, before) or _has_cue(_POST_NEGATION, after):
        return Label.NEGATIVE
    return Label.POSITIVE


def _merge(labels: dict[str, Label], observation: str, label: Label) -> None:
    """CheXpert aggregation: positive > uncertain > negative."""
    old = labels.get(observation)
    if old is None or _PRIORITY[label] > _PRIORITY[old]:
        labels[observation] = label


def label_report(text: str) -> dict[str, Label]:
    """Label one free-text report with the 14 CheXpert observations.

    Returns:
        observation name -> :class:`Label` for every observation the report mentions
        (keys are a subset of :data:`OBSERVATIONS`); unmentioned ones are absent.
        "No Finding" is positive when nothing but Support Devices is positive or
        uncertain. A report with no words gets an empty dict.
    """
    if not isinstance(text, str):
        raise TypeError(f"report must be str, got {type(text).__name__}: {text!r}")
    normalised = _normalise(text)
    if not re.search(r"[a-z]", normalised):
        return {}
    labels: dict[str, Label] = {}
    for clause in _clauses(normalised):
        for table, normal in ((_MENTION_RE, False), (_NORMAL_RE, True)):
            for observation, pattern in table.items():
                exclusion = None if normal else _EXCLUSIONS.get(observation)
                if exclusion is not None and exclusion.search(clause):
                    continue
                for match in pattern.finditer(clause):
                    label = _classify(clause, match.start(), match.end(), normal=normal)
                    _merge(labels, observation, label)
    findings = (
        obs
        for obs, label in labels.items()
        if obs != "Support Devices" and label in (Label.POSITIVE, Label.UNCERTAIN)
    )
    if next(findings, None) is None:
        labels["No Finding"] = Label.POSITIVE
    return {obs: labels[obs] for obs in OBSERVATIONS if obs in labels}


def label_reports(texts: Sequence[str]) -> list[dict[str, Label]]:
    """:func:`label_report` for each report, in order."""
    return [label_report(text) for text in texts]
