"""Clinical-efficacy (CE) scores on top of the rule-based CheXpert labeler.

Why: report-generation papers judge *clinical* correctness by labelling the
generated and the reference report with the 14 CheXpert observations and
comparing the labels (clinical efficacy, CE; Chen et al., R2Gen, EMNLP 2020).
The labeler itself is library code (:mod:`echo_model.labeler`); this module
only counts and scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from echo_model.labeler import COMPETITION_OBSERVATIONS, OBSERVATIONS, Label, label_report, label_reports

from ._checks import check_pairs

__all__ = [
    "COMPETITION_OBSERVATIONS",
    "OBSERVATIONS",
    "PRF",
    "Label",
    "binary_prf",
    "ce_scores",
    "label_report",
    "label_reports",
]


# ------------------------------------------------------------------ clinical efficacy
@dataclass(frozen=True)
class PRF:
    """Counts and precision / recall / F1 of one binary decision over studies.

    Zero denominators give 0.0 (scikit-learn's ``zero_division=0``, the setting of
    the usual CE evaluation scripts).
    """

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0

    @property
    def support(self) -> int:
        """Number of reference positives."""
        return self.tp + self.fn


def binary_prf(predicted: Iterable[bool], actual: Iterable[bool]) -> PRF:
    """Count true/false positives and false negatives of paired binary decisions."""
    tp = fp = fn = 0
    for p, a in zip(predicted, actual, strict=True):
        tp += p and a
        fp += p and not a
        fn += a and not p
    return PRF(tp=int(tp), fp=int(fp), fn=int(fn))


def _is_positive(labels: Mapping[str, Label | str], observation: str) -> bool:
    return labels.get(observation) in (Label.POSITIVE, Label.POSITIVE.value)


def _summarise(per_obs: Mapping[str, PRF], suffix: str) -> dict[str, float]:
    total = PRF(
        tp=sum(c.tp for c in per_obs.values()),
        fp=sum(c.fp for c in per_obs.values()),
        fn=sum(c.fn for c in per_obs.values()),
    )
    k = len(per_obs)
    return {
        f"ce_precision_{suffix}": total.precision,
        f"ce_recall_{suffix}": total.recall,
        f"ce_f1_{suffix}": total.f1,
        f"ce_macro_precision_{suffix}": sum(c.precision for c in per_obs.values()) / k,
        f"ce_macro_recall_{suffix}": sum(c.recall for c in per_obs.values()) / k,
        f"ce_macro_f1_{suffix}": sum(c.f1 for c in per_obs.values()) / k,
    }


def ce_scores(
    pred_labels: Sequence[Mapping[str, Label | str]],
    ref_labels: Sequence[Mapping[str, Label | str]],
) -> dict[str, float]:
    """Clinical-efficacy precision / recall / F1 of predicted vs reference labels.

    Convention (R2Gen, Chen et al. 2020, and the CE scripts derived from it): an
    observation counts as present only when its label is *positive*; uncertain,
    negative and unmentioned all count as absent. Micro scores pool the
    true/false positives of all observations of the set; macro scores average the
    per-observation scores (a score with a zero denominator is 0, as scikit-learn's
    ``zero_division=0``).

    Returns:
        ``ce_{precision,recall,f1}_{5,14}`` (micro) and
        ``ce_macro_{precision,recall,f1}_{5,14}``; "5" is
        :data:`COMPETITION_OBSERVATIONS`, "14" all of :data:`OBSERVATIONS`.

    Raises:
        ValueError: if the lists are empty or differ in length.
    """
    check_pairs(pred_labels, ref_labels)
    per_obs = {
        obs: binary_prf(
            (_is_positive(p, obs) for p in pred_labels),
            (_is_positive(r, obs) for r in ref_labels),
        )
        for obs in OBSERVATIONS
    }
    scores = _summarise({obs: per_obs[obs] for obs in COMPETITION_OBSERVATIONS}, "5")
    scores.update(_summarise(per_obs, "14"))
    return scores
