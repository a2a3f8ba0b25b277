"""ECHO at the official size on one GPU: ``ar`` vs one-step ``echo`` beside the paper's Table 1 (docs/speed.md,
"Full scale on a GPU").

    python scripts/gpu_scale_bench.py [--budget-s 300] [--json results/gpu_scale.json] [--plot results/gpu_scale.png]
    python scripts/gpu_scale_bench.py --checkpoint Midea-AIRC/ECHO_block8      # the same table with real weights
    python scripts/gpu_scale_bench.py --scale tiny --device cpu                # the structure in seconds (tests)

The model is a ``Qwen2_5_VLForConditionalGeneration`` with the language and vision configuration of the public
Qwen2.5-VL-7B-Instruct (written out below in :func:`scale_config`; 152 064-row vocabulary, which holds the
embedded tokenizer's ``<|MASK|>``), random weights made in bf16 directly on the device (no fp32 copy; the
speed of a forward does not depend on the values), SDPA attention, no compile. Both arms run on the same
model object, so they share the cache class (``DynamicCache``) and the attention kernel; they are the
project's own samplers (``echo_model.sampling``) at fixed length (``<eos>`` ignored, as ``echo-bench`` does).

Headline: b = 8, batch 1, 512 new tokens, one 448x448 view, one warm-up round, then 3 interleaved rounds
(ar, echo, ar, echo, ...), medians. Then, while the time spent plus an estimate of the next cell stays under
``--budget-s``: ``echo`` at b = 4 (the paper's ECHO_blk4 row), the multi-step ``teacher`` at 128 tokens, and
batch 8; cells that do not fit are listed as skipped, with the estimate. With random weights the teacher
commits about one token per step, as a real teacher does on hard blocks: its figure is its slowest case.

The GPU machine reaches no package registry, so the versions of torch and transformers are checked first;
what is missing is printed with what to carry there.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The paper's Table 1 speed column (TPS, batch 1, generated tokens / total time incl. prefill; method.md §2).
PAPER_TABLE1: tuple[tuple[str, str, int | None, float], ...] = (
    ("Lingshu-7B (AR)", "ar", None, 53.70),
    ("ECHO_blk4", "echo", 4, 129.19),
    ("ECHO_blk8", "echo", 8, 274.21),
)
PAPER_RATIO_B8 = 274.21 / 53.70  # 5.1x: the GPU target for echo / ar at b = 8, batch 1
#: Lowest versions the project's samplers run on (pyproject.toml pins transformers>=5.24,<6).
REQUIREMENTS: dict[str, tuple[int, int]] = {"torch": (2, 4), "transformers": (5, 24)}


@dataclass(frozen=True)
class ScaleConfig:
    """The Qwen2.5-VL built with random weights: its dimensions and vocabulary rows (0 = the tokenizer's size,
    the tiny scale; the official one has 152 064)."""

    name: str
    vocab_size: int
    size: Any  # echo_model.modeling.TinyModelSize (imported lazily: --help and the version check stay light)


#: ``--scale`` values.
SCALE_NAMES: tuple[str, ...] = ("official", "tiny")


def scale_config(name: str) -> ScaleConfig:
    """The :class:`ScaleConfig` called ``name`` (one of :data:`SCALE_NAMES`); imports transformers, so only
    after the version check."""
    from echo_model.modeling import TinyModelSize


    # Qwen2.5-VL-7B-Instruct's config.json (language: 28 layers, 3584 wide, 28 query / 4 key-value heads of
    # 128, MLP 18 944, M-RoPE sections 16/24/24, rope theta 1e6, untied lm head; vision: 32 blocks, 1280 wide,
    # 16 heads, MLP 3420, window 112 with full attention at blocks 7/15/23/31, merger to 3584).
    official = TinyModelSize(
        text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
        max_positions=128000, rope_theta=1_000_000.0, mrope_section=(16, 24, 24), rms_norm_eps=1e-6,
        tie_word_embeddings=False, vision_depth=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3420,
        vision_fullatt_blocks=(7, 15, 23, 31), vision_window=112, vision_tokens_per_second=2,
    )
    # The same structure scaled down so that a test runs it on a CPU in seconds.
    tiny = TinyModelSize(
        text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128, max_positions=4096,
        rope_theta=1_000_000.0, mrope_section=(2, 3, 3), rms_norm_eps=1e-6, tie_word_embeddings=False,
        vision_depth=2, vision_hidden=32, vision_heads=2, vision_intermediate=64, vision_fullatt_blocks=(1,),
        vision_window=112, vision_tokens_per_second=2,
    )
    scales = {"official": ScaleConfig("qwen2.5-vl-7b", 152064, official), "tiny": ScaleConfig("tiny", 0, tiny)}
    if name not in scales:
        raise ValueError(f"scale must be one of {list(SCALE_NAMES)}, got {name!r}")
    return scales[name]




# ---------------------------------------------------------------------------------------------- versions
def parse_version(text: str) -> tuple[int, int]:
    """``"5.25.0+cu121"`` -> ``(5, 25)``."""
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        return 0, 0


def version_problems(installed: dict[str, str | None]) -> list[str]:
    """What is missing or too old among :data:`REQUIREMENTS`, one line each with what to carry."""
    problems = []
    for name, least in REQUIREMENTS.items():
        have = installed.get(name)
        need = ".".join(map(str, least))
        if have is None:
            problems.append(f"{name} is not installed; need >= {need}")
        elif parse_version(have) < least:
            problems.append(f"{name} {have} is too old; need >= {need} (carry the wheel: pip download {name}>={need} "
                            f"--no-deps -d wheels/, then pip install --no-index wheels/{name}-*.whl on the GPU machine)")
    return problems


def installed_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in REQUIREMENTS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------------- the model
def build_random_checkpoint(scale: ScaleConfig, *, device: str, dtype: Any, block_length: int, image_size: int):
    """An :class:`~echo_model.checkpoint.EchoCheckpoint` of ``scale`` with random weights made on ``device`` in
    ``dtype`` (no fp32 copy), SDPA attention, around the embedded tokenizer (which has ``<|MASK|>``)."""
    import dataclasses

    from transformers import AutoTokenizer

    from echo_model.checkpoint import build_tiny_checkpoint
    from echo_model.loading import embedded_path
    from echo_model.spec import EchoSpec

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_path("student")))
    checkpoint = build_tiny_checkpoint(tokenizer, EchoSpec(block_length=block_length, role="student"),
                                       size=scale.size, image_size=image_size,
                                       vocab_size=max(scale.vocab_size, len(tokenizer)), device=device, dtype=dtype)
    return dataclasses.replace(checkpoint, source=f"random {scale.name}")


def with_block_length(checkpoint, block_length: int):
    """The same weights (one model object) read with block length ``block_length``."""
    from echo_model.checkpoint import EchoCheckpoint
    from echo_model.modeling import EchoModel
    from echo_model.processing import EchoProcessor

    spec = checkpoint.spec.replace(block_length=block_length)
    proc = checkpoint.processor
    return EchoCheckpoint(EchoModel(checkpoint.model.model, spec), EchoProcessor(proc.tokenizer, proc.image_processor, spec),
                          source=checkpoint.source)


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Cell:
    """One measured (or skipped) cell: arms at one block length, batch size and token budget."""

    name: str
    arms: tuple[str, ...]
    block_length: int
    batch: int
    max_new_tokens: int
    status: str = "pending"  # ran / skipped
    reason: str = ""
    estimate_seconds: float | None = None
    results: dict[str, dict[str, Any]] | None = None


def forwards_per_run(arm: str, block_length: int, tokens: int) -> int:
    """Forwards one fixed-length run makes (its prefill included); the teacher at its slowest, b steps."""
    blocks = math.ceil(tokens / block_length) + 1  # + the block that holds the prompt's tail
    if arm == "ar":
        return tokens
    if arm in ("echo", "vanilla"):
        return blocks + 1
    return blocks * (block_length + 1) + 1


def run_cell(cell: Cell, checkpoint, image, *, runs: int, warmup: int) -> None:
    """Time ``cell`` interleaved (one warm-up round, then ``runs`` rounds) and keep the per-arm medians."""
    from echo_eval.bench import Arm, measure_cell

    arms = {a: Arm(a, checkpoint) for a in cell.arms}
    res = measure_cell(arms, [image], mode="fixed", batch=cell.batch, runs=runs, warmup=warmup,
                       max_new_tokens=cell.max_new_tokens)
    cell.results = {}
    for arm, r in res.items():
        s = r.summary()
        cell.results[arm] = {k: s[k] for k in ("median_seconds", "seconds_min_max", "median_tokens_per_second",
                                              "median_batch_tokens_per_second", "median_first_block_seconds",
                                              "tokens", "forward_passes", "model_calls", "tokens_per_forward")}
    cell.status = "ran"


def memory_peak(device) -> dict[str, Any]:
    import resource

    import torch

    if device.type == "cuda":
        return {"kind": "GPU max allocated", "gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    return {"kind": "process max RSS", "gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build (or load) the model, time the headline and the extra cells, return the JSON record."""
    import torch

    from echo_model.device import device_name
    from echo_model.imaging.synthetic import phantom_cxr

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    if args.checkpoint:
        from echo_model.loading import load_checkpoint

        base = load_checkpoint(args.checkpoint, device=str(device))
        weights, blocks = f"checkpoint {args.checkpoint}", (base.model.block_length,)
    else:
        scale = scale_config(args.scale)
        base = build_random_checkpoint(scale, device=str(device), dtype=dtype, block_length=8, image_size=args.image_size)
        weights, blocks = f"random {args.dtype} ({scale.name})", (8, 4)
    build_seconds = time.perf_counter() - t0
    model = base.model.model
    params = sum(p.numel() for p in model.parameters())
    image = phantom_cxr((args.image_size, args.image_size), seed=0)
    prompt = base.processor.encode([image])
    b = blocks[0]
    tokens = args.max_new_tokens
    cells = [Cell("headline", ("ar", "echo"), b, 1, tokens)]
    if len(blocks) > 1:
        cells.append(Cell("ECHO_blk4", ("echo",), 4, 1, tokens))
    cells.append(Cell("teacher", ("teacher",), b, 1, args.teacher_tokens))
    cells.append(Cell(f"batch {args.batch}", ("ar", "echo"), b, args.batch, tokens))
    start = time.perf_counter()
    seconds_per_forward: float | None = None
    for cell in cells:
        if cell.name != "headline":
            per_run = sum(forwards_per_run(a, cell.block_length, cell.max_new_tokens) for a in cell.arms)
            cell.estimate_seconds = round(per_run * (seconds_per_forward or 0.0) * (args.runs + 1)
                                          * (1 + 0.1 * (cell.batch - 1)), 1)
            spent = time.perf_counter() - start
            if spent + cell.estimate_seconds > args.budget_s:
                cell.status = "skipped"
                cell.reason = (f"estimated {cell.estimate_seconds:.0f} s after {spent:.0f} s spent; over --budget-s "
                               f"{args.budget_s:.0f}")
                continue
        ck = base if cell.block_length == base.model.block_length else with_block_length(base, cell.block_length)
        run_cell(cell, ck, image, runs=args.runs, warmup=1)
        if cell.name == "headline":
            ar = cell.results["ar"]
            seconds_per_forward = ar["median_seconds"] / max(ar["model_calls"], 1)
    head = cells[0].results
    ratio = head["echo"]["median_tokens_per_second"] / head["ar"]["median_tokens_per_second"]
    import transformers

    return {
        "device": device_name(device),
        "torch_device": str(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "weights": weights,
        "scale": args.scale if not args.checkpoint else None,
        "parameters": params,
        "dtype": str(model.dtype).removeprefix("torch."),
        "attention": model.config._attn_implementation,
        "cache": type(base.model.new_cache()).__name__,
        "compile": False,
        "image_size": args.image_size,
        "prompt_length": prompt.length,
        "runs": args.runs,
        "budget_s": args.budget_s,
        "build_seconds": round(build_seconds, 1),
        "timing_seconds": round(time.perf_counter() - start, 1),
        "memory_peak": memory_peak(device),
        "headline": {"block_length": b, "batch": 1, "max_new_tokens": tokens,
                     "echo_over_ar": round(ratio, 3), "paper_echo_over_ar": round(PAPER_RATIO_B8, 2),
                     "meets_paper_ratio": ratio >= round(PAPER_RATIO_B8, 1)},
        "table1": table1_rows(cells),
        "cells": [asdict(c) for c in cells],
    }


def table1_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """The paper's Table 1 speed rows beside ours (None where the cell was not run)."""
    by_name = {c.name: c for c in cells}
    head = by_name["headline"]
    ar = head.results["ar"]["median_tokens_per_second"] if head.results else None
    rows = []
    for label, arm, b, paper in PAPER_TABLE1:
        cell = head if arm == "ar" or b == head.block_length else by_name.get(f"ECHO_blk{b}")
        ours = cell.results[arm]["median_tokens_per_second"] if cell and cell.results else None
        rows.append({"row": label, "arm": arm, "block_length": b, "paper_tps": paper,
                     "paper_over_ar": round(paper / PAPER_TABLE1[0][3], 2), "ours_tps": _r(ours),
                     "ours_over_ar": _r(ours / ar) if ours and ar else None,
                     "status": cell.status if cell else "not run", "reason": cell.reason if cell else ""})
    return rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------------------------------------- output
def format_table(data: dict[str, Any]) -> str:
    lines = [(f"{data['device']} ({data['torch_device']}) | torch {data['versions']['torch']}, transformers "
             f"{data['versions']['transformers']} | {data['weights']}, {_count(data['parameters'])} parameters, "
             f"{data['dtype']}, attention {data['attention']}, cache {data['cache']}, no compile"),
             (f"one {data['image_size']}x{data['image_size']} view, prompt {data['prompt_length']} tokens; "
             f"fixed length (<eos> ignored), warm, interleaved, median of {data['runs']}"), "",
             f"{'Table 1 row':18s} {'paper TPS':>9s} {'paper xAR':>9s} {'ours tok/s':>10s} {'ours xAR':>8s}"]
    for r in data["table1"]:
        ours = f"{r['ours_tps']:10.2f}" if r["ours_tps"] is not None else f"{r['status']:>10s}"
        ratio = f"{r['ours_over_ar']:8.2f}" if r["ours_over_ar"] is not None else f"{'':>8s}"
        lines.append(f"{r['row']:18s} {r['paper_tps']:9.2f} {r['paper_over_ar']:9.2f} {ours} {ratio}")
    h = data["headline"]
    lines += ["", (f"headline (b = {h['block_length']}, batch 1, {h['max_new_tokens']} tokens): echo / ar "
              f"{h['echo_over_ar']:.2f}x; the paper's {h['paper_echo_over_ar']:.1f}x "
              f"{'reached' if h['meets_paper_ratio'] else 'NOT reached'}"), ""]
    for c in data["cells"]:
        if c["status"] != "ran":
            lines.append(f"{c['name']:10s} skipped: {c['reason']}")
            continue
        for arm, v in c["results"].items():
            lines.append(f"{c['name']:10s} {arm:8s} b={c['block_length']} batch {c['batch']} {c['max_new_tokens']} tok: "
                         f"{v['median_seconds']:.3f} s/report, {v['median_tokens_per_second']:.1f} tok/s per report, "
                         f"{v['median_batch_tokens_per_second']:.1f} tok/s batch, first block "
                         f"{v['median_first_block_seconds'] * 1e3:.0f} ms, {v['forward_passes']:.0f} forwards")
    mem = data["memory_peak"]
    lines.append(f"memory peak ({mem['kind']}): {mem['gib']:.2f} GiB; model built in {data['build_seconds']:.1f} s, "
                 f"timed cells {data['timing_seconds']:.1f} s (budget {data['budget_s']:.0f} s)")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: str | Path) -> None:
    """PNG: tokens/s per Table 1 row, the paper's bars beside ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["table1"]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.bar([x - 0.2 for x in xs], [r["paper_tps"] for r in rows], width=0.4, label="paper (Table 1)")
    ax.bar([x + 0.2 for x in xs], [r["ours_tps"] or 0 for r in rows], width=0.4, label=f"ours ({data['device']})")
    ax.set_xticks(list(xs), [r["row"] for r in rows])
    ax.set_ylabel("tokens / s (batch 1)")
    ax.set_title(f"{data['weights']}, {data['headline']['max_new_tokens']} tokens", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", "--config-scale", dest="scale", choices=SCALE_NAMES, default="official",
                    help="official: Qwen2.5-VL-7B dimensions (default); tiny: a scaled-down model for CPU tests")
    ap.add_argument("--checkpoint", default=None, metavar="PATH_OR_ID",
                    help="real weights (folder or hub id, through echo_model.loading) instead of random ones")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="random weights' dtype")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="tokens per report (default 512)")
    ap.add_argument("--teacher-tokens", type=int, default=128, help="tokens of the teacher cell (default 128)")
    ap.add_argument("--batch", type=int, default=8, help="the larger batch size measured (default 8)")
    ap.add_argument("--runs", type=int, default=3, help="timed rounds per cell, medians reported (default 3)")
    ap.add_argument("--image-size", type=int, default=448, help="side of the one square view (default 448)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="seconds the timed cells may take; extra cells that would not fit are skipped (default 300)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--plot", default=None, metavar="OUT.png", help="write a bar chart, ours beside the paper's")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("max_new_tokens", "teacher_tokens", "batch", "runs"):
        if getattr(args, name) < 1:
            print(f"gpu_scale_bench: error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    if args.image_size < 56 or args.image_size % 28:
        print(f"gpu_scale_bench: error: --image-size must be a multiple of 28, >= 56, got {args.image_size}",
              file=sys.stderr)
        return 2
    versions = installed_versions()
    print("versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in versions.items()), flush=True)
    problems = version_problems(versions)
    if problems:
        print("gpu_scale_bench: error: " + "; ".join(problems), file=sys.stderr)
        return 1
    from echo_model.loading import CheckpointError

    try:
        data = measure(args)
    except CheckpointError as err:
        print(f"gpu_scale_bench: error: {err}", file=sys.stderr)
        return 1
    data["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(format_table(data))
    from echo_eval.bench import save_outputs

    for path in save_outputs(data, json_path=args.json, plot_path=args.plot, plot=plot):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
