"""Input validation shared by the corpus-level metrics.

Every metric in this package compares a list of generated reports with a list of
reference reports, study by study; a silent length mismatch would pair the wrong
reports and produce plausible-looking but meaningless numbers, so it is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_pairs"]


def check_pairs(predictions: Sequence[object], references: Sequence[object]) -> int:
    """Return the number of (prediction, reference) pairs after checking the lists.

    Raises:
        ValueError: if either list is empty or their lengths differ (the message
            names both lengths).
    """
    n_pred, n_ref = len(predictions), len(references)
    if n_pred != n_ref:
        raise ValueError(
            f"predictions and references must have the same length, got {n_pred} predictions "
            f"and {n_ref} references"
        )
    if n_pred == 0:
        raise ValueError("predictions and references are empty (0 pairs); need at least one pair")
    return n_pred
