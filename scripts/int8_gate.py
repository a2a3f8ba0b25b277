"""The int8 quality gate: draft the same studies with fp32 and dynamic-int8 weights and compare the reports.

Usage::

    python scripts/int8_gate.py --data DATA/iu_xray [--split test] [--limit 300] [--samplers echo ar]
        [--threads 1] [--json results/int8_gate.json]

For each sampler (each on its embedded checkpoint, or ``--model``) it drafts every study twice, fp32 and
int8 (``echo_model.device.quantize_checkpoint``), in interleaved chunks so that load drift hits both alike,
and reports:

* the share of studies whose two reports are identical;
* the paired ROUGE-L difference int8 - fp32 with its paired-bootstrap interval (``echo_eval``'s
  ``compare_predictions``); the gate passes for a sampler iff the interval's lower end is >= -0.01;
* the share of well-formed drafts of both (the report check, ``echo_model.report_check``): reported beside
  the gate, so that a weight format that garbles more drafts shows, though the gate is ROUGE-L's;
* the speed of both (mean seconds per report, tokens per second over all reports), the machine and its
  load average.

IU X-ray ships reports only, so its studies are drafted text-only from their indication, as ``echo-eval``
does when a study's views cannot be read; a set with images (``DATA/covid_cxr_notes``) exercises the vision
tower's int8 weights too. The JSON's ``prompt`` says which. Exit status 0 when every sampler passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GATE_LOW = -0.01  # the lowest acceptable lower end of the ROUGE-L difference's interval


@dataclass(frozen=True)
class SpeedFigures:
    """What drafting all studies cost one arm: mean seconds per report and tokens per second overall."""

    seconds_per_report: float
    tokens_per_report: float
    tokens_per_second: float

    @classmethod
    def of(cls, predictions: Sequence[Any]) -> SpeedFigures:
        """The figures of one arm's predictions (``echo_eval.evaluation.StudyPrediction``)."""
        seconds = sum(p.seconds or 0.0 for p in predictions)
        tokens = sum(p.tokens or 0 for p in predictions)
        n = max(len(predictions), 1)
        return cls(seconds / n, tokens / n, tokens / seconds if seconds > 0 else 0.0)


@dataclass(frozen=True)
class SamplerGate:
    """The gate's figures for one sampler (ROUGE-L delta = int8 - fp32)."""

    sampler: str
    n: int
    identical_share: float
    rouge_l_fp32: float
    rouge_l_int8: float
    rouge_l_delta: float
    rouge_l_low: float
    rouge_l_high: float
    fp32: SpeedFigures
    int8: SpeedFigures
    passed: bool
    well_formed_fp32: float | None = None
    well_formed_int8: float | None = None

    def line(self) -> str:
        speed = self.int8.tokens_per_second / self.fp32.tokens_per_second if self.fp32.tokens_per_second else 0.0
        well = ("" if self.well_formed_fp32 is None or self.well_formed_int8 is None else
                f", well-formed {100 * self.well_formed_fp32:.1f} -> {100 * self.well_formed_int8:.1f} %")
        return (f"{self.sampler}: {self.n} studies, identical {100 * self.identical_share:.1f} %, ROUGE-L "
                f"{self.rouge_l_fp32:.4f} -> {self.rouge_l_int8:.4f} (int8 - fp32 {self.rouge_l_delta:+.4f}, 95 % "
                f"[{self.rouge_l_low:+.4f}, {self.rouge_l_high:+.4f}]){well}, {self.fp32.tokens_per_second:.1f} -> "
                f"{self.int8.tokens_per_second:.1f} tok/s ({speed:.2f}x): {'PASS' if self.passed else 'FAIL'}")


def well_formed_share(predictions: Sequence[Any]) -> float | None:
    """The share of predictions whose report check found nothing; None when a prediction carries no check
    (``warnings`` None: read from a file written before the check existed)."""
    if not predictions or any(p.warnings is None for p in predictions):
        return None
    return sum(not p.warnings for p in predictions) / len(predictions)


def prompt_kind(predictions: Sequence[Any]) -> str:
    """What the drafts were given: ``"images"`` when every study had its views, ``"text-only (indication)"`` when
    none had, else how many of them went without (a study whose views could not be read is drafted text-only)."""
    with_images = sum((p.images or 0) > 0 for p in predictions)
    if with_images == len(predictions):
        return "images"
    if with_images == 0:
        return "text-only (indication)"
    return f"images ({len(predictions) - with_images} of {len(predictions)} studies text-only)"


