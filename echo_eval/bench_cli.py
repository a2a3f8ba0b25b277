"""``echo-bench``: measure ar / teacher / vanilla / echo on the same images and fit the forward cost model.

Examples::

    echo-bench                                   # < 1 min on 2 CPU cores with the embedded checkpoints
    echo-bench --full --json results/speed.json --plot results/speed.png
    echo-bench --threads 1 --quantize int8 --arms ar echo
    echo-bench --model Midea-AIRC/ECHO_block8 --ar-model path/to/lingshu-7b --device cuda --full
    echo-bench --profile                         # where the time goes, per arm (torch.profiler)

See docs/speed.md for the method. Exit status 2 on bad arguments or inputs, 1 on checkpoint errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from echo_model import __version__
from echo_model.sampling import SAMPLERS

if TYPE_CHECKING:
    from .bench import BenchConfig

PROG = "echo-bench"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Speed of the ar, teacher, vanilla and echo samplers (interleaved, fixed and natural length) "
                    "and the per-forward cost model t(T) = a + c*T with the speedup cap it implies.",
    )
    ap.add_argument("--model", default=None,
                    help="one checkpoint (folder or hub id) for all block arms (default: the embedded family, "
                         "each arm on its role's checkpoint)")
    ap.add_argument("--ar-model", default=None, help="checkpoint of the ar arm (default: --model, else embedded AR)")
    ap.add_argument("--arms", nargs="+", default=None, choices=SAMPLERS,
                    help="arms to run (default: all four)")
    ap.add_argument("--images", nargs="+", default=None, metavar="FILE",
                    help="PNG/JPEG/DICOM files, each a single-view study; a batch cycles through them "
                         "(default: seeded synthetic radiographs)")
    ap.add_argument("--batch", type=int, default=None, help="the larger batch size measured besides 1 (default 4)")
    ap.add_argument("--cycle-images", action="store_true",
                    help="each timed round drafts the next batch of --images (round r: images r*B ... r*B+B-1), so "
                         "--runs equal to the number of images drafts every study once (default: every round the "
                         "first B)")
    ap.add_argument("--runs", type=int, default=None, help="timed rounds per cell (default 5; --full 10)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per cell before timing (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="tokens per report (default 64; --full 256)")
    ap.add_argument("--modes", nargs="+", default=None, choices=["fixed", "natural"],
                    help="fixed: <eos> ignored, same length for every arm; natural: stop at <eos> (default both)")
    ap.add_argument("--query-lengths", type=int, nargs="+", default=None, metavar="T",
                    help="query lengths timed for the cost model (default 1 2 4 8 16 32)")
    ap.add_argument("--probe-repeats", type=int, default=None, help="timed forwards per T (default 7; --full 15)")
    ap.add_argument("--threads", default="auto",
                    help="torch threads for every arm: a number, 'torch' (torch's default), or 'auto' (default: on "
                         "a CPU, the cores the 1-minute load average leaves free, at least 1; torch's on a GPU)")
    ap.add_argument("--quantize", default="none", choices=["none", "int8"],
                    help="int8: dynamic int8 quantisation of every nn.Linear, all arms alike (CPU only)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    ap.add_argument("--full", action="store_true", help="README settings: 256 tokens, 10 runs, batch 1 and 4")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--plot", default=None, metavar="OUT.png", help="write a PNG chart to OUT.png")
    ap.add_argument("--profile", action="store_true",
                    help="instead of the benchmark, print a torch.profiler table of one fixed-length run per arm")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return ap


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed arguments into a :class:`~echo_eval.bench.BenchConfig` (``--full`` first, explicit flags win)."""
    from .bench import ARMS, FULL_OVERRIDES, BenchConfig

    values: dict[str, object] = dict(FULL_OVERRIDES) if args.full else {}
    if args.batch is not None:
        values["batches"] = (1,) if args.batch == 1 else (1, args.batch)
    explicit = {"runs": args.runs, "max_new_tokens": args.max_new_tokens, "probe_repeats": args.probe_repeats,
                "modes": tuple(args.modes) if args.modes else None,
                "query_lengths": tuple(args.query_lengths) if args.query_lengths else None,
                "arms": tuple(a for a in ARMS if a in args.arms) if args.arms else None}
    values.update({k: v for k, v in explicit.items() if v is not None})
    return BenchConfig(model=args.model, ar_model=args.ar_model, warmup=args.warmup, threads=resolve_threads(args),
                       quantize=args.quantize, device=args.device, cycle_images=args.cycle_images, **values)


def resolve_threads(args: argparse.Namespace) -> int | None:
    """``--threads``: an integer, ``torch`` (None: leave torch's setting) or ``auto`` (see ``auto_threads``)."""
    value = str(args.threads).strip().lower()
    if value == "torch":
        return None
    if value == "auto":
        from echo_model.device import auto_threads

        return auto_threads(args.device)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--threads must be a number, 'auto' or 'torch', got {args.threads!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch is not None and args.batch < 1:
        print(f"{PROG}: error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    # Heavy imports after argument parsing, so --help is instant.
    from echo_model.imaging.synthetic import phantom_cxr

    from .bench import format_report, load_arms, profile_arm, run_benchmark, save_outputs
    from echo_model.loading import CheckpointError

    try:
        config = config_from_args(args)
        images, label = None, "synthetic"
        if args.images:
            from echo_model.imaging import load_image

            images = [load_image(p).image for p in args.images]
            label = f"{len(images)} file(s)"
        if args.profile:
            import torch

            if config.threads is not None:
                torch.set_num_threads(config.threads)
            arms = load_arms(config)
            imgs = images or [phantom_cxr((512, 512))]
            for arm in arms.values():
                print(profile_arm(arm, imgs, max_new_tokens=config.max_new_tokens))
            return 0
        if str(args.threads).lower() == "auto" and config.threads is not None:
            from echo_model.device import load_average

            print(f"{PROG}: threads auto -> {config.threads} (1-min load average {load_average()}, "
                  f"{os.cpu_count()} CPUs); pass --threads N to choose", file=sys.stderr)
        if config.runs < 5:
            print(f"{PROG}: note: {config.runs} timed runs; use >= 5 for reportable medians", file=sys.stderr)
        report = run_benchmark(config, images=images, image_label=label, progress=not args.no_progress)
    except CheckpointError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    data = report.to_json()
    print(format_report(data))
    print(f"\n({data['wall_seconds']:.1f} s in all)")
    for path in save_outputs(data, json_path=args.json, plot_path=args.plot):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
