"""Tests of the paired bootstrap and the majority-template baseline."""

from __future__ import annotations

import pytest

from echo_eval.metrics import BootstrapResult, compute_nlg, majority_template, paired_bootstrap


def accuracy(predictions: list[str], references: list[str]) -> float:
    """Toy corpus metric: share of exact matches."""
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


REFS = [f"report {i}" for i in range(40)]


def test_identical_systems_give_a_zero_interval() -> None:
    result = paired_bootstrap(accuracy, REFS, list(REFS), REFS, n_resamples=200)
    assert (result.delta, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.p_value == 1.0
    assert not result.excludes_zero()


def test_always_right_vs_always_wrong_excludes_zero() -> None:
    wrong = ["something else"] * len(REFS)
    result = paired_bootstrap(accuracy, REFS, wrong, REFS, n_resamples=200)
    assert result.delta == 1.0
    assert result.low > 0.0 and result.excludes_zero()
    assert result.p_value < 0.05
    flipped = paired_bootstrap(accuracy, wrong, REFS, REFS, n_resamples=200)
    assert flipped.high < 0.0 and flipped.delta == -1.0


def test_interval_contains_the_full_set_difference_for_a_mixed_system() -> None:
    # system A is right on the first 30 studies, B on the first 20: delta = 10/40.
    a = REFS[:30] + ["x"] * 10
    b = REFS[:20] + ["x"] * 20
    result = paired_bootstrap(accuracy, a, b, REFS, n_resamples=300, alpha=0.1)
    assert result.delta == pytest.approx(0.25)
    assert result.low <= result.delta <= result.high
    assert result.low < result.high


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    a = REFS[:25] + ["x"] * 15
    b = ["x"] * 10 + REFS[10:]
    first = paired_bootstrap(accuracy, a, b, REFS, n_resamples=100, seed=7)
    again = paired_bootstrap(accuracy, a, b, REFS, n_resamples=100, seed=7)
    other = paired_bootstrap(accuracy, a, b, REFS, n_resamples=100, seed=8)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert isinstance(first, BootstrapResult) and first.n_resamples == 100


def test_works_with_a_corpus_nlg_metric() -> None:
    refs = ["the heart is normal .", "small left pleural effusion .", "no pneumothorax is seen ."] * 3
    good = list(refs)
    bad = ["clear lungs ."] * len(refs)
    result = paired_bootstrap(lambda p, r: compute_nlg(p, r)["bleu1"], good, bad, refs, n_resamples=20)
    assert result.delta > 0.5 and result.low > 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preds_b": REFS[:3]}, "40, 3 and 40"),
        ({"n_resamples": 0}, "n_resamples must be >= 1, got 0"),
        ({"alpha": 1.5}, "alpha must be in \\(0, 1\\), got 1.5"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"preds_a": REFS, "preds_b": REFS, "refs": REFS, **kwargs}
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(accuracy, **arguments)  # type: ignore[arg-type]


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="at least one study"):
        paired_bootstrap(accuracy, [], [], [])


# ---------------------------------------------------------------- majority template
def test_majority_template_counts_normalised_reports() -> None:
    reports = [
        "No acute disease.",
        "Heart size is normal.  Lungs are clear.",
        "heart size is normal. lungs are clear.",
        "Heart size is normal. Lungs are clear.",
        "Small left pleural effusion.",
        "No acute disease.",
    ]
    # three spellings of one report (case/whitespace differ) beat the two copies of another;
    # the most common spelling is returned, with whitespace collapsed.
    assert majority_template(reports) == "Heart size is normal. Lungs are clear."


def test_majority_template_ties_are_order_independent() -> None:
    reports = ["Clear lungs.", "No effusion.", "No effusion.", "Clear lungs.", "   "]
    assert majority_template(reports) == "Clear lungs."
    assert majority_template(list(reversed(reports))) == "Clear lungs."


def test_majority_template_needs_a_report() -> None:
    with pytest.raises(ValueError, match="non-blank"):
        majority_template(["", "  "])
