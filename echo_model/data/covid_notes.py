"""covid_cxr_notes adapter: real chest radiographs whose case notes contain a few report-like sentences.

The folder holds ``records.jsonl`` (one row per image: ``id``, ``image``, ``patientid``, ``view``,
``modality``, ``clinical_notes``, ``license``, ...) and ``images/``. The notes are case narratives
(history, symptoms, labs, treatment, sometimes CT) in which usually one or two sentences describe
the radiograph; only those sentences become the report. Rules (also in ``docs/data.md``):

* **licence** (:func:`licence_decision`): keep only rows whose ``license`` is a Creative Commons
  licence *without* ND (``CC BY``, ``CC BY-SA``, ``CC BY-NC``, ``CC BY-NC-SA``, any version) or
  ``CC0``. Excluded: empty ("none stated": copyright of the source paper), any ``ND`` licence
  (no derivatives), and anything else that is not a recognised licence (e.g. "listed as
  authorized for everyone"). Why an allow-list: a model trained on the rows may be published,
  and an unknown licence string does not grant that;
* **sentences** (:func:`radiograph_sentences`, :func:`keep_sentence`): the image's own note is
  split into sentences (``Presentation:``/``Imaging Notes:``/``Discussion:`` labels are noted and
  removed); a sentence is kept when it names a radiographic finding, anatomy or device, is not
  about another modality only (CT, ultrasound, MRI), is not history/symptoms/labs/treatment/
  outcome or teaching text; under ``Discussion:`` it must name the radiograph. Figure pointers
  ("(arrow)", "Fig. 2") and leading labels ("Chest X-ray:", "Patient 3 -") are removed;
* **sections**: kept sentences with a conclusion phrase ("consistent with", "suggestive of", ...)
  form the impression, the others the findings; a note with no kept sentence is skipped;
* **normalization** (default ``normalize=True``): the sections are rewritten in the normalized form
  ECHO trains on (:mod:`.normalize`, method.md §3.5) and the extracted text is kept in ``raw_report``;
* **split**: by patient, ``int(sha256("covid_cxr_notes|" + patientid)[:8], 16) % 100``: < 70 train,
  < 80 val, else test; the same rule as the folder's own ``split`` field, recomputed so that
  rows without that field still split by patient. Without a patient id the image id is hashed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonl import (
    LoadReport,
    LoadResult,
    absolute_path,
    check_split,
    clean_text,
    parse_row,
    raw_report_text,
    read_rows,
)
from .normalize import normalize_sections
from .records import ImageRef, RecordError, StudyRecord

__all__ = [
    "COVID_RECORDS_FILE",
    "COVID_SOURCE",
    "NoteSections",
    "covid_split",
    "keep_sentence",
    "licence_decision",
    "load_covid_cxr_notes",
    "looks_like_covid_row",
    "map_covid_view",
    "radiograph_sentences",
    "read_covid_cxr_notes",
    "split_note",
    "stable_split",
]

log = logging.getLogger(__name__)

COVID_SOURCE = "covid_cxr_notes"
COVID_RECORDS_FILE = "records.jsonl"
COVID_IMAGES_DIR = "images"
#: Fields a row must have to be recognised as covid_cxr_notes (registry layout detection).
COVID_REQUIRED_FIELDS: frozenset[str] = frozenset({"id", "image", "clinical_notes", "license", "patientid"})


def looks_like_covid_row(row: Any) -> bool:
    """Whether a parsed JSON row has the covid_cxr_notes field set."""
    return isinstance(row, dict) and COVID_REQUIRED_FIELDS <= set(row)


# ----------------------------------------------------------------------------------------- licence

_CC_OPEN = re.compile(r"^CC[ -]BY(?:-NC)?(?:-SA)?(?:[ -]\d(?:\.\d)?)?(?:[ -]INT(?:ERNATIONAL)?)?$")
_CC_ZERO = re.compile(r"^(?:CC0|CC[ -]ZERO)(?:[ -]\d(?:\.\d)?)?$")


def licence_decision(licence: Any) -> str | None:
    """``None`` when a row's licence allows publishing a model trained on it, else the reason it does not.

    >>> licence_decision("CC BY-NC-SA 4.0") is None
    True
    >>> licence_decision("CC BY-NC-ND")
    'licence has no-derivatives (ND)'
    """
    text = " ".join(str(licence).split()).upper() if isinstance(licence, str) else ""
    if not text or text in {"NONE", "NONE STATED", "(NONE STATED)", "UNKNOWN", "N/A"}:
        return "licence none stated"
    if re.search(r"(?<![A-Z])ND(?![A-Z])|NODERIV|NO DERIV", text):
        return "licence has no-derivatives (ND)"
    if _CC_OPEN.match(text) or _CC_ZERO.match(text):
        return None
    return "licence not a recognised open licence"


# ----------------------------------------------------------------------------------------- split


def stable_split(key: str, *, namespace: str, train: int = 70, val: int = 10) -> str:
    """A split that depends only on ``namespace|key``: SHA-256, first 8 hex digits, mod 100.

    Why a hash and not a shuffle: the same patient lands in the same split on every machine and
    for every subset of the data, so adding rows never moves old ones between splits.
    """
    if not (0 <= train and 0 <= val and train + val <= 100):
        raise ValueError(f"train and val percentages must be >= 0 and sum to <= 100, got {train} and {val}")
    h = int(hashlib.sha256(f"{namespace}|{key}".encode()).hexdigest()[:8], 16) % 100
    return "train" if h < train else "val" if h < train + val else "test"


def covid_split(patient_id: str | None, image_id: str) -> str:
    """The covid_cxr_notes split: by patient (70/10/20), by image id when there is no patient id."""
    key = patient_id.strip() if isinstance(patient_id, str) and patient_id.strip() else f"image:{image_id}"
    return stable_split(key, namespace=COVID_SOURCE)


def map_covid_view(view: Any) -> str:
    """``PA`` → ``pa``; ``AP``/``AP Supine``/``AP semi erect`` → ``ap``; ``L`` → ``lateral``; else ``unknown``."""
    text = view.strip().upper() if isinstance(view, str) else ""
    if text == "PA" or text.startswith("PA "):
        return "pa"
    if text == "AP" or text.startswith("AP "):
        return "ap"
    if text in {"L", "LL", "LATERAL"}:
        return "lateral"
    return "unknown"


# ----------------------------------------------------------------------------------------- sentences

_SECTION = re.compile(
    r"(?i)(?<![A-Za-z])(?P<label>presentation|clinical (?:history|presentation)|history|"
    r"imaging (?:notes|findings|examination)|findings|case discussion|discussion|impression|conclusions?)\s*:"
)
_SECTION_KIND = {
    "presentation": "clinical", "clinical history": "clinical",
    "clinical presentation": "clinical", "history": "clinical",
    "imaging notes": "imaging", "imaging findings": "imaging", "imaging examination": "imaging", "findings": "imaging",
    "case discussion": "discussion", "discussion": "discussion",
    "impression": "impression", "conclusion": "impression", "conclusions": "impression",
}
_ABBREV = re.compile(r"(?i)(?:\b(?:fig|figs|e\.g|i\.e|vs|dr|approx|no|st|mr|mrs|ms|al|ca|resp)\.)$")

#: The sentence names the radiograph itself.
_RADIOGRAPH = re.compile(
    r"(?i)x[\s-]?rays?\b|radiogra\w*|radiolog\w*|\bfilms?\b|\bcxrs?\b|postero-?\s?anterior|antero-?\s?posterior"
    r"|\b(?:frontal|lateral|supine|portable|bedside)\s+(?:view|projection|image|study|film)"
) 
_RADIOGRAPH_CS = re.compile(r"\b(?:AP|PA)\b")  # case-sensitive: "AP chest", "PA film"
#: Radiographic findings, anatomy and devices: what a report sentence talks about.
_FINDING = re.compile(
    r"(?i)opaci\w*|consolidat\w*|effusion|pneumothora\w*|infiltrat\w*|ground[\s-]?glass|atelecta\w*"
    r"|cardiomegal\w*|cardiothoracic|cardio-?\s?mediastin\w*|mediastin\w*|\bhil(?:um|ar|a)\b|perihilar"
    r"|costophrenic|diaphragm\w*|bronchogram|air[\s-]?space|airspace|nodul\w*|\bmass(?:es)?\b|cavit\w*"
    r"|lucen\w*|interstiti\w*|reticul\w*|\blungs?\b|pulmonary|pleura\w*|\bhaz[ey]\w*|shadow\w*|densit\w*"
    r"|\bpattern\b|bronchial|thickening|emphysem\w*|hyperinfla\w*|aeration|fibros\w*|fibrotic|o?edema"
    r"|collapse|fissure|trachea\w*|\bheart\b|cardiac|\blobes?\b|\bzones?\b|\bfields?\b|apex|apices|bases?\b"
    r"|\btubes?\b|\blines?\b|catheter|pacemaker|\bETT\b|\bNGT\b|\bCVL\b|\bCVC\b|clips|sternotomy|wires?\b"
    r"|vessel\w*|vascul\w*|\bcyst\w*|bulla\w*|white-?out|\bribs?\b|fractur\w*|osseous|\bbony?\b"
    r"|\blesions?\b|no (?:significant|acute) (?:findings|abnormalit\w*)"
)
#: Change and normality words: report-like, but also common in clinical narrative ("progressive
#: respiratory failure"), so on their own they count only next to a radiograph mention or
#: under an imaging label.
_WEAK_FINDING = re.compile(
    r"(?i)unremarkable|\bnormal\b|\bclear\b|resol\w*|regress\w*|improv\w*|worsen\w*|progress\w*"
    r"|unchanged|abnormalit\w*"
)
_NORMAL_ALONE = re.compile(r"(?i)^(?:normal|unremarkable)(?:\s+(?:appearances?|study|chest|radiograph))?\s*\.?$")
#: Another modality: a sentence about CT/US/MRI only is not about this radiograph.
_OTHER_MODALITY = re.compile(
    r"\bCT\b|\bHRCT\b|(?i:computed\s+tomograph\w*|\btomograph\w*|ultrasound|ultrasonogra\w*|sonogra\w*"
    r"|\bMRI\b|magnetic resonance|\bPET\b|echocardiogra\w*|\bscan\b)"
)
#: History, symptoms, examination, labs, treatment and outcome.
_CLINICAL = re.compile(
    r"(?i)year[\s-]?old|\byears?\s+old|\bhistory\b|\bpresent(?:ed|s|ing)\b|\badmitted\b|\bfever|cough|dyspn\w*"
    r"|\bpain\b|symptom\w*|sore throat|myalgi\w*|anosmi\w*|diarrh\w*|vomit\w*|nausea|malaise|fatigue"
    r"|laborator\w*|\blabs?\b|\bblood\b|serum|\bCRP\b|c-?\s?reactive|procalcitonin|lymphop\w*|leuk\w*"
    r"|neutroph\w*|white (?:blood|cell)|\b(?:RT-?)?PCR\b|swab|serolog\w*|culture|therap\w*"
    r"|antibiot\w*|steroid\w*|antiretroviral|medication|intubat\w*|extubat\w*|ventilat\w*|\bICU\b"
    r"|intensive care|discharg\w*|\bdied\b|death|passed away|saturation|\bSpO2\b|oxygen|temperature"
    r"|tachyp\w*|hypox\w*|smok\w*|alcohol|physical exam\w*|examination|crackles|auscultat\w*|biops\w*"
    r"|histolog\w*|patholog\w*|surgery|transplant\w*|\bHIV\b|travel\w*|\bcontact\b|quarantine|outpatient"
    r"|referred|complain\w*|denied|recover\w*|tested|positive for|negative for|diagnosed with|resection"
    r"|metasta\w*|\b(?:19|20)\d\d\b|crepitation\w*|air entry"
)
#: Tests, outcomes and treatment decisions: dropped even in a sentence that names the radiograph
#: ("... and a nasopharyngeal swab for COVID-19 was positive").
_STRONG_CLINICAL = re.compile(
    r"(?i)swab|\b(?:RT-?)?PCR\b|laborator\w*|\bCRP\b|c-?\s?reactive|serolog\w*|culture|\bserum\b|tested"
    r"|positive for|negative for|passed away|\bdied\b|\bdeath\b|medication|commenced|hematolog\w*|biops\w*"
    r"|treated with|emergency"
)
#: Teaching or hypothetical text, not a description of this image.
_TEACHING = re.compile(
    r"(?i)\bif\b|differential|literature|this case|\bcases\b|\bshould\b|recommend\w*|\bwe\b|\bone might\b"
    r"|is one of|typically|once very common|advised|rule out|\bwill\b|sometimes"
)
#: A conclusion phrase: the sentence interprets rather than describes.
_CONCLUSION = re.compile(
    r"(?i)consistent with|suggestive of|\bsuggest(?:s|ing)?\b|compatible with|in keeping with|in line with"
    r"|indicat(?:es|ing|ive)|diagnosed as|typical (?:for|of)|concerning for|suspicious for|\blikely\b"
    r"|represent\w*|raising suspicion|characteristic of|(?<![-\w])appearance of|\bimpression\b|\bconclusion\b"
)
_FIGURE_PAREN = re.compile(
    r"\s*\((?:[^()]*(?i:arrow|asterisk|fig|image|panel|circle|not shown|star)[^()]*|\s*[+*#]?\s*(?:in\s+)?[A-Da-d]?\s*)\)"
)
_FIGURE_REF = re.compile(r"(?i)\b(?:image|fig(?:ure)?\.?)\s*\d+[A-Za-z]?\b")
_PATIENT_PREFIX = re.compile(r"^(?i:patient)\s+\d+\s*[-–?:,]\s*")
_MODALITY_PREFIX = re.compile(
    r"^(?i:(?:(?:AP|PA|frontal|portable|bedside|supine)\s+)*(?:chest\s+)?(?:x[\s-]?ray|radiograph(?:y)?|cxr)"
    r"(?:\s*\([^)]*\))?)\s*:\s*"
)


@dataclass(frozen=True)
class NoteSections:
    """Findings and impression extracted from one clinical note (either may be ``""``)."""

    findings: str
    impression: str


def split_note(note: str) -> list[tuple[str | None, str]]:
    """Split a note into ``(section kind, sentence)`` pairs.

    Section kinds come from the Radiopaedia/Eurorad labels (``Presentation:``, ``Imaging Notes:``,
    ``Discussion:`` ...): ``clinical``, ``imaging``, ``discussion``, ``impression`` or ``None``
    (unlabelled). Sentences end at ``.``/``!`` followed by space, or at ``.`` glued to a capital
    ("apex.There"), except after abbreviations; ``?`` does not end a sentence because the source's
    encoding turned ``°`` and ``µ`` into ``?``.
    """
    text = clean_text(note.replace("\ufffd", " "))
    pieces: list[tuple[str | None, str]] = []
    pos, kind = 0, None
    for match in _SECTION.finditer(text):
        pieces.append((kind, text[pos:match.start()]))
        kind, pos = _SECTION_KIND[match["label"].lower()], match.end()
    pieces.append((kind, text[pos:]))
    out: list[tuple[str | None, str]] = []
    for section, chunk in pieces:
        chunk = re.sub(r"(?:\s*\.){2,}", ".", chunk)  # ".." and ". ." from the source's joins
        for sentence in _sentences(chunk):
            out.append((section, sentence))
    return out


def _sentences(chunk: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for match in re.finditer(r"[.!](?=\s+\S)|\.(?=[A-Z][a-z])", chunk):
        end = match.end()
        if _ABBREV.search(chunk[start:end]):
            continue
        parts.append(chunk[start:end])
        start = end
    parts.append(chunk[start:])
    return [p.strip(" ;:,") for p in (p.strip() for p in parts) if p.strip(" .;:,")]


def _tidy(sentence: str) -> str:
    """Drop figure pointers and labels; capitalise; end with a full stop."""
    s = _FIGURE_PAREN.sub("", sentence)
    s = _FIGURE_REF.sub("", s)
    s = _PATIENT_PREFIX.sub("", s)
    s = _MODALITY_PREFIX.sub("", s)
    s = clean_text(re.sub(r"\s+([.,;:])", r"\1", s)).strip(" ,;:")
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    return s if s.endswith((".", "!")) else s + "."


def keep_sentence(sentence: str, section: str | None) -> bool:
    """The sentence filter (see the module docstring); exposed for tests and docs.

    A sentence is kept when all hold:

    1. it names a finding, anatomy or a device (:data:`_FINDING`); or only a change/normality word
       (:data:`_WEAK_FINDING`) but it also names the radiograph or sits under an imaging label;
       or it is just "Normal." / "Normal appearances.";
    2. it does not name another modality (CT, ultrasound, MRI, ...) unless it names the radiograph;
    3. under a ``Discussion:`` label it names the radiograph (discussions generalise);
    4. it has no history/symptom/treatment word unless it names the radiograph, and never a test,
       outcome or treatment decision (swab, PCR, labs, died, ...);
    5. it is not teaching or hypothetical text ("if", "differential", "this case", ...), except
       under an ``Impression:`` label.
    """
    names_radiograph = bool(_RADIOGRAPH.search(sentence) or _RADIOGRAPH_CS.search(sentence))
    strong = bool(_FINDING.search(sentence))
    weak = bool(_WEAK_FINDING.search(sentence)) and (names_radiograph or section in ("imaging", "impression"))
    if not (strong or weak or _NORMAL_ALONE.match(sentence)):
        return False
    if _OTHER_MODALITY.search(sentence) and not names_radiograph:
        return False
    if section == "discussion" and not names_radiograph:
        return False
    if _CLINICAL.search(sentence) and not names_radiograph:
        return False
    if _STRONG_CLINICAL.search(sentence):
        return False
    return not (_TEACHING.search(sentence) and section != "impression")


def radiograph_sentences(note: str) -> NoteSections:
    """The sentences of ``note`` that describe the radiograph, as findings and impression.

    Conclusion-like sentences (and those under an ``Impression:`` label) become the impression;
    the rest, in order, the findings. Exact repeats are dropped.
    """
    findings: list[str] = []
    impression: list[str] = []
    seen: set[str] = set()
    for section, sentence in split_note(note):
        if not keep_sentence(sentence, section):
            continue
        tidy = _tidy(sentence)
        key = re.sub(r"[^a-z0-9]+", " ", tidy.lower()).strip()
        if not key or key in seen:
            continue
        seen.add(key)
        (impression if section == "impression" or _CONCLUSION.search(tidy) else findings).append(tidy)
    return NoteSections(findings=" ".join(findings), impression=" ".join(impression))


# ----------------------------------------------------------------------------------------- adapter


def read_covid_cxr_notes(folder: str | Path, *, split: str | None = None, normalize: bool = True) -> LoadResult:
    """Read covid_cxr_notes studies with a :class:`LoadReport`; see :func:`load_covid_cxr_notes`."""
    folder = Path(folder)
    check_split(split)
    path = folder / COVID_RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"covid_cxr_notes folder {str(folder)!r} has no {COVID_RECORDS_FILE}")
    report = LoadReport(source=COVID_SOURCE, path=str(folder))
    seen: dict[str, int] = {}
    records = read_rows(
        path,
        lambda raw, line: _row_to_record(raw, line, folder=folder, report=report, seen=seen, normalize=normalize),
        report=report, split=split, desc=COVID_SOURCE, unit="image",
    )
    if normalize:
        report.notes.append(f"{len(records)} reports normalized (method.md §3.5); the source text is in raw_report")
    log.info(report.summary())
    return LoadResult(records, report)


def _row_to_record(
    raw: str, line: int, *, folder: Path, report: LoadReport, seen: dict[str, int], normalize: bool = True
) -> StudyRecord | None:
    row, rid = parse_row(raw, line, seen)
    image = row.get("image")
    if not isinstance(image, str) or not image:
        raise RecordError(rid, "image", f"must be a non-empty file name, got {image!r}", line=line)
    notes = row.get("clinical_notes")
    if notes is not None and not isinstance(notes, str):
        raise RecordError(rid, "clinical_notes", f"must be a string, got {type(notes).__name__}", line=line)
    modality = row.get("modality")
    if isinstance(modality, str) and modality.strip() and modality.strip().lower() not in ("x-ray", "xray", "cr", "dx"):
        report.skip(f"modality is not X-ray ({modality})")
        return None
    why_not = licence_decision(row.get("license"))
    if why_not is not None:
        report.skip(why_not)
        return None
    if not clean_text(notes):
        report.skip("no clinical notes")
        return None
    sections = radiograph_sentences(notes or "")
    if not (sections.findings or sections.impression):
        report.skip("no sentence describes the radiograph")
        return None
    image_path = folder / COVID_IMAGES_DIR / image
    if not image_path.is_file():
        report.images_missing += 1
        report.skip("image file missing")
        return None
    report.images_found += 1
    patient = row.get("patientid")
    findings, impression, raw_report = sections.findings, sections.impression, None
    if normalize:
        raw_report = raw_report_text(findings, impression)
        normalized = normalize_sections(findings, impression)
        findings, impression = normalized.findings, normalized.impression
    return StudyRecord(
        id=rid, findings=findings, impression=impression, raw_report=raw_report,
        images=(ImageRef(path=absolute_path(image_path), view=map_covid_view(row.get("view"))),),
        indication=None, language="en", source=COVID_SOURCE,
        split=covid_split(patient if isinstance(patient, str) else None, rid),
        licence=clean_text(row.get("license")),
    )


def load_covid_cxr_notes(folder: str | Path, *, split: str | None = None, normalize: bool = True) -> list[StudyRecord]:
    """Load covid_cxr_notes as one study per image, keeping only publishable-licence rows.

    Each record has one image (absolute path under ``folder/images``), findings/impression taken
    from the radiograph sentences of that image's own note, source ``covid_cxr_notes``, the row's
    licence string, and a patient-level split. Rows are skipped, and counted by reason, for an
    excluded licence, an empty note, a note with no radiograph sentence, or a missing image.

    Args:
        folder: the folder holding ``records.jsonl`` and ``images/``.
        split: keep only this split; ``None`` keeps all.
        normalize: rewrite the extracted report in the normalized form (method.md §3.5), keeping the
            extracted text in ``raw_report``; ``False`` keeps the extracted sentences as they are.

    Raises:
        RecordFileError: a row with a wrong type or a duplicate id (message names file, line, field).
        FileNotFoundError: ``folder/records.jsonl`` does not exist.
    """
    return read_covid_cxr_notes(folder, split=split, normalize=normalize).records
