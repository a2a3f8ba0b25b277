"""Report normalization (method.md §3.5): one explicit statement per anatomical region, in a fixed order.

ECHO is trained on *normalized* reports: every predefined anatomical region is addressed by a positive
or a negative statement, always in the same order, followed by the Impression (paper §3.5, Table 3:
without normalization every training stage collapses). Radiologists usually omit pertinent normals
("lungs clear" and nothing about the hila), so a raw report leaves many regions unmentioned; the
normalizer fills those with the region's normal statement and re-orders what the report does say.

Rules (also in ``docs/data.md``, "Report normalization"):

1. **Clean.** Whitespace collapsed; IU X-ray's de-identification mask ``XXXX`` is removed (the word; the
   whole clause when removing it leaves a broken phrase such as "no of" or an empty clause); doubled full
   stops collapsed. Counts go to :attr:`NormalizedReport.masks_removed` / ``clauses_dropped_for_mask``.
2. **Split.** Findings into sentences (``.``, ``!``, ``?``, ``;``, new line; not a decimal point), a
   sentence into clauses only at ``,``/``and``/``but``/``however`` followed by a new subject ("the lungs
   are", "there is", "no ...") and only when :func:`echo_model.labeler.label_report` reads the pieces
   exactly as it reads the whole sentence (so a negation never loses its scope).
3. **Assign.** Each clause goes to the first region of :data:`REGIONS` whose anatomy or finding
   vocabulary it names, a device clause to the devices (devices reuse the labeler's Support Devices
   phrases); a clause *covers* every region it names ("Heart size and mediastinal contours are normal"
   covers the mediastinum and the heart; "Pacer leads in the right ventricle" the devices and the heart). A
   clause that names no region goes to the ``other`` bucket, placed after the regions; nothing is dropped.
   Clauses move **verbatim** (only the first letter is capitalised and a full stop added), so laterality,
   size, severity and negation survive.
4. **Fill.** A region no findings clause covers gets its normal statement (``unmentioned="normal"``), or
   nothing (``"omit"``). A normal statement (or a part of it) is never added when it would contradict the
   source: when the labeler reads it as negative for, or the region table says it denies, an observation
   that the source report (findings or impression) labels positive or uncertain; nor when a non-negative
   impression clause names the region. Lines, tubes and devices have no normal statement: they are
   mentioned only when present.
5. **Impression.** The source's impression, cleaned. Only when it is empty is one derived: the positive
   or uncertain findings clauses, else "No acute cardiopulmonary abnormality."
   (:attr:`NormalizedReport.impression_derived`).
6. ``drop_priors=True`` removes comparison statements a model without the prior study cannot know
   ("unchanged", "again seen", "compared with", "stable", "prior", ...): a clause that is only a comparison
   is dropped, a clause that also states a finding loses the comparison words ("Stable cardiomegaly" ->
   "Cardiomegaly"). Off by default, because it is the only rule that edits a finding's words.

Chinese reports (``language="zh"``) are passed through cleaned in the ``所见：… 结论：…`` template.
The normalizer is deterministic and idempotent: ``normalize(normalize(x)) == normalize(x)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from echo_model.labeler import Label, label_report, mention_pattern

from .report_text import format_report, parse_report

__all__ = [
    "DEFAULT_IMPRESSION",
    "OTHER_REGION",
    "REGIONS",
    "REGION_NAMES",
    "NormalizeConfig",
    "NormalizedReport",
    "Region",
    "added_statement_conflicts",
    "impression_regions",
    "normalize_report",
    "normalize_sections",
    "region_of",
    "split_regions",
]

Unmentioned = Literal["normal", "omit"]

DEFAULT_IMPRESSION = "No acute cardiopulmonary abnormality."
#: Key of the bucket for clauses that fit no region; placed after the regions.
OTHER_REGION = "other"

_NON_FINDING = {"No Finding", "Support Devices"}
_LUNG_FINDINGS = frozenset({"Lung Opacity", "Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis", "Edema"})


@dataclass(frozen=True)
class Region:
    """One anatomical region of the normalized report (method.md §3.5).

    Attributes:
        key: short identifier (``"hila"``).
        name: the region in words, for warnings and docs ("hila").
        normal: the normal statement added when the report says nothing about the region ("" = none).
        parts: the normal statement in parts, each with the CheXpert observations it denies beyond what
            the labeler reads from it; a part that would contradict the source is left out.
        vocabulary: regular expression (lower case) of the anatomy and finding words that place a clause here.
    """

    key: str
    name: str
    normal: str
    parts: tuple[tuple[str, frozenset[str]], ...]
    vocabulary: str

    @property
    def pattern(self) -> re.Pattern[str]:
        return _REGION_RE[self.key]


def _parts(*items: tuple[str, Sequence[str]]) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((text, frozenset(denies)) for text, denies in items)


_DEVICES = mention_pattern("Support Devices").pattern

#: The regions in report order (method.md §3.5), with their normal statements.
REGIONS: tuple[Region, ...] = (
    Region(
        "thorax", "thorax (symmetry)", "The thorax is symmetric.",
        _parts(("The thorax is symmetric.", ())),
        r"\bthorax\b|\bthoracic\b(?!\s+(?:spine|aort\w*|vertebra\w*|kyphos\w*|scolios\w*|curvature|inlet))"
        r"|chest\s+wall|soft[\s-]tissues?|\brotat\w*|\bsymmetr\w*|\basymmetr\w*|body\s+habitus|\bbreasts?\b"
        r"|\baxill\w*|subcutaneous|mastectom\w*|\bnipples?\b|pectus|\bobes\w*",
    ),
    Region(
        "mediastinum", "mediastinum and trachea", "The mediastinum and trachea are midline.",
        _parts(("The mediastinum and trachea are midline.", ("Enlarged Cardiomediastinum",))),
        r"mediastin\w*|\btrache\w*|paratracheal|\baort\w*|\bthyroid|goit\w*|vena\s+cava|\bsvc\b|azygos"
        r"|atherosclero\w*|\besophag\w*|hiatal|hiatus|aortopulmonary|\bap\s+window",
    ),
    Region(
        "lungs", "lung fields", "The lungs are clear. There is no pneumothorax or pleural effusion.",
        _parts(
            ("The lungs are clear.", _LUNG_FINDINGS),
            ("There is no pneumothorax.", ("Pneumothorax",)),
            ("There is no pleural effusion.", ("Pleural Effusion",)),
        ),
        r"\blungs?\b|\bpulmonary(?!\s+(?:vascul\w*|vessels?|arter\w*|vein\w*|venous|edema|oedema|congestion"
        r"|hypertension|trunk))|\bpleura\w*|pneumothora\w*|effusion|opaci\w*|consolidat\w*|infiltrat\w*"
        r"|air[\s-]?space|atelecta\w*|granulom\w*|nodul\w*|\bmass(?:es)?\b|\blesions?\b|\bscar\w*|fibros\w*"
        r"|fibrotic|emphysem\w*|hyperinfla\w*|hyperexpan\w*|overinfla\w*|\bcopd\b|interstiti\w*|reticul\w*"
        r"|pneumoni\w*|infecti\w*|densit\w*|\blob(?:e|es|ar)\b|\bapex\b|\bapices\b|apical|\bbases?\b|basilar"
        r"|bibasilar|lingul\w*|fissure\w*|bronch\w*|\bhaz[ey]\w*|lucen\w*|cavit\w*|bullae?\b|bullous"
        r"|\bvolumes?\b|aerat\w*|\bzones?\b|parenchym\w*|calcifi\w*|ground[\s-]glass|airway\w*|hyperlucen\w*"
        r"|\bblebs?\b|\bcysts?\b|\bcystic\b",
    ),
    Region(
        "vasculature", "pulmonary vasculature", "The pulmonary vasculature is normal.",
        _parts(("The pulmonary vasculature is normal.", ("Edema",))),
        r"vascul\w*|\bvessels?\b|pulmonary\s+(?:arter\w*|vein\w*|venous|trunk|hypertension)|\bedema\b|oedema"
        r"|congest\w*|kerley|cephaliz\w*|engorge\w*|\bchf\b|heart\s+failure|fluid\s+overload"
        # "pulmonary" with its noun gone (IU's mask: "Pulmonary XXXX are prominent") is read as the vessels
        r"|\bpulmonary(?=\s*(?:[,.;]|$|(?:are|is|were|was|appears?|and|or|with|without|in|at|on)\b))",
    ),
    Region(
        "heart", "cardiac silhouette", "The cardiac silhouette is normal in size.",
        _parts(("The cardiac silhouette is normal in size.", ("Cardiomegaly",))),
        r"\bheart\b|\bcardi(?!opulmonary)\w*|pericardi\w*|ventric\w*|\batri(?:um|al|a)\b|\bcti\b|\bcardiomegaly\b",
    ),
    Region(
        "hila", "hila", "The hila are not enlarged.",
        _parts(("The hila are not enlarged.", ())),
        r"\bhil(?:um|a|ar|i|us)\b|perihilar|hilum",
    ),
    Region(
        "diaphragm", "diaphragms and costophrenic angles",
        "The diaphragms are normal. The costophrenic angles are sharp.",
        _parts(("The diaphragms are normal.", ()), ("The costophrenic angles are sharp.", ("Pleural Effusion",))),
        r"diaphragm\w*|costophrenic|\bcp\s+angles?|\bsulc(?:us|i)\b|\bfree\s+air|pneumoperitoneum"
        r"|subdiaphragm\w*|\bbowel\b|\bstomach\b|\bgastric\s+bubble|\babdom\w*|\bcolon\w*|\bliver\b|\bspleen",
    ),
    Region(
        "bones", "osseous structures", "There is no acute osseous abnormality.",
        _parts(("There is no acute osseous abnormality.", ("Fracture",))),
        r"osse\w*|\bbon(?:e|es|y)\b|skelet\w*|\bribs?\b|\bspin(?:e|al)\b|vertebra\w*|scolios\w*|kyphos\w*"
        r"|kyphotic|lordo\w*|spondyl\w*|\bosteo\w*|fractur\w*|\bfx\b|clavic\w*|scapul\w*|humer\w*|shoulder\w*"
        r"|\bstern(?:um|al)\b|degenerative|arthrit\w*|arthropath\w*|\bsclero(?:sis|tic)\b|\blytic\b"
        r"|thoracolumbar|\bdiss?h?\b|\bjoints?\b|\bcervical\b|\bdeformit\w*|\bcortical\b|\bacromio\w*"
        r"|glenohumeral|\bthoracic\s+(?:spine|vertebra\w*|kyphos\w*|scolios\w*|curvature)|\bcurvature",
    ),
    Region(
        "devices", "lines, tubes and devices", "",
        (),
        _DEVICES + r"|sternotom\w*|\bsurgical\b|post-?\s?operative|\bwires?\b|cholecystectom\w*|\bpicc\b"
        r"|\bvalve\w*|\bcabg\b|bypass|\bgraft\w*|\bleads?\b|\bprosthe\w*|\bforeign\s+bod\w*|\bmetallic\b",
    ),
)
REGION_NAMES: tuple[str, ...] = tuple(r.key for r in REGIONS)
_REGION_RE: dict[str, re.Pattern[str]] = {r.key: re.compile(r.vocabulary) for r in REGIONS}
_REGION_BY_KEY: dict[str, Region] = {r.key: r for r in REGIONS}


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NormalizeConfig:
    """How to normalize (method.md §3.5).

    Attributes:
        unmentioned: ``"normal"`` adds each unmentioned region's normal statement (radiologists omit
            pertinent normals; the model should state them); ``"omit"`` leaves such regions out.
        drop_priors: remove comparison statements ("unchanged", "compared with", "stable", "prior", ...).
        language: ``"en"`` (full normalization) or ``"zh"`` (cleaned pass-through in the Chinese template).
    """

    unmentioned: Unmentioned = "normal"
    drop_priors: bool = False
    language: Literal["en", "zh"] = "en"

    def __post_init__(self) -> None:
        if self.unmentioned not in ("normal", "omit"):
            raise ValueError(f"unmentioned must be 'normal' or 'omit', got {self.unmentioned!r}")
        if not isinstance(self.drop_priors, bool):
            raise ValueError(f"drop_priors must be a bool, got {self.drop_priors!r}")  # noqa: TRY004 - config error
        if self.language not in ("en", "zh"):
            raise ValueError(f"language must be 'en' or 'zh', got {self.language!r}")


@dataclass(frozen=True)
class NormalizedReport:
    """A normalized report and what the normalizer did to get it.

    Attributes:
        findings: the normalized findings (region statements in :data:`REGIONS` order, then ``other``).
        impression: the cleaned source impression, or a derived one (see ``impression_derived``).
        language: ``"en"`` or ``"zh"``.
        regions: region key -> its statements, in order (``"other"`` last; empty regions absent).
        added: the normal statements added for unmentioned regions, by region key.
        suppressed: region keys whose normal statement (or a part of it) was withheld because it would
            contradict the source.
        impression_derived: the source had no impression and one was derived.
        masks_removed: ``XXXX`` masks removed; ``clauses_dropped_for_mask``: clauses they made meaningless.
        priors_dropped: comparison clauses removed or edited by ``drop_priors``.
    """

    findings: str
    impression: str
    language: str = "en"
    regions: dict[str, list[str]] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)
    suppressed: tuple[str, ...] = ()
    impression_derived: bool = False
    masks_removed: int = 0
    clauses_dropped_for_mask: int = 0
    priors_dropped: int = 0

    @property
    def text(self) -> str:
        """The report in the model's format, ``Findings: … Impression: …`` (``所见：… 结论：…``)."""
        return format_report(self.findings, self.impression, lang="zh" if self.language == "zh" else "en")

    def to_dict(self) -> dict:
        """JSON-ready summary (the CLI's JSONL output)."""
        return {
            "findings": self.findings, "impression": self.impression, "report": self.text,
            "impression_derived": self.impression_derived, "masks_removed": self.masks_removed,
            "clauses_dropped_for_mask": self.clauses_dropped_for_mask, "priors_dropped": self.priors_dropped,
            "added": dict(self.added), "suppressed": list(self.suppressed),
        }


