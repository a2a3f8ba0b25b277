"""ECHO against AR at natural length on real radiographs, per thread count and weight format.

Usage::

    python scripts/natural_speed.py --data DATA/covid_cxr_notes [--split test] [--rounds 3] \\
        [--configs 1 2 1:int8] [--json results/speed_real.json] [--plot results/speed_real.png]

The studies are the split's first view of each study plus ``RG1_UNCR.dcm`` (``pydicom-data``), each drafted
once per arm per round (``echo-bench --arms echo ar --cycle-images --modes natural --batch 1 --max-new-tokens
512``, embedded checkpoints, greedy). A configuration is ``THREADS`` or ``THREADS:int8`` (dynamic int8 weights,
offered behind the quality gate of ``scripts/int8_gate.py``). Each round runs every configuration once, in
separate processes, in turn, so that drift of a shared machine hits them alike; the figures per configuration
are the rounds' values and their median:

* ECHO / AR in tokens per second (each arm's own report lengths, ``echo-bench``'s measured speed-up), and per
  report (AR seconds / ECHO seconds);
* the same ratio predicted from the probe's forward costs for the forwards each arm made, and measured /
  predicted;
* the prefill (vision tower and prompt), the first block of each arm, the tokens of each arm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    """One way of running both arms: torch threads and weight format."""

    threads: int
    quantize: str = "none"

    @classmethod
    def parse(cls, text: str) -> Config:
        """``"2"`` or ``"1:int8"``."""
        threads, _, quantize = text.partition(":")
        if not threads.isdigit() or int(threads) < 1 or quantize not in ("", "none", "int8"):
            raise ValueError(f"a configuration is THREADS or THREADS:int8, e.g. 1, 2 or 1:int8; got {text!r}")
        return cls(int(threads), quantize or "none")

    @property
    def label(self) -> str:
        weights = "int8 weights" if self.quantize == "int8" else "fp32"
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}, {weights}"

    def args(self) -> list[str]:
        return ["--threads", str(self.threads), "--quantize", self.quantize]


@dataclass(frozen=True)
class RoundFigures:
    """One ``echo-bench`` run of one configuration (natural length, batch 1)."""

    echo_tokens_per_second: float
    ar_tokens_per_second: float
    speedup: float  # ECHO / AR in tokens per second
    per_report: float  # AR seconds / ECHO seconds
    predicted: float
    measured_over_predicted: float
    prefill_ms: float
    echo_first_block_ms: float
    ar_first_block_ms: float
    echo_tokens: float
    ar_tokens: float
    echo_over_its_prediction: float
    load_average: float | None
    # against each run's own forwards replayed back to back (echo-bench's replay); None in older files
    measured_over_replayed: float | None = None
    echo_over_its_replay: float | None = None

    @classmethod
    def of(cls, bench: dict[str, Any], load_average: float | None = None) -> RoundFigures:
        """The figures of one ``echo-bench --json`` file's natural-length batch-1 cells."""
        cells = {r["arm"]: r for r in bench["results"] if r["mode"] == "natural" and r["batch"] == 1}
        if not {"echo", "ar"} <= set(cells):
            raise ValueError(f"the benchmark has no natural-length batch-1 cells of both echo and ar: {sorted(cells)}")
        pred = bench["predictions_natural"]["1"]
        echo, ar = cells["echo"], cells["ar"]
        return cls(
            echo_tokens_per_second=echo["median_tokens_per_second"],
            ar_tokens_per_second=ar["median_tokens_per_second"],
            speedup=echo["median_tokens_per_second"] / ar["median_tokens_per_second"],
            per_report=ar["median_seconds"] / echo["median_seconds"],
            predicted=pred["predicted_speedup_ar_over_echo"],
            measured_over_predicted=pred["measured_over_predicted_speedup"],
            prefill_ms=1e3 * bench["cost_models"]["1"]["prefill_seconds"],
            echo_first_block_ms=1e3 * echo["median_first_block_seconds"],
            ar_first_block_ms=1e3 * ar["median_first_block_seconds"],
            echo_tokens=echo["tokens"], ar_tokens=ar["tokens"],
            echo_over_its_prediction=1 + pred["arms"]["echo"]["overhead"], load_average=load_average,
            measured_over_replayed=pred.get("measured_over_replayed_speedup"),
            echo_over_its_replay=(1 + pred["arms"]["echo"]["overhead_replayed"]
                                  if pred["arms"]["echo"].get("overhead_replayed") is not None else None),
        )


