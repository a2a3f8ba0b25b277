"""Split and build radiology report text in the model's reference format.

ECHO is trained to emit ``Findings: {findings} Impression: {impression}`` (Chinese:
``所见：{findings} 结论：{impression}``). The app needs the two sections apart (to show and edit
them) and needs to put edited sections back together in exactly the training format, so
:func:`format_report` and :func:`parse_report` are inverses: for section texts that contain no
section header, ``parse_report(format_report(f, i))`` gives back ``f.strip()`` and
``i.strip()``.

Parsing is tolerant because reports also come from clinicians and other systems: headers in
any case, with ASCII or full-width colons, on their own lines, missing sections, repeated
sections. It never raises on any string.

The app's editor shows findings one line per anatomical region (``Cardiac silhouette: The cardiac
silhouette is normal in size.``): :func:`findings_by_region` lays them out with the normalizer's
regions, :func:`findings_from_region_text` strips the labels back to the plain sentences the model
writes. For normalized findings the two are inverses.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "OTHER_LABEL",
    "SECTION_KEYWORDS",
    "ParsedReport",
    "findings_by_region",
    "findings_from_region_text",
    "format_report",
    "parse_report",
    "region_labels",
]

Language = Literal["en", "zh"]

#: Words that start a section (matched case-insensitively for English, ASCII letters only).
SECTION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "findings": ("findings", "finding", "所见"),
    "impression": ("impression", "impressions", "结论"),
}

_TEMPLATES: dict[str, str] = {
    "en": "Findings: {findings} Impression: {impression}",
    "zh": "所见：{findings} 结论：{impression}",
}

# A header is a keyword followed by an ASCII or full-width colon, or a keyword alone on its
# line. English keywords must not continue a word ("nofindings:" is not a header); ``(?ai:...)``
# keeps case-insensitivity to ASCII so that e.g. U+0130 does not count as "i".
_COLON = r"[ \t\u3000]*[:：]"
# Chinese headers often carry a qualifier ("影像所见", "诊断结论"); it belongs to the header, not
# to the end of the previous section.
_ZH_PREFIX = r"(?:影像学?|检查|诊断|印象)?"
_HEADER = re.compile(
    "|".join(
        [
            r"(?<![A-Za-z])(?P<en_f>(?ai:findings?))" + _COLON,
            r"(?<![A-Za-z])(?P<en_i>(?ai:impressions?))" + _COLON,
            _ZH_PREFIX + r"(?P<zh_f>所见)" + _COLON,
            _ZH_PREFIX + r"(?P<zh_i>结论)" + _COLON,
            r"(?m:^[ \t\u3000]*(?:(?P<line_f>(?ai:findings?)|所见)|(?P<line_i>(?ai:impressions?)|结论))[ \t\u3000\r]*$)",
        ]
    )
)
_GROUP_SECTION = {
    "en_f": "findings",
    "zh_f": "findings",
    "line_f": "findings",
    "en_i": "impression",
    "zh_i": "impression",
    "line_i": "impression",
}


@dataclass(frozen=True)
class ParsedReport:
    """The two sections of a report; a missing section is the empty string."""

    findings: str
    impression: str

    def to_text(self, lang: Language = "en") -> str:
        """This report in the model's reference format (see :func:`format_report`)."""
        return format_report(self.findings, self.impression, lang=lang)