# ------------------------------------------------------------------------------------------ cleaning
# The mask, also glued to digits or letters ("4XXXX", "XXXXPM"); whole tokens so "XXXXPM" leaves no "PM".
_MASK = re.compile(r"[\w'-]*[Xx]{4,}[\w']*")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\.(?=[A-Z][a-z])|[;\n]")
_FUNCTION = r"(?:a|an|the|no|of|in|on|at|to|for|with|by|from|and|or|is|are|was|were|without|any|this|these|those)"
_AFTER_FUNCTION = r"(?:of|in|on|at|to|for|with|by|from|and|or|is|are|was|were)"
_BROKEN = re.compile(
    rf"(?i)\b{_FUNCTION}\s+(?:{_AFTER_FUNCTION}\b|[,.:]|$)|^\s*(?:{_AFTER_FUNCTION}|and|or)\b|^\W*$"
)
_PRIOR = re.compile(
    r"(?i)\b(?:unchanged|again\s+(?:seen|noted|demonstrated|identified|visualized)|compar(?:ed|ison|ing)"
    r"|stable|stably|prior|previous(?:ly)?|interval(?:ly)?|since|redemonstrat\w*|persist\w*|no\s+change"
    r"|not\s+changed|(?:has|have)\s+(?:not\s+)?changed|re-?demonstrated|improv\w*|worsen\w*|increas\w*\s+since"
    r"|decreas\w*\s+since|new(?:ly)?\b|resolv\w*|recent)\b"
)
_PRIOR_STRIP = re.compile(
    r"(?i)(?:,?\s*(?:(?:which|that)\s+(?:is|are)\s+)?(?:unchanged|stable|stably|again\s+(?:seen|noted)|(?:is|are)\s+"
    r"(?:unchanged|stable|again\s+(?:seen|noted)))(?:\s+(?:from|since|compared\s+(?:to|with))\s+(?:the\s+)?"
    r"(?:prior|previous)(?:\s+(?:study|exam\w*|radiograph|film|x-?ray|examination))?)?)"
    r"|(?:,?\s*(?:when\s+)?(?:compared|in\s+comparison)\s+(?:to|with)\s+(?:the\s+)?(?:prior|previous)"
    r"(?:\s+(?:study|exam\w*|radiograph|film|x-?ray|examination))?)"
    r"|(?:,?\s*(?:from|since|than\s+on|than)\s+(?:the\s+)?(?:prior|previous)(?:\s+(?:study|exam\w*|radiograph"
    r"|film|x-?ray|examination))?)"
)
# A mask that ended a noun phrase leaves a dangling modifier ("Prominent pulmonary XXXX").
_DANGLING = re.compile(
    r"(?i)\b\w+(?:al|ary|ic|ous|ar|ive|ed|ent|ant|ful|less|ile|ing)\s+[Xx]{4,}\s*(?:[,.;:]|$)"
)
_NEGATIVE_WORD = re.compile(r"(?i)\b(?:no|not|normal|clear|unremarkable|negative|without|intact|sharp|midline)\b")


