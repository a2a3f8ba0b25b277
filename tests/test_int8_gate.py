"""The int8 quality gate: its scoring on hand-written reports, and the verdict the library carries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from echo_eval.evaluation import StudyPrediction
from echo_model.device import INT8_GATE, Int8Gate, check_quantization

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from int8_gate import GATE_LOW, draft_interleaved, gate_sampler, prompt_kind, well_formed_share

REFERENCES = [
    "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.",
    "Mild cardiomegaly. No focal consolidation. No acute osseous abnormality.",
    "Small left pleural effusion with adjacent atelectasis. No pneumothorax.",
    "Right lower lobe opacity concerning for pneumonia. Heart size is normal.",
    "No acute cardiopulmonary abnormality. Degenerative changes of the spine.",
    "Stable postoperative changes of sternotomy. The lungs are clear.",
]


def _predictions(texts: list[str], *, seconds: float = 0.1, tokens: int = 20) -> list[StudyPrediction]:
    return [StudyPrediction(id=f"s{i}", prediction=t, reference=REFERENCES[i % len(REFERENCES)], sampler="echo",
                            model="tiny", tokens=tokens, seconds=seconds) for i, t in enumerate(texts)]


FP32 = [r.replace("The lungs", "Lungs") for r in REFERENCES] * 4  # 24 studies, close to their references


def test_identical_reports_pass_with_a_zero_difference() -> None:
    gate = gate_sampler("echo", _predictions(FP32), _predictions(FP32, seconds=0.05), n_resamples=200)
    assert gate.n == 24 and gate.identical_share == 1.0
    assert gate.rouge_l_delta == 0.0 and gate.rouge_l_low == 0.0 and gate.passed
    assert gate.rouge_l_fp32 == gate.rouge_l_int8 > 0.5
    assert gate.int8.tokens_per_second == pytest.approx(2 * gate.fp32.tokens_per_second)  # 20 tok in 0.05 vs 0.1 s
    assert "PASS" in gate.line()


def test_reports_that_lose_their_content_fail() -> None:
    damaged = [" ".join(t.split()[:3]) for t in FP32]  # int8 drafts that stop after three words
    gate = gate_sampler("ar", _predictions(FP32), _predictions(damaged), n_resamples=200)
    assert gate.identical_share == 0.0
    assert gate.rouge_l_high < 0 and gate.rouge_l_low < GATE_LOW and not gate.passed
    assert "FAIL" in gate.line()


def test_one_changed_report_counts_in_the_share_and_whitespace_does_not() -> None:
    int8 = list(FP32)
    int8[0] = "Heart size is normal."
    int8[1] = "  " + FP32[1].replace(" ", "  ")
    gate = gate_sampler("echo", _predictions(FP32), _predictions(int8), n_resamples=200)
    assert gate.identical_share == pytest.approx(23 / 24)
    assert gate.rouge_l_delta < 0


def test_the_well_formed_shares_are_reported_beside_the_gate() -> None:
    fp32, int8 = _predictions(FP32), _predictions(FP32)
    for p in fp32:
        p.warnings = []
    for i, p in enumerate(int8):
        p.warnings = ["The draft stops mid-sentence"] if i < 6 else []
    gate = gate_sampler("echo", fp32, int8, n_resamples=200)
    assert gate.well_formed_fp32 == 1.0 and gate.well_formed_int8 == pytest.approx(18 / 24)
    assert gate.passed  # the gate is ROUGE-L's; the check's share is reported, not gated
    assert "well-formed 100.0 -> 75.0 %" in gate.line()
    # predictions read from files written before the check existed carry no warnings at all: no share
    assert well_formed_share(_predictions(FP32)) is None and well_formed_share([]) is None
    assert "well-formed" not in gate_sampler("echo", _predictions(FP32), _predictions(FP32), n_resamples=50).line()


def test_the_prompt_says_whether_the_views_were_drafted() -> None:
    text_only = _predictions(FP32[:4])
    assert prompt_kind(text_only) == "text-only (indication)"
    with_views = _predictions(FP32[:4])
    for p in with_views:
        p.images = 1
    assert prompt_kind(with_views) == "images"
    with_views[2].images = 0  # a study whose view could not be read goes text-only
    assert prompt_kind(with_views) == "images (1 of 4 studies text-only)"


def test_arms_draft_in_alternating_chunks() -> None:
    calls: list[tuple[str, list[int]]] = []

    def arm(name: str):
        def draft(chunk):
            calls.append((name, list(chunk)))
            return [f"{name}{x}" for x in chunk]
        return draft

    out = draft_interleaved(list(range(5)), {"fp32": arm("fp32"), "int8": arm("int8")}, chunk=2)
    assert [c[0] for c in calls] == ["fp32", "int8"] * 3
    assert calls[-1] == ("int8", [4])
    assert out == {"fp32": [f"fp32{i}" for i in range(5)], "int8": [f"int8{i}" for i in range(5)]}


def test_the_library_verdict_repeats_the_recorded_gate() -> None:
    recorded = json.loads((ROOT / "results" / "int8_gate.json").read_text())
    assert recorded["studies"] == INT8_GATE.studies and recorded["gate_low"] == INT8_GATE.low
    assert set(recorded["samplers"]) == set(INT8_GATE.rouge_l_low) == {"echo", "ar"}
    for name, figures in recorded["samplers"].items():
        assert figures["identical_share"] == pytest.approx(INT8_GATE.identical_share[name], abs=1e-4)
        assert figures["rouge_l_delta"] == pytest.approx(INT8_GATE.rouge_l_delta[name], abs=1e-4)
        assert figures["rouge_l_low"] == pytest.approx(INT8_GATE.rouge_l_low[name], abs=1e-4)
    assert recorded["passed"] == INT8_GATE.passed


def test_check_quantization_follows_the_gate() -> None:
    passing = Int8Gate(studies=5, data="d", identical_share={"echo": 1.0}, rouge_l_delta={"echo": 0.0},
                       rouge_l_low={"echo": -0.005})
    failing = Int8Gate(studies=5, data="d", identical_share={"echo": 0.4}, rouge_l_delta={"echo": -0.02},
                       rouge_l_low={"echo": -0.0301})
    assert check_quantization("int8", passing) == "int8" and check_quantization("none", failing) == "none"
    with pytest.raises(ValueError, match=r"identical 40\.0 %.*-0\.0200.*-0\.0301"):
        check_quantization("int8", failing)
    with pytest.raises(ValueError, match="int4"):
        check_quantization("int4", passing)