def parse_report(text: str) -> ParsedReport:
    """Split report text into findings and impression.

    Rules: text after a findings header up to the next header is findings, likewise for
    impression; a section given twice is joined with a space; text before the first header is
    the findings when no findings header exists (``"Heart normal. Impression: ..."``) and is
    dropped otherwise (an exam title or a "影像" prefix); text with no header at all is all
    findings. Section bodies keep their inner text verbatim and lose surrounding whitespace.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_report expects str, got {type(text).__name__}")
    headers = [(match, _section_of(match)) for match in _HEADER.finditer(text)]
    if not headers:
        return ParsedReport(findings=text.strip(), impression="")
    bodies: dict[str, list[str]] = {"findings": [], "impression": []}
    for index, (match, section) in enumerate(headers):
        end = headers[index + 1][0].start() if index + 1 < len(headers) else len(text)
        bodies[section].append(text[match.end() : end].strip())
    preamble = text[: headers[0][0].start()].strip()
    if preamble and not bodies["findings"]:
        bodies["findings"].append(preamble)
    return ParsedReport(
        findings=" ".join(body for body in bodies["findings"] if body),
        impression=" ".join(body for body in bodies["impression"] if body),
    )


def _section_of(match: re.Match[str]) -> str:
    group = match.lastgroup
    if group is None or group not in _GROUP_SECTION:  # pragma: no cover - every branch is named
        raise AssertionError(f"unexpected header match {match.group(0)!r}")
    return _GROUP_SECTION[group]


def format_report(findings: str, impression: str, lang: Language = "en") -> str:
    """Build ``Findings: {f} Impression: {i}`` (or ``所见：{f} 结论：{i}``) exactly as in training.

    Sections are stripped of surrounding whitespace. A section that itself contains a section
    header (e.g. ``"Impression:"``) is refused, because the result could not be split back.
    """
    if lang not in _TEMPLATES:
        raise ValueError(f"lang must be one of {sorted(_TEMPLATES)}, got {lang!r}")
    for label, value in (("findings", findings), ("impression", impression)):
        if not isinstance(value, str):
            raise TypeError(f"{label} must be str, got {type(value).__name__}")
        header = _HEADER.search(value)
        if header is not None:
            raise ValueError(
                f"{label} text contains the section header {header.group(0).strip()!r}, which would make the "
                f"report ambiguous: {value!r}"
            )
    return _TEMPLATES[lang].format(findings=findings.strip(), impression=impression.strip())


# ------------------------------------------------------------------------------ findings by region
#: Label of the line holding the sentences that fit no region.
OTHER_LABEL = "Other"


def region_labels() -> dict[str, str]:
    """Region key -> label of its editor line, in report order: each region's display name with a capital
    (``"hila"`` -> ``"Hila"``, ``"cardiac silhouette"`` -> ``"Cardiac silhouette"``), then ``"Other"``."""
    # Imported here: echo_model.data.normalize imports this module.
    from .normalize import OTHER_REGION, REGIONS

    labels = {region.key: region.name[:1].upper() + region.name[1:] for region in REGIONS}
    labels[OTHER_REGION] = OTHER_LABEL
    return labels


@functools.cache
def _label_pattern() -> re.Pattern[str]:
    # Longest first, so that a label that begins another is not matched in its place.
    names = sorted(region_labels().values(), key=len, reverse=True)
    return re.compile(r"(?i:" + "|".join(re.escape(n) for n in names) + r")[ \t\u3000]*[:：][ \t\u3000]*")


def findings_by_region(findings: str) -> str:
    """Findings one line per region: ``"<Label>: <its sentences>"``, regions in report order, then ``Other``.

    Sentences are assigned by :func:`echo_model.data.normalize.split_regions` and kept verbatim; a region
    without a sentence has no line; text that names no region (un-normalized or garbled text) is all on
    the ``Other`` line. Empty findings give ``""``. :func:`findings_from_region_text` undoes this for
    normalized findings (whose sentences are already in region order).

    Raises:
        TypeError: ``findings`` is not a string.
    """
    from .normalize import split_regions  # normalize imports this module

    labels = region_labels()
    return "\n".join(f"{labels[key]}: {' '.join(sentences)}" for key, sentences in split_regions(findings).items())


def findings_from_region_text(text: str) -> str:
    """Plain findings from editor text laid out by region: each line's leading region label removed, the
    lines joined with one space, in the order written.

    A label is recognised only at the start of a line (any case, ASCII or full-width colon); a line without
    one (the reader deleted the label, or typed a new line) is kept whole, and a label with nothing after
    it gives nothing. Text with no label at all comes back with its lines joined.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"findings text must be str, got {type(text).__name__}: {text!r:.80}")
    pattern = _label_pattern()
    pieces = []
    for line in text.splitlines():
        line = line.strip()
        label = pattern.match(line)
        if label is not None:
            line = line[label.end() :].strip()
        if line:
            pieces.append(line)
    return " ".join(pieces)