# A section header inside a section ("... IMPRESSION: ...") would make the output ambiguous.
_EMBEDDED_HEADER = re.compile(r"(?i)(?<![A-Za-z])(?:findings?|impressions?)\s*[:：]|(?:所见|结论)\s*[:：]")


def _collapse(text: str) -> str:
    text = " ".join(text.split())
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    text = re.sub(r"([.!?])(?:\s*\.)+", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    return text.strip()


def _sentences(text: str) -> list[str]:
    """Split at sentence ends (not a decimal point); each piece stripped of its end mark and outer commas."""
    out: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()]
        start = match.end()
        out.append(piece)
    out.append(text[start:])
    return [s for s in (p.strip().rstrip(".!?;").strip(" ,:") for p in out) if re.search(r"\w", s)]


def _sentence(clause: str) -> str:
    """A clause as an output sentence: first letter capitalised, one full stop at the end."""
    clause = clause.strip().strip(" ,:;-")
    if not clause:
        return ""
    clause = clause[0].upper() + clause[1:]
    return clause if clause.endswith((".", "!", "?")) else clause + "."


def _remove_masks(sentence: str) -> tuple[str, int, bool]:
    """Drop ``XXXX`` masks; returns ``(text, masks removed, clause made meaningless)``."""
    count = len(_MASK.findall(sentence))
    if not count:
        return sentence, 0, False
    cleaned = _collapse(_MASK.sub(" ", sentence)).strip(" ,")
    # "changes of the XXXX and spine" -> "changes of the spine": the conjunction that joined the mask goes too
    cleaned = re.sub(r"(?i)\b(the|a|an|of|in|on|at|with|from|to)\s+(?:and|or)\s+", r"\1 ", cleaned)
    broken = not cleaned or len(re.findall(r"[A-Za-z]+", cleaned)) < 2
    if not broken and (_BROKEN.search(cleaned) or _DANGLING.search(sentence)):
        # a broken phrase is dropped, unless the clause reports something on a region ("degenerative changes
        # of the spine", "mild blunting of right costophrenic"): dropping it could let a normal statement
        # contradict it; a negative or region-less clause without its mask says nothing reliable
        broken = not _region_hits(cleaned.lower()) or _NEGATIVE_WORD.search(cleaned) is not None
    before, after = _labels(sentence), _labels(cleaned)
    stated = {o for o, lab in before.items() if lab is not Label.NEGATIVE}
    if broken and stated:
        broken = False  # never drop a finding or a device: keep the clause without the mask
    elif not stated and after != before:
        broken = True  # the mask's removal joined words into a new mention ("mediastinal ... prominent")
    return cleaned, count, broken


