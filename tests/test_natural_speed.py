"""scripts/natural_speed.py: its configurations, the figures it reads from echo-bench's JSON, and its errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from natural_speed import Config, RoundFigures, main, plot, summarize


def _bench(*, echo_s: float, ar_s: float, echo_tok: float = 75, ar_tok: float = 83, predicted: float = 3.0) -> dict:
    """The parts of an ``echo-bench --json`` file the script reads (natural length, batch 1), plus a fixed cell
    that must be ignored."""
    cell = {"mode": "natural", "batch": 1}
    return {
        "results": [
            {**cell, "arm": "echo", "median_seconds": echo_s, "median_tokens_per_second": echo_tok / echo_s,
             "median_first_block_seconds": 0.02, "tokens": echo_tok},
            {**cell, "arm": "ar", "median_seconds": ar_s, "median_tokens_per_second": ar_tok / ar_s,
             "median_first_block_seconds": 0.03, "tokens": ar_tok},
            {"mode": "fixed", "batch": 1, "arm": "echo", "median_seconds": 9.0, "median_tokens_per_second": 1.0,
             "median_first_block_seconds": 1.0, "tokens": 9},
        ],
        "predictions_natural": {"1": {"predicted_speedup_ar_over_echo": predicted,
                                      "measured_over_predicted_speedup": 0.95,
                                      "measured_over_replayed_speedup": 0.97,
                                      "arms": {"echo": {"overhead": 0.08, "overhead_replayed": 0.05},
                                               "ar": {"overhead": 0.02, "overhead_replayed": 0.02}}}},
        "cost_models": {"1": {"prefill_seconds": 0.0156}},
    }


def test_configurations_parse_and_bad_ones_are_named() -> None:
    assert Config.parse("2") == Config(2, "none") and Config.parse("1:int8") == Config(1, "int8")
    assert Config.parse("1:int8").args() == ["--threads", "1", "--quantize", "int8"]
    assert Config.parse("1").label == "1 thread, fp32" and Config.parse("2:int8").label == "2 threads, int8 weights"
    for bad in ("0", "two", "1:int4", ""):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            Config.parse(bad)


def test_round_figures_read_the_natural_cells() -> None:
    r = RoundFigures.of(_bench(echo_s=0.050, ar_s=0.150), load_average=1.2)
    assert r.per_report == pytest.approx(3.0)  # AR seconds / ECHO seconds
    assert r.speedup == pytest.approx((75 / 0.050) / (83 / 0.150))  # tokens per second: each arm's own lengths
    assert r.speedup < r.per_report  # ECHO wrote fewer tokens than AR
    assert r.predicted == 3.0 and r.measured_over_predicted == 0.95
    assert r.echo_over_its_prediction == pytest.approx(1.08)
    assert r.measured_over_replayed == 0.97 and r.echo_over_its_replay == pytest.approx(1.05)
    older = _bench(echo_s=0.050, ar_s=0.150)  # a file written before the benchmark replayed the runs
    del older["predictions_natural"]["1"]["measured_over_replayed_speedup"]
    del older["predictions_natural"]["1"]["arms"]["echo"]["overhead_replayed"]
    assert RoundFigures.of(older).echo_over_its_replay is None
    assert r.prefill_ms == pytest.approx(15.6) and r.echo_first_block_ms == pytest.approx(20) and r.ar_tokens == 83
    with pytest.raises(ValueError, match="no natural-length batch-1 cells"):
        RoundFigures.of({**_bench(echo_s=0.05, ar_s=0.15), "results": []})


def test_summary_takes_each_figure_s_median_over_the_rounds(tmp_path: Path) -> None:
    rounds = [RoundFigures.of(_bench(echo_s=0.050, ar_s=a, predicted=p))
              for a, p in ((0.12, 2.5), (0.15, 3.2), (0.20, 2.9))]
    s = summarize(Config(1), rounds)
    assert s["label"] == "1 thread, fp32" and len(s["rounds"]) == 3
    assert s["median"]["per_report"] == pytest.approx(3.0) and s["median"]["predicted"] == 2.9
    with pytest.raises(ValueError, match="no rounds"):
        summarize(Config(2), [])
    out = tmp_path / "speed_real.png"
    plot({"configs": [s, summarize(Config(1, "int8"), rounds)], "studies": 48, "device": "CPU"}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--data", str(tmp_path), "--configs", "1:int4"]) == 2
    assert "THREADS:int8" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