def summarize(config: Config, rounds: Sequence[RoundFigures]) -> dict[str, Any]:
    """A configuration's rounds and the median of each figure over them."""
    if not rounds:
        raise ValueError(f"no rounds for {config.label}")
    names = [k for k in asdict(rounds[0]) if k != "load_average"]
    values = {k: [getattr(r, k) for r in rounds if getattr(r, k) is not None] for k in names}
    return {
        "threads": config.threads, "quantize": config.quantize, "label": config.label,
        "median": {k: statistics.median(v) if v else None for k, v in values.items()},
        "rounds": [asdict(r) for r in rounds],
    }


def study_files(data: str, split: str) -> list[str]:
    """The split's first view of each study, then ``RG1_UNCR.dcm``."""
    from pydicom.data import get_testdata_file

    from echo_eval.eval_cli import load_split

    files = [str(r.images[0].path) for r in load_split(data, split) if r.images]
    if not files:
        raise ValueError(f"{data} ({split}) has no study with an image")
    return [*files, get_testdata_file("RG1_UNCR.dcm", download=False)]


def bench_once(config: Config, files: Sequence[str], *, out: Path, max_new_tokens: int) -> dict[str, Any]:
    """One ``echo-bench`` run of both arms in a fresh process; its JSON."""
    cmd = [sys.executable, "-m", "echo_eval.bench_cli", "--arms", "echo", "ar", "--images", *files, "--cycle-images",
           "--runs", str(len(files)), "--modes", "natural", "--batch", "1", "--max-new-tokens", str(max_new_tokens),
           *config.args(), "--json", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"echo-bench failed for {config.label} (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(out.read_text())


def plot(data: dict[str, Any], path: Path) -> None:
    """Measured ECHO / AR per round (dots) and its median (bar) beside the prediction, per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = data["configs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = range(len(configs))
    ax.bar([i - 0.18 for i in x], [c["median"]["speedup"] for c in configs], width=0.36, color="#2b6cb0",
           label="measured (median of the rounds)")
    ax.bar([i + 0.18 for i in x], [c["median"]["predicted"] for c in configs], width=0.36, color="#a0aec0",
           label="predicted from the forwards made")
    for i, c in enumerate(configs):
        ax.scatter([i - 0.18] * len(c["rounds"]), [r["speedup"] for r in c["rounds"]], color="black", s=12, zorder=3)
    ax.axhline(3.0, color="#c53030", linestyle="--", linewidth=1, label="3×")
    ax.set_xticks(list(x), [c["label"] for c in configs])
    ax.set_ylabel("ECHO / AR, tokens per second")
    ax.set_title(f"Natural length, {data['studies']} real radiographs, batch 1 ({data['device']})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the covid_cxr_notes folder (any study set echo-eval reads)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=["1", "2", "1:int8"], help="THREADS or THREADS:int8 each")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (e.g. results/speed_real.json)")
    ap.add_argument("--plot", type=Path, default=None, help="draw them here (e.g. results/speed_real.png)")
    args = ap.parse_args(argv)
    try:
        if args.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
        configs = [Config.parse(c) for c in args.configs]
        files = study_files(args.data, args.split)
    except (ValueError, FileNotFoundError) as err:
        print(f"natural_speed: error: {err}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from echo_model.device import device_name, load_average

    figures: dict[Config, list[RoundFigures]] = {c: [] for c in configs}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=args.rounds * len(configs), unit="run") as bar:
        for r in range(args.rounds):
            for config in configs:
                bar.set_postfix_str(f"round {r + 1}, {config.label}")
                bench = bench_once(config, files, out=Path(tmp) / "bench.json", max_new_tokens=args.max_new_tokens)
                figures[config].append(RoundFigures.of(bench, load_average()))
                bar.update()
    data = {
        "data": Path(args.data).name, "split": args.split, "studies": len(files),
        "files": f"the first view of each {args.split} study, then RG1_UNCR.dcm", "max_new_tokens": args.max_new_tokens,
        "device": device_name("cpu"), "rounds": args.rounds, "wall_seconds": round(time.perf_counter() - started, 1),
        "configs": [summarize(c, figures[c]) for c in configs],
    }
    for c in data["configs"]:
        m = c["median"]
        each = ", ".join(f"{r['speedup']:.2f}" for r in c["rounds"])
        print(f"{c['label']}: ECHO/AR {m['speedup']:.2f}x tok/s (rounds {each}), {m['per_report']:.2f}x per report, "
              f"predicted {m['predicted']:.2f}x ({m['measured_over_predicted']:.0%}), "
              + (f"against the replayed forwards {m['measured_over_replayed']:.1%} (ECHO "
                 f"{m['echo_over_its_replay']:.3f}x its replay), " if m.get("measured_over_replayed") else "")
              + f"prefill {m['prefill_ms']:.1f} ms, "
              f"first block {m['echo_first_block_ms']:.1f} / {m['ar_first_block_ms']:.1f} ms, tokens "
              f"{m['echo_tokens']:.0f} / {m['ar_tokens']:.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(data, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