# ------------------------------------------------------------------------------------------ clauses
_SPLIT_POINT = re.compile(r"(?i)\s*(?:[,;]\s*(?:and|but)?|\s(?:and|but|however|whereas))\s+(?=\S)")
_NEW_SUBJECT = re.compile(
    r"(?i)^(?:there\s+(?:is|are|has|have)\b|no\b|the\s+\w+|(?:\w+[\s-]+){0,4}?\w+\s+(?:is|are|appears?|remains?"
    r"|demonstrates?|shows?|measures?|has|have|was|were)\b)"
)


_PREDICATE = re.compile(
    r"(?i)\b(?:is|are|was|were|appears?|remains?|demonstrat\w*|shows?|seen|noted|present|identified|no|not"
    r"|normal|clear|unremarkable|intact|within|without|stable|unchanged|enlarged|there|has|have)\b"
)


def _complete(left: str) -> bool:
    """A clause that can stand alone: it has a predicate, or is a noun phrase of 4+ words ("Severe
    degenerative changes of the spine"), not a bare subject list ("Heart, mediastinum")."""
    return _PREDICATE.search(left) is not None or len(re.findall(r"[A-Za-z]+", left)) >= 4


def _labels(text: str) -> dict[str, Label]:
    return {k: v for k, v in label_report(text).items() if k != "No Finding"}


