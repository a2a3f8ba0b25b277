"""Majority-template baseline: always predict the training set's most common report.

Why: in chest X-ray report corpora a large share of studies are normal and many
normal reports are word-for-word identical, so a constant "normal template" already
scores well on BLEU/ROUGE (a point made for IU X-ray and MIMIC-CXR by, e.g.,
Babar et al., "Evaluating diagnostic content of AI-generated radiology reports of
chest X-rays", Artif Intell Med 2021). Every model's numbers are therefore compared
with this baseline on the same test set.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["majority_template", "normalise_report"]


def normalise_report(text: str) -> str:
    """Key under which reports count as the same: lower-case, single spaces, trimmed."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _most_common(items: Iterable[str]) -> str:
    """Most frequent item; ties go to the lexicographically smallest (order-independent)."""
    counts = Counter(items)
    return min(counts, key=lambda item: (-counts[item], item))


def majority_template(train_reports: Iterable[str]) -> str:
    """The most frequent normalised training report, as it is most often written.

    Reports are grouped by :func:`normalise_report`; the largest group wins (ties:
    smallest key). The returned text is that group's most frequent spelling, with
    whitespace collapsed (ties: smallest string), so it keeps its capitalisation.

    Raises:
        ValueError: if there is no non-blank report.
    """
    groups: dict[str, list[str]] = {}
    for report in train_reports:
        key = normalise_report(report)
        if key:
            groups.setdefault(key, []).append(re.sub(r"\s+", " ", report).strip())
    if not groups:
        raise ValueError("majority_template needs at least one non-blank report, got none")
    winner = _most_common(key for key, spellings in groups.items() for _ in spellings)
    return _most_common(groups[winner])
