"""Corpus-level natural-language-generation metrics: BLEU-1..4, ROUGE-L and CIDEr-D.

Why these and how: the chest X-ray report-generation literature (R2Gen, Chen et al.,
EMNLP 2020, and the papers that copy its evaluation, including ECHO's tables) reports
BLEU, ROUGE-L and CIDEr computed with the MS-COCO caption evaluation code
(``coco-caption``; Chen et al., 2015, arXiv:1504.00325). We call the scorers of the
PyPI package ``pycocoevalcap`` (the maintained Python 3 port of coco-caption) so that
the numbers are computed by the same code as in those papers. Only the pure-Python
scorers are used: its ``PTBTokenizer``, METEOR and SPICE need Java and are never
imported.

Sources of each metric:

* BLEU-n: Papineni et al., ACL 2002. ``pycocoevalcap.bleu`` computes *corpus* BLEU
  (n-gram counts and lengths summed over all studies, one brevity penalty for the
  corpus, effective reference length ``closest``), geometric mean of the clipped
  1..n-gram precisions with uniform weights. Scale 0-1.
* ROUGE-L: Lin, ACL workshop 2004. ``pycocoevalcap.rouge`` scores each study with
  the LCS-based F-measure with ``beta = 1.2`` (recall weighted slightly more than
  precision, as in coco-caption) and averages over studies. Scale 0-1.
* CIDEr-D: Vedantam et al., CVPR 2015. ``pycocoevalcap.cider`` (TF-IDF weighted
  1..4-gram cosine similarity, clipped, with a Gaussian length penalty, sigma = 6,
  times 10). The IDF is estimated on the reference corpus being scored, so CIDEr
  depends on the whole corpus and is exactly 0 for a corpus of a single study.
  Scale: 0 to 10 (not multiplied by 100; ECHO's paper reports it on this scale).

Tokenisation (applied identically to predictions and references, following
R2Gen's ``clean_report_iu_xray``/``clean_report_mimic_cxr``): lower-case; a
period that ends a sentence (``.``, ``!`` or ``?``) becomes a ``.`` token;
decimal numbers such as ``2.5`` stay one token; every other punctuation mark
(commas, hyphens, slashes, brackets, colons, apostrophes...) separates words and is
dropped. The IU X-ray de-identification mask ``XXXX`` is kept as the word ``xxxx``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._checks import check_pairs

__all__ = ["NLG_KEYS", "compute_nlg", "tokenize_report"]

NLG_KEYS: tuple[str, ...] = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")

# decimal number | alphanumeric word | sentence-ending punctuation
_TOKEN_RE = re.compile(r"\d+\.\d+|[a-z0-9]+|[.!?]")


def tokenize_report(text: str) -> list[str]:
    """Split a report into the lower-cased tokens that every NLG metric here scores.

    Sentence-ending ``.``/``!``/``?`` are kept as one ``.`` token (consecutive ones
    are merged, a leading one is dropped); other punctuation is dropped.
    """
    if not isinstance(text, str):
        raise TypeError(f"reports must be str, got {type(text).__name__}: {text!r}")
    tokens: list[str] = []
    for token in _TOKEN_RE.findall(text.lower().replace("'", "")):
        if token in ".!?":
            if tokens and tokens[-1] != ".":
                tokens.append(".")
        else:
            tokens.append(token)
    return tokens


def _to_coco(texts: Sequence[str]) -> dict[int, list[str]]:
    """coco-caption's input format: study index -> [space-joined tokens]."""
    return {i: [" ".join(tokenize_report(text))] for i, text in enumerate(texts)}


def compute_nlg(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level BLEU-1..4, ROUGE-L (0-1) and CIDEr-D (0-10) over paired reports.

    Args:
        predictions: one generated report per study.
        references: the reference report of the same study, same order.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider"}`` -> float.

    Raises:
        ValueError: if the lists are empty or differ in length, or a reference has
            no tokens (an empty prediction is allowed and scores 0).
        ImportError: if ``pycocoevalcap`` is not installed.
    """
    check_pairs(predictions, references)
    empty = [i for i, ref in enumerate(references) if not tokenize_report(ref)]
    if empty:
        raise ValueError(
            f"references must not be empty; {len(empty)} empty reference(s) at indices {empty[:10]}"
        )
    # Imported here so that importing echo_eval.metrics stays cheap.
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as error:
        raise ImportError("compute_nlg needs the coco-caption scorers: pip install pycocoevalcap") from error

    res, gts = _to_coco(predictions), _to_coco(references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)}
    scores["rougeL"] = float(rouge)
    scores["cider"] = float(cider)
    return scores