def _region_hits(clause: str) -> list[str]:
    low = clause.lower()
    return [r.key for r in REGIONS if r.pattern.search(low)]


def _clauses(sentence: str) -> list[str]:
    """Split one sentence into clauses, only where each piece starts a new subject and names a region, and
    only when the labeler reads the pieces as it reads the sentence (negation keeps its scope)."""
    pieces: list[str] = []
    start = 0
    for match in _SPLIT_POINT.finditer(sentence):
        left, right = sentence[start : match.start()], sentence[match.end() :]
        if _NEW_SUBJECT.match(right) and _complete(left) and _region_hits(left) and _region_hits(right.split(",")[0]):
            pieces.append(left)
            start = match.end()
    pieces.append(sentence[start:])
    pieces = [p.strip(" ,") for p in pieces if p.strip(" ,")]
    if len(pieces) < 2:
        return [sentence]
    whole = _labels(sentence)
    merged: dict[str, Label] = {}
    for piece in pieces:
        for obs, lab in _labels(piece).items():
            if obs not in merged or _rank(lab) > _rank(merged[obs]):
                merged[obs] = lab
    return pieces if merged == whole else [sentence]


def _rank(label: Label) -> int:
    return {Label.NEGATIVE: 0, Label.UNCERTAIN: 1, Label.POSITIVE: 2}[label]


