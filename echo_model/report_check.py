"""Check a drafted report for form: headers, region statements, truncation, degenerate runs, unknown words.

A one-step sampler can emit broken text ("Bilateralound--lloundlllllllll", "Impression Impression Impression",
a draft cut mid-sentence). :func:`check_report` judges a draft *as given* and returns plain-words warnings a
radiologist understands. It never changes the text: nothing here repairs a draft.

Checks:

1. **Sections.** ``Findings:`` and ``Impression:`` (Chinese ``所见：`` and ``结论：``) each exactly once, findings
   first, neither empty.
2. **Region statements** (only with ``normalized=True``; method.md §3.5): every region of
   :data:`echo_model.data.normalize.REGIONS` that has a normal statement is addressed, i.e. the region's anatomy
   or finding vocabulary (the normalizer's own placement rule) occurs in the findings or the impression (the
   normalizer withholds a region's normal statement when the impression reports a finding there, see
   :func:`~echo_model.data.normalize.impression_regions`).
   Lines, tubes and devices are addressed only when present, so they are never required.
3. **Ending.** The draft ends at a sentence boundary (``.``, ``!``, ``?``, ``。``).
4. **Degenerate runs.** A letter 4+ times in a row; a word, or a phrase of 2-4 words, 3+ times in a row; a word of
   3+ letters twice in a row within a sentence ("peripheral peripheral");
   doubled punctuation (``..``, ``,,``) or a dash run (``--``).
5. **Unknown words.** Each word of 4+ letters is in the English dictionary (``pyspellchecker``) or in the
   training-report vocabulary (``echo_model/data/report_vocabulary.txt``, built by
   ``scripts/build_report_vocabulary.py`` from the IU X-ray and covid_cxr_notes reports) or in ``vocabulary``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Literal

from .data.normalize import REGIONS

__all__ = ["REGION_STATEMENT_NAMES", "ReportCheck", "check_report", "known_words"]

#: How a missing region is named in a warning ("No statement about the hila").
REGION_STATEMENT_NAMES: dict[str, str] = {
    "thorax": "the thorax (symmetry)",
    "mediastinum": "the mediastinum and trachea",
    "lungs": "the lung fields",
    "vasculature": "the pulmonary vasculature",
    "heart": "the cardiac silhouette",
    "hila": "the hila",
    "diaphragm": "the diaphragms and costophrenic angles",
    "bones": "the osseous structures",
}

_HEADERS: dict[str, tuple[tuple[str, re.Pattern[str]], tuple[str, re.Pattern[str]]]] = {
    "en": (
        ("Findings:", re.compile(r"(?i)(?<![A-Za-z])findings?[ \t]*[:：]")),
        ("Impression:", re.compile(r"(?i)(?<![A-Za-z])impressions?[ \t]*[:：]")),
    ),
    "zh": (("所见：", re.compile(r"所见[ \t]*[:：]")), ("结论：", re.compile(r"结论[ \t]*[:：]"))),
}
_SENTENCE_END = re.compile(r"[.!?。！？][\"')\]]*\s*$")
_LETTER_RUN = re.compile(r"([A-Za-z])\1{3,}")
_PUNCT_RUN = re.compile(r"(?<![.\d])([.,;:])\1+(?![.\d])|-{2,}")
_WORD = re.compile(r"[A-Za-z]+")
#: A word of three letters or more written twice with only spaces between ("peripheral peripheral"): every
#: such pair in the IU X-ray reports is a typo ("the the", "acute acute"), and in a draft a stutter.
_DOUBLED_WORD = re.compile(r"(?i)(?<![A-Za-z])([A-Za-z]{3,})[ \t]+\1(?![A-Za-z])")
_TOKEN = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]|\d+")


@dataclass(frozen=True)
class ReportCheck:
    """The result of :func:`check_report`.

    Attributes:
        text: the draft exactly as given (never modified).
        warnings: plain-words problems, in check order; empty for a well-formed draft.
    """

    text: str
    warnings: list[str] = field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        """No warning."""
        return not self.warnings


@lru_cache(maxsize=1)
def _dictionary() -> frozenset[str]:
    from spellchecker import SpellChecker  # pyspellchecker: an English word list with frequencies

    return frozenset(SpellChecker(language="en").word_frequency.keys())


@lru_cache(maxsize=1)
def _report_vocabulary() -> frozenset[str]:
    text = resources.files("echo_model.data").joinpath("report_vocabulary.txt").read_text(encoding="utf-8")
    return frozenset(text.split())


@lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """The English dictionary plus the training-report vocabulary (lower case); built once per process (building
    the union of the ~100,000-word dictionary for every draft took ~4.1 of the report check's 4.5 ms)."""
    return _dictionary() | _report_vocabulary()


def _sections(text: str, language: str, warnings: list[str]) -> tuple[str, str]:
    """Check the headers; return (findings, impression) bodies (best effort, for the later checks)."""
    (f_name, f_re), (i_name, i_re) = _HEADERS[language]
    f_hits, i_hits = list(f_re.finditer(text)), list(i_re.finditer(text))
    for name, hits in ((f_name, f_hits), (i_name, i_hits)):
        if not hits:
            warnings.append(f"The draft has no '{name}' section header")
        elif len(hits) > 1:
            warnings.append(f"The section header '{name}' appears {len(hits)} times")
        elif language == "en":  # a header word repeated without its colon ("Impression Impression Impression:")
            word = name.rstrip(":")
            run = re.search(rf"(?i)(?<![A-Za-z]){word}s?(?:[\s:：,.]+{word}s?(?![A-Za-z]))+", text)
            if run:
                count = len(re.findall(rf"(?i){word}", run.group(0)))
                warnings.append(f"The header word '{word}' is repeated {count} times in a row")
    if not (f_hits and i_hits):
        body = text[f_hits[0].end():] if f_hits else text[i_hits[0].end():] if i_hits else text
        return (body, "") if f_hits or not i_hits else ("", body)
    f_at, i_at = f_hits[0], i_hits[0]
    if i_at.start() < f_at.start():
        warnings.append(f"The '{i_name}' section comes before the '{f_name}' section")
        findings, impression = text[f_at.end():], text[i_at.end():f_at.start()]
    else:
        findings, impression = text[f_at.end():i_at.start()], text[i_at.end():]
    if not re.search(r"\w", findings):
        warnings.append("The findings section is empty")
    if not re.search(r"\w", impression):
        warnings.append("The impression section is empty")
    return findings, impression


def _runs(text: str, warnings: list[str]) -> None:
    for match in _LETTER_RUN.finditer(text):
        word = re.search(r"[A-Za-z]*" + re.escape(match.group(0)) + r"[A-Za-z]*", text[max(0, match.start() - 40):])
        where = f" in '{word.group(0)}'" if word else ""
        warnings.append(f"The letter '{match.group(1)}' repeats {len(match.group(0))} times in a row{where}")
    for match in _PUNCT_RUN.finditer(text):
        warnings.append(f"The draft has repeated punctuation '{match.group(0)}'")
    tokens = [t.lower() for t in _TOKEN.findall(text)]
    i = 0
    reported: set[str] = set()
    while i < len(tokens):
        found = False
        for n in (1, 2, 3, 4):
            unit = tokens[i:i + n]
            if len(unit) < n:
                break
            count = 1
            while tokens[i + count * n:i + (count + 1) * n] == unit:
                count += 1
            if count >= 3:
                phrase = " ".join(unit) if not re.match(r"[\u4e00-\u9fff]", unit[0]) else "".join(unit)
                if phrase not in reported:
                    what = f"the word '{phrase}'" if n == 1 else f"'{phrase}'"
                    warnings.append(f"The draft repeats {what} {count} times in a row")
                    reported.add(phrase)
                i += count * n
                found = True
                break
        if not found:
            i += 1
    headers = {"findings", "finding", "impression", "impressions"}  # their repeats: the header check's
    for match in _DOUBLED_WORD.finditer(text):
        word = match.group(1).lower()
        if word not in reported and word not in headers:
            warnings.append(f"The draft repeats the word '{word}' twice in a row")
            reported.add(word)


def _unknown_words(text: str, extra: frozenset[str], warnings: list[str]) -> None:
    known = known_words()
    seen: set[str] = set()
    for word in _WORD.findall(text):
        low = word.lower()
        if len(low) < 4 or low in seen:
            continue
        seen.add(low)
        if low in known or low in extra:
            continue
        # plural / possessive forms of known words ("radiographs" is fine, "radiographss" is not)
        if low.endswith("s") and (low[:-1] in known or low[:-1] in extra) and not low.endswith("ss"):
            continue
        warnings.append(f"Unknown word '{word}'")


def _regions(findings: str, impression: str, warnings: list[str]) -> None:
    f_low, i_low = findings.lower(), impression.lower()
    for region in REGIONS:
        if not region.parts:  # lines, tubes and devices: only when present
            continue
        if region.pattern.search(f_low) or region.pattern.search(i_low):
            continue
        warnings.append(f"No statement about {REGION_STATEMENT_NAMES.get(region.key, region.name)}")


def check_report(
    text: str,
    *,
    normalized: bool,
    language: Literal["en", "zh"] = "en",
    vocabulary: Iterable[str] | None = None,
) -> ReportCheck:
    """Check a drafted report's form (module docstring); the text is returned unchanged with the warnings.

    Args:
        text: the draft, ``Findings: … Impression: …`` (``所见：… 结论：…``).
        normalized: the draft should follow the normalized form (method.md §3.5): check that every region
            has a statement.
        language: ``"en"`` or ``"zh"`` (Chinese: headers, ending and runs; no dictionary or region check).
        vocabulary: extra known words (e.g. a site's own terms), on top of the dictionary and the
            training-report vocabulary.

    Raises:
        TypeError: ``text`` is not a string. ValueError: an unknown ``language``.
    """
    if not isinstance(text, str):
        raise TypeError(f"report must be str, got {type(text).__name__}: {text!r}")
    if language not in _HEADERS:
        raise ValueError(f"language must be one of {sorted(_HEADERS)}, got {language!r}")
    extra = frozenset(w.lower() for w in vocabulary) if vocabulary is not None else frozenset()
    warnings: list[str] = []
    if not text.strip():
        return ReportCheck(text=text, warnings=["The draft is empty"])
    findings, impression = _sections(text, language, warnings)
    if normalized and language == "en":
        _regions(findings, impression, warnings)
    if not _SENTENCE_END.search(text):
        warnings.append("The draft stops mid-sentence")
    _runs(text, warnings)
    if language == "en":
        _unknown_words(text, extra, warnings)
    return ReportCheck(text=text, warnings=warnings)
