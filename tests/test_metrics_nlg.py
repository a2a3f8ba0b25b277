"""Tests of the corpus-level NLG metrics (BLEU-1..4, ROUGE-L, CIDEr-D) and the tokeniser.

All texts are hand-written; expected values are computed by hand in the tests.
"""

from __future__ import annotations

import math

import pytest

from echo_eval.metrics import NLG_KEYS, compute_nlg, tokenize_report

# coco-caption's BLEU adds tiny smoothing constants (1e-15 / 1e-9), so "exact"
# scores are exact to about 1e-8.
TOL = 1e-6

CORPUS = [
    "The heart size is normal and the lungs are clear.",
    "There is a small left pleural effusion with basilar atelectasis.",
    "Moderate cardiomegaly with mild pulmonary edema is present.",
]


def test_tokeniser_lowercases_keeps_decimals_and_sentence_periods() -> None:
    tokens = tokenize_report("The heart is XXXX enlarged, 2.5 cm... Left-sided effusion? No.")
    assert tokens == [
        "the", "heart", "is", "xxxx", "enlarged", "2.5", "cm", ".",
        "left", "sided", "effusion", ".", "no", ".",
    ]


def test_tokeniser_drops_leading_and_repeated_periods() -> None:
    assert tokenize_report(". . Clear lungs..") == ["clear", "lungs", "."]


def test_tokeniser_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="int"):
        tokenize_report(3)  # type: ignore[arg-type]


def test_returns_exactly_the_documented_keys() -> None:
    assert tuple(compute_nlg(CORPUS, CORPUS)) == NLG_KEYS


def test_identical_texts_score_one_and_cider_ten() -> None:
    scores = compute_nlg(CORPUS, CORPUS)
    for n in range(1, 5):
        assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=TOL)
    assert scores["rougeL"] == pytest.approx(1.0, abs=TOL)
    # CIDEr-D of a perfect match is 10 (cosine 1 for each n-gram order, x10) as long
    # as every report has >= 4 tokens and n-grams that are not in every reference.
    assert scores["cider"] == pytest.approx(10.0, abs=TOL)


def test_case_and_punctuation_do_not_matter() -> None:
    upper = [text.upper().replace(",", " ,") for text in CORPUS]
    assert compute_nlg(upper, CORPUS)["bleu4"] == pytest.approx(1.0, abs=TOL)


def test_disjoint_texts_score_zero() -> None:
    predictions = ["alpha beta gamma delta", "epsilon zeta eta theta"]
    references = ["one two three four", "five six seven eight"]
    scores = compute_nlg(predictions, references)
    for key in NLG_KEYS:
        assert scores[key] == pytest.approx(0.0, abs=TOL), key


def test_partial_overlap_matches_hand_computation() -> None:
    # prediction tokens: heart is enlarged .            (c = 4)
    # reference tokens:  the heart is normal .          (r = 5)
    scores = compute_nlg(["Heart is enlarged."], ["The heart is normal."])
    # BLEU-1: clipped unigram matches {heart, is, .} = 3 of 4 -> p1 = 3/4;
    # c < r so brevity penalty BP = exp(1 - r/c) = exp(1 - 5/4).
    assert scores["bleu1"] == pytest.approx(0.75 * math.exp(1 - 5 / 4), abs=TOL)
    # BLEU-2: bigrams (heart is)(is enlarged)(enlarged .) -> 1 match of 3 -> p2 = 1/3;
    # BLEU-2 = BP * sqrt(p1 * p2).
    assert scores["bleu2"] == pytest.approx(math.exp(1 - 5 / 4) * math.sqrt(0.75 / 3), abs=TOL)
    # ROUGE-L: LCS = (heart, is, .) = 3 -> P = 3/4, R = 3/5; coco-caption's
    # F = (1 + b^2) P R / (R + b^2 P) with b = 1.2.
    p, r, b2 = 3 / 4, 3 / 5, 1.2**2
    assert scores["rougeL"] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=TOL)
    # a single-study corpus gives every n-gram IDF 0, so CIDEr is 0 by definition
    assert scores["cider"] == 0.0


def test_bleu_pools_counts_over_the_corpus() -> None:
    # study 1: 4 of 4 unigrams match; study 2: 0 of 4; same lengths -> BP = 1.
    # Corpus BLEU-1 = (4 + 0) / (4 + 4) = 0.5 (not a mean of sentence scores).
    predictions = ["left lower lobe atelectasis", "alpha beta gamma delta"]
    references = ["left lower lobe atelectasis", "no acute cardiopulmonary disease"]
    assert compute_nlg(predictions, references)["bleu1"] == pytest.approx(0.5, abs=TOL)


def test_better_prediction_scores_higher_on_every_metric() -> None:
    references = CORPUS
    close = [
        "The heart size is normal and the lungs are clear.",
        "There is a small right pleural effusion with basilar atelectasis.",
        "Moderate cardiomegaly with pulmonary edema is present.",
    ]
    far = ["No acute disease."] * 3
    good, bad = compute_nlg(close, references), compute_nlg(far, references)
    for key in NLG_KEYS:
        assert good[key] > bad[key], key


def test_empty_prediction_is_allowed_and_scores_zero() -> None:
    scores = compute_nlg(["", ""], ["Clear lungs.", "No effusion seen here."])
    assert scores["bleu1"] == pytest.approx(0.0, abs=TOL)
    assert scores["rougeL"] == 0.0


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a b", "c d"], ["a b", "c d", "e f"], "2 predictions and 3 references"),
        ([], [], "0 pairs"),
        (["a b"], ["  ..  "], "empty reference"),
    ],
)
def test_invalid_input_raises_value_error(
    predictions: list[str], references: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_nlg(predictions, references)