def region_of(clause: str) -> tuple[str, tuple[str, ...]]:
    """``(placement region, covered regions)`` of one clause: the first region of :data:`REGIONS` whose
    vocabulary the clause names, and every region it names; ``("other", ())`` when it names none."""
    hits = _region_hits(clause)
    if "devices" in hits:  # a device clause describes the device, not the anatomy it lies in
        return "devices", ("devices",)
    if not hits:
        return OTHER_REGION, ()
    return hits[0], tuple(hits)


def _drop_prior(clause: str) -> str | None:
    """``drop_priors``: ``None`` drops the clause, else the clause without its comparison words."""
    if not _PRIOR.search(clause):
        return clause
    labels = _labels(clause)
    findings = [o for o, lab in labels.items() if lab in (Label.POSITIVE, Label.UNCERTAIN)]
    if not findings and not _NEGATIVE_WORD.search(_PRIOR.sub(" ", clause)):
        return None
    stripped = _collapse(_PRIOR_STRIP.sub("", clause)).strip(" ,")
    stripped = re.sub(r"(?i)^(?:is|are|and)\s+", "", stripped)
    if not re.search(r"[A-Za-z]{3,}", stripped):
        return None
    if _labels(stripped) != labels:  # the edit changed what the clause says: keep it verbatim
        return clause
    return stripped


@dataclass
class _Counts:
    masks: int = 0
    mask_drops: int = 0
    priors: int = 0


def _clean_clauses(text: str, config: NormalizeConfig, counts: _Counts) -> list[str]:
    """Text -> cleaned output sentences (one per clause), in source order."""
    out: list[str] = []
    text = _EMBEDDED_HEADER.sub(". ", text)
    for raw in _sentences(_collapse(text)):
        sentence, masks, broken = _remove_masks(raw)
        counts.masks += masks
        if broken:
            counts.mask_drops += 1
            continue
        for clause in _clauses(sentence):
            if config.drop_priors:
                kept = _drop_prior(clause)
                if kept != clause:
                    counts.priors += 1
                if kept is None:
                    continue
                clause = kept
            out.append(_sentence(clause))
    return [c for c in out if c]


# --------------------------------------------------------------------------------------- normalizer
def _source_findings(labels: dict[str, Label]) -> set[str]:
    return {o for o, lab in labels.items() if lab in (Label.POSITIVE, Label.UNCERTAIN) and o not in _NON_FINDING}


def impression_regions(clause: str) -> tuple[str, ...]:
    """The regions an impression clause reports on: those it names, when it states more than "normal"
    (a positive or uncertain finding, or no negation or normal word at all). The normalizer withholds
    these regions' normal statements; the report check accepts them as addressed."""
    labels = _labels(clause)
    if _source_findings(labels) or (not labels and _NEGATIVE_WORD.search(clause) is None):
        return tuple(_region_hits(clause))  # all regions, also those a device clause names
    return ()


def _normal_statement(region: Region, positives: set[str], blocked: set[str]) -> tuple[str, bool]:
    """The parts of a region's normal statement that contradict nothing; ``(text, something withheld)``."""
    if region.key in blocked:
        return "", True
    kept = []
    for text, denies in region.parts:
        negated = {o for o, lab in _labels(text).items() if lab is Label.NEGATIVE}
        if (negated | denies) & positives:
            continue
        kept.append(text)
    if len(kept) == len(region.parts):
        return region.normal, False
    return " ".join(kept), True


