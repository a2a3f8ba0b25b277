"""Paired bootstrap confidence interval for the difference between two systems.

Why: on a test set of a few hundred studies, differences of one or two BLEU/CE
points between two report generators are often within sampling noise. The paired
bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993; applied to
generation metrics by Koehn, EMNLP 2004) resamples *studies* with replacement and
recomputes the corpus-level metric of both systems on the **same** resampled
studies, so that the study-to-study difficulty cancels out of the difference.

Interval: the percentile interval of the resampled differences at level
``1 - alpha``. p-value: two-sided, ``2 * min(P(delta* <= 0), P(delta* >= 0))``
over the resamples (capped at 1), i.e. how often the resampled difference lands on
the other side of zero; with ``n_resamples`` resamples its resolution is
``1 / n_resamples``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "WithInterval","BootstrapResult", "paired_bootstrap"]

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class BootstrapResult:
    """Difference ``metric(a) - metric(b)`` on the full set, its interval and p-value."""

    delta: float
    low: float
    high: float
    p_value: float
    n_resamples: int
    alpha: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero."""
        return self.low > 0.0 or self.high < 0.0


class WithInterval:
    """Mixin for results that carry a :class:`BootstrapResult` as ``interval``: its figures read through."""

    interval: BootstrapResult

    delta = property(lambda self: self.interval.delta, doc="``metric(a) - metric(b)`` on the full set")
    low = property(lambda self: self.interval.low, doc="lower end of the interval")
    high = property(lambda self: self.interval.high, doc="upper end of the interval")
    p_value = property(lambda self: self.interval.p_value, doc="two-sided bootstrap p-value")

    def excludes_zero(self) -> bool:
        return self.interval.excludes_zero()


def _check(preds_a: Sequence[object], preds_b: Sequence[object], refs: Sequence[object]) -> int:
    lengths = (len(preds_a), len(preds_b), len(refs))
    if len(set(lengths)) != 1:
        raise ValueError(
            f"preds_a, preds_b and refs must have the same length, got {lengths[0]}, {lengths[1]} and {lengths[2]}"
        )
    if lengths[0] == 0:
        raise ValueError("paired_bootstrap needs at least one study, got 0")
    return lengths[0]


def paired_bootstrap(
    metric_fn: Callable[[list[P], list[R]], float],
    preds_a: Sequence[P],
    preds_b: Sequence[P],
    refs: Sequence[R],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Paired bootstrap of ``metric_fn(preds_a, refs) - metric_fn(preds_b, refs)``.

    Args:
        metric_fn: corpus-level metric ``(predictions, references) -> float``; it
            receives lists (e.g. ``lambda p, r: compute_nlg(p, r)["bleu4"]``, or
            a CE score over pre-computed label dicts to avoid relabelling).
        preds_a, preds_b: the two systems' outputs, one per study, same order.
        refs: the references of the same studies.
        n_resamples: bootstrap resamples (each draws ``len(refs)`` studies with
            replacement; both systems see the same draw).
        seed: seed of the ``numpy`` generator, for reproducible intervals.
        alpha: 1 - confidence level of the percentile interval.

    Raises:
        ValueError: on unequal or empty inputs, ``n_resamples < 1`` or ``alpha``
            outside (0, 1).
    """
    import numpy as np  # local: keeps `import echo_eval.metrics` light

    n = _check(preds_a, preds_b, refs)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")

    def delta_on(indices: Sequence[int]) -> float:
        a = [preds_a[i] for i in indices]
        b = [preds_b[i] for i in indices]
        r = [refs[i] for i in indices]
        return float(metric_fn(a, r)) - float(metric_fn(b, r))

    rng = np.random.default_rng(seed)
    deltas = np.array(
        [delta_on(rng.integers(0, n, size=n).tolist()) for _ in range(n_resamples)], dtype=np.float64
    )
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    p_value = min(1.0, 2.0 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    return BootstrapResult(
        delta=delta_on(range(n)),
        low=float(low),
        high=float(high),
        p_value=p_value,
        n_resamples=n_resamples,
        alpha=alpha,
    )