def gate_sampler(sampler: str, fp32: Sequence[Any], int8: Sequence[Any], *, n_resamples: int = 1000,
                 seed: int = 0, low: float = GATE_LOW) -> SamplerGate:
    """Score one sampler's paired fp32 / int8 predictions (``echo_eval.evaluation.StudyPrediction`` lists)."""
    from echo_eval.evaluation import compare_predictions, pair_predictions

    a, b = pair_predictions(int8, fp32)
    same = sum(" ".join(p.prediction.split()) == " ".join(q.prediction.split()) for p, q in zip(a, b))
    rouge = compare_predictions(a, b, metrics=["rougeL"], n_resamples=n_resamples, seed=seed,
                                names=("int8", "fp32")).metrics["rougeL"]
    return SamplerGate(
        sampler=sampler, n=len(a), identical_share=same / len(a), rouge_l_fp32=rouge.b, rouge_l_int8=rouge.a,
        rouge_l_delta=rouge.delta, rouge_l_low=rouge.low, rouge_l_high=rouge.high,
        fp32=SpeedFigures.of(b), int8=SpeedFigures.of(a), passed=rouge.low >= low,
        well_formed_fp32=well_formed_share(b), well_formed_int8=well_formed_share(a),
    )


def draft_interleaved(records: Sequence[Any], drafters: dict[str, Callable[[Sequence[Any]], list[Any]]], *,
                      chunk: int) -> dict[str, list[Any]]:
    """Each drafter's predictions of all ``records``, drafted ``chunk`` studies at a time, arm after arm."""
    out: dict[str, list[Any]] = {name: [] for name in drafters}
    for start in range(0, len(records), chunk):
        for name, draft in drafters.items():
            out[name] += draft(records[start : start + chunk])
    return out


def drafting(checkpoint: Any, sampler: str, config: Any) -> Callable[[Sequence[Any]], list[Any]]:
    """Records -> ``echo_eval`` predictions of ``checkpoint`` with ``sampler`` (one study at a time)."""
    from echo_eval.evaluation import predict_records

    return lambda records: predict_records(records, checkpoint, sampler=sampler, config=config, progress=False)


def load_arm(model: str | None, sampler: str, mode: str) -> Any:
    """``sampler``'s checkpoint with ``mode`` weights, warmed up. Not through ``Drafter(quantize=...)``,
    which refuses int8 while the gate this script decides has failed."""
    from echo_model.device import quantize_checkpoint
    from echo_model.drafting import Drafter, warm_up

    checkpoint = quantize_checkpoint(Drafter(model, device="cpu", warm_up=False).checkpoint(sampler), mode)
    warm_up(checkpoint, sampler)
    return checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the IU X-ray folder (or any study set echo-eval reads)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=300, help="studies (the first of the split; default 300)")
    ap.add_argument("--samplers", nargs="+", default=["echo", "ar"], choices=["echo", "ar", "teacher", "vanilla"])
    ap.add_argument("--model", default=None, help="one checkpoint for every sampler (default: the embedded family)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a quiet-core figure)")
    ap.add_argument("--chunk", type=int, default=10, help="studies per interleaved chunk")
    ap.add_argument("--n-resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (e.g. results/int8_gate.json)")
    args = ap.parse_args(argv)

    import torch

    from echo_eval.eval_cli import load_split
    from echo_model.device import device_name, load_average
    from echo_model.sampling import SamplerConfig

    torch.set_num_threads(args.threads)
    try:
        records = load_split(args.data, args.split, limit=args.limit)
    except (ValueError, FileNotFoundError) as err:
        print(f"int8_gate: error: {err}", file=sys.stderr)
        return 2
    config = SamplerConfig(max_new_tokens=args.max_new_tokens)
    load_before, started = load_average(), time.perf_counter()
    gates: list[SamplerGate] = []
    prompt = "text-only (indication)"
    for sampler in args.samplers:
        drafters = {name: drafting(load_arm(args.model, sampler, mode), sampler, config)
                    for name, mode in (("fp32", "none"), ("int8", "int8"))}
        preds = draft_interleaved(records, drafters, chunk=args.chunk)
        prompt = prompt_kind(preds["fp32"])
        gates.append(gate_sampler(sampler, preds["fp32"], preds["int8"], n_resamples=args.n_resamples,
                                  seed=args.seed))
        print(gates[-1].line(), flush=True)
    passed = all(g.passed for g in gates)
    data = {
        "data": Path(args.data).name, "split": args.split, "studies": len(records), "model": args.model or "embedded",
        "prompt": prompt, "max_new_tokens": args.max_new_tokens, "gate_low": GATE_LOW,
        "n_resamples": args.n_resamples, "seed": args.seed, "device": device_name("cpu"), "threads": args.threads,
        "load_average": [load_before, load_average()], "wall_seconds": round(time.perf_counter() - started, 1),
        "samplers": {g.sampler: asdict(g) for g in gates}, "passed": passed,
    }
    print(f"int8 gate (lower end of the ROUGE-L difference >= {GATE_LOW}): {'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