def normalize_sections(
    findings: str, impression: str, config: NormalizeConfig | None = None
) -> NormalizedReport:
    """Normalize a report given as findings and impression text (method.md §3.5; rules in the module doc).

    Raises:
        TypeError: a section is not a string.
    """
    config = config or NormalizeConfig()
    for name, value in (("findings", findings), ("impression", impression)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be str, got {type(value).__name__}: {value!r}")
    if config.language == "zh":
        return _normalize_zh(findings, impression)
    counts = _Counts()
    source_labels = _labels(f"{findings}\n{impression}")
    positives = _source_findings(source_labels)

    regions: dict[str, list[str]] = {key: [] for key in (*REGION_NAMES, OTHER_REGION)}
    covered: set[str] = set()
    for clause in _clean_clauses(findings, config, counts):
        place, _ = region_of(clause)
        regions[place].append(clause)
        covered.update(_region_hits(clause))  # a device clause also addresses the anatomy it names

    impression_clauses = _clean_clauses(impression, config, counts)
    blocked = {key for clause in impression_clauses for key in impression_regions(clause)}
    added: dict[str, str] = {}
    suppressed: list[str] = []
    for region in REGIONS:
        if region.key in covered or not region.parts:
            continue
        statement, withheld = _normal_statement(region, positives, blocked)
        if withheld:
            suppressed.append(region.key)
        if statement and config.unmentioned == "normal":
            regions[region.key].append(statement)
            added[region.key] = statement

    ordered = {key: clauses for key, clauses in regions.items() if clauses}
    findings_text = " ".join(c for clauses in ordered.values() for c in clauses)
    derived = not impression_clauses
    if derived:
        stated = [c for key, cs in ordered.items() if key not in added for c in cs if _source_findings(_labels(c))]
        impression_clauses = stated or [DEFAULT_IMPRESSION]
    return NormalizedReport(
        findings=findings_text, impression=" ".join(impression_clauses), language="en", regions=ordered,
        added=added, suppressed=tuple(suppressed), impression_derived=derived, masks_removed=counts.masks,
        clauses_dropped_for_mask=counts.mask_drops, priors_dropped=counts.priors,
    )


def _normalize_zh(findings: str, impression: str) -> NormalizedReport:
    """Chinese: whitespace cleaned, kept in the ``所见：… 结论：…`` template (no region rules yet)."""
    f, i = _collapse(findings), _collapse(impression)
    return NormalizedReport(findings=f, impression=i, language="zh", regions={OTHER_REGION: [f]} if f else {})


def normalize_report(text: str, config: NormalizeConfig | None = None) -> NormalizedReport:
    """Normalize report text (``Findings: … Impression: …``, or headerless findings); see :func:`normalize_sections`.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"report must be str, got {type(text).__name__}: {text!r}")
    parsed = parse_report(text)
    return normalize_sections(parsed.findings, parsed.impression, config)


def split_regions(findings: str) -> dict[str, list[str]]:
    """Split normalized findings text back into per-region statements (region key -> sentences, in order).

    Every sentence lands in exactly one region (``"other"`` for none), so joining the values in
    :data:`REGION_NAMES` order (then ``"other"``) with spaces gives the findings back. Regions without a
    statement are absent. Used by the app to edit drafts region by region.
    """
    if not isinstance(findings, str):
        raise TypeError(f"findings must be str, got {type(findings).__name__}: {findings!r}")
    out: dict[str, list[str]] = {}
    for sentence in _output_sentences(findings):
        out.setdefault(region_of(sentence)[0], []).append(sentence)
    order = (*REGION_NAMES, OTHER_REGION)
    return {key: out[key] for key in order if key in out}


def _output_sentences(text: str) -> list[str]:
    """Normalized text's sentences, verbatim with their end marks."""
    parts = re.split(r"(?<=[.!?])\s+(?=\S)", " ".join(text.split()))
    return [p for p in parts if p]


def added_statement_conflicts(report: NormalizedReport, source_labels: dict[str, Label]) -> list[tuple[str, str]]:
    """``(region, observation)`` for every added normal statement that negates a positive or uncertain
    observation of the source (the normalizer promises none; used by the recall script and tests)."""
    positives = _source_findings(source_labels)
    conflicts = []
    for key, statement in report.added.items():
        region = _REGION_BY_KEY[key]
        for part in _output_sentences(statement):
            denies = next((d for text, d in region.parts if text == part), frozenset())
            negated = {o for o, lab in _labels(part).items() if lab is Label.NEGATIVE}
            conflicts += [(key, obs) for obs in sorted((negated | denies) & positives)]
    return conflicts
