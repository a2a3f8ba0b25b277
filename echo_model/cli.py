"""``echo-report``: draft a chest X-ray report from the views of one study.

Examples::

    echo-report frontal.png lateral.dcm
    echo-report --sampler teacher --indication "cough, fever" --json study.dcm
    echo-report --model Midea-AIRC/ECHO_block8 --lang zh frontal.png
    echo-report --batch /data/night/ --out drafts.jsonl --batch-size 8
    accelerate launch --num_processes 4 -m echo_model.cli --batch /data/night/ --out drafts.jsonl

``--batch`` drafts every study under the given folders and files into one JSON Lines file
(:mod:`echo_model.batch`, :mod:`echo_model.studies`): exit status 0 when every study was drafted, 3 when files
were skipped (non-chest modalities, other files) or studies could not be read (their rows hold an ``error``),
2 on usage errors.

Without ``--model`` each sampler uses its embedded checkpoint (ar -> AR, teacher and vanilla -> teacher,
echo -> student), and a one-step draft (echo, vanilla) that fails the report check is drafted again by the
teacher, then AR (``--fallback teacher,ar``, :func:`echo_model.drafting.default_fallback`; ``--fallback none``
keeps the one-step draft and its warnings). Errors go to stderr as one line, with exit status 2 (bad input: a folder, a missing or
unreadable file, not an image) or 1 (anything else). Loading the weights shows a progress line only when it
takes more than a second (a cached checkpoint loads silently).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from . import __version__
from .sampling import SAMPLERS, parse_sampler_names


def sampler_list(text: str) -> tuple[str, ...]:
    """``teacher,ar`` -> ``("teacher", "ar")``, ``none`` -> ``()``; an unknown name is a usage error naming it."""
    names = parse_sampler_names(text)
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown or (not names and text.strip().lower() != "none"):  # "" or "," name nothing; "none" is ()
        raise argparse.ArgumentTypeError(f"{text!r}: give sampler names separated by commas, from {', '.join(SAMPLERS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="echo-report",
        description="Draft a chest X-ray report (not for clinical use). The images are the views of one study.",
    )
    ap.add_argument("images", nargs="*", metavar="IMAGE", help="PNG, JPEG or DICOM files of one study")
    ap.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the embedded checkpoints)")
    ap.add_argument("--sampler", default="echo", choices=SAMPLERS)
    ap.add_argument("--indication", default=None, help="clinical indication put in the prompt")
    ap.add_argument("--lang", default="en", choices=["en", "zh"])
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    ap.add_argument("--quantize", default="none", choices=["none", "int8"],
                    help="int8: dynamic int8 weights (CPU only), offered while its quality gate passes "
                         "(scripts/int8_gate.py; docs/speed.md)")
    ap.add_argument("--fallback", type=sampler_list, default=None, metavar="SAMPLER[,SAMPLER]|none",
                    help="when a draft fails the report check, re-draft it with these samplers in turn; the output "
                         "keeps the drafts it replaced (JSON: 'replaced'). Default: teacher,ar for a one-step "
                         "sampler of the embedded family, none otherwise; 'none' keeps the first draft")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    batch = ap.add_argument_group("many studies (--batch)")
    batch.add_argument("--batch", nargs="+", metavar="DIR_OR_FILE", default=None,
                       help="draft every study under these folders / files into --out (one JSON line per study)")
    batch.add_argument("--out", default=None, metavar="DRAFTS.jsonl", help="the JSON Lines file --batch writes")
    batch.add_argument("--batch-size", type=int, default=8, help="studies decoded together (default 8)")
    batch.add_argument("--resume", action="store_true", help="continue --out: skip the studies already in it")
    batch.add_argument("--keep-paths", action="store_true",
                       help="write image paths and StudyInstanceUIDs / folders (default: de-identified rows)")
    batch.add_argument("--one-per-file", action="store_true", help="each PNG/JPEG file is a study (default: each folder)")
    batch.add_argument("--key-file", default=None, metavar="KEY",
                       help="the secret key of the study ids (default: DRAFTS.jsonl.key, made on the first run)")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return ap


#: Options that only --batch takes (name as typed -> argparse dest).
BATCH_ONLY = {"--out": "out", "--resume": "resume", "--keep-paths": "keep_paths", "--one-per-file": "one_per_file",
              "--key-file": "key_file"}


def usage_problem(args: argparse.Namespace) -> str | None:
    """The one-line usage error of a parsed command line, or None."""
    if args.fallback:
        from .sampling import check_fallback

        try:
            check_fallback(args.sampler, args.fallback)
        except ValueError as err:
            return f"--fallback: {err}"
    if args.batch is None:
        if not args.images:
            return "give the image files of one study, or --batch FOLDER --out DRAFTS.jsonl for many"
        used = [flag for flag, dest in BATCH_ONLY.items() if getattr(args, dest)]
        return f"{used[0]} needs --batch" if used else None
    if args.images:
        return f"{args.images[0]}: give the inputs of --batch after --batch, not as images of one study"
    if args.out is None:
        return "--batch needs --out DRAFTS.jsonl"
    if args.json:
        return "--json is for one study; --batch writes JSON lines to --out"
    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    return None


#: Seconds loading may take before the progress line is shown.
SLOW_LOAD_S = 1.0


class InputPathError(ValueError):
    """An image argument that is not a readable file; the message is one line naming it."""


def check_image_paths(paths: Sequence[str]) -> None:
    """Refuse folders, missing and unreadable files with one line naming the path (before any model loads)."""
    for path in paths:
        if os.path.isdir(path):
            raise InputPathError(f"{path}: is a folder; give the image files of one study (e.g. {path}/*.dcm)")
        if not os.path.exists(path):
            raise InputPathError(f"{path}: no such file")
        if not os.access(path, os.R_OK):
            raise InputPathError(f"{path}: cannot be read (permission denied)")


@contextlib.contextmanager
def quiet_loading(*, after_s: float = SLOW_LOAD_S, stream: object = None) -> Iterator[None]:
    """Hide transformers' per-call "Loading weights" bar; print one progress line only if loading is slow."""
    from transformers.utils import logging as hf_logging

    out = stream if stream is not None else sys.stderr
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    shown = threading.Event()

    def announce() -> None:
        shown.set()
        print("echo-report: loading the model weights...", file=out, flush=True)  # type: ignore[call-overload]

    timer = threading.Timer(after_s, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if was_enabled:
            hf_logging.enable_progress_bar()
        if shown.is_set():
            print(f"echo-report: weights loaded in {time.perf_counter() - start:.1f} s", file=out)  # type: ignore[call-overload]


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        name = f"{err.filename}: " if err.filename else ""
        return f"{name}{err.strerror[0].lower()}{err.strerror[1:]}"
    return " ".join(str(err).split())


def run_batch_command(args: argparse.Namespace) -> int:
    """``echo-report --batch``: draft every study into ``--out``; prints a summary line to stderr."""
    from .batch import EXIT_USAGE, BatchOptions, process_device, run_batch
    from .drafting import Drafter
    from .loading import CheckpointError
    from .sampling import SamplerConfig

    try:
        config = SamplerConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
        options = BatchOptions(sampler=args.sampler, batch_size=args.batch_size, indication=args.indication,
                               lang=args.lang, config=config, keep_paths=args.keep_paths,
                               fallback=tuple(args.fallback))
        drafter = Drafter(args.model, device=process_device(args.device), quantize=args.quantize)
        with quiet_loading():
            for name in (args.sampler, *args.fallback):
                drafter.checkpoint(name)
        report = run_batch(args.batch, out=args.out, options=options, drafter=drafter, resume=args.resume,
                           one_per_file=args.one_per_file, key_file=args.key_file, progress=sys.stderr)
    except CheckpointError as err:
        print(f"echo-report: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"echo-report: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"echo-report: interrupted; {args.out} holds whole lines only: add --resume to continue it",
              file=sys.stderr)
        return 130
    s = report.summary
    rate = (s.drafted + s.errors) / s.seconds if s.seconds > 0 else 0.0
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items()))
    print(f"echo-report: {report.found} studies found, {report.already_done} already in {args.out}, "
          f"{s.drafted} drafted"
          + (f" ({s.redrafted} re-drafted by --fallback)" if args.fallback else "")
          + f", {s.errors} not readable (error rows); {rate:.2f} studies/s, "
          f"{s.model_calls} model calls; files skipped: {skipped or 'none'}", file=sys.stderr)
    return report.status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = usage_problem(args)
    if problem is not None:
        print(f"echo-report: error: {problem}", file=sys.stderr)
        return 2
    if args.fallback is None:  # not named: the default for this model and sampler (valid by construction)
        from .drafting import default_fallback

        args.fallback = default_fallback(args.model, args.sampler)
    if args.batch is not None:
        return run_batch_command(args)
    # Heavy imports after argument parsing, so --help is instant.
    from .drafting import Drafter
    from .imaging import ImageInputError, load_study
    from .loading import CheckpointError
    from .sampling import SamplerConfig

    try:
        check_image_paths(args.images)
        config = SamplerConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
        loaded = load_study(args.images)
        warnings = [f"{im.name}: {w}" for im in loaded for w in im.warnings]
        drafter = Drafter(args.model, device=args.device, quantize=args.quantize)
        with quiet_loading():
            for name in (args.sampler, *args.fallback):  # a fallback's weights load now, not mid-draft
                drafter.checkpoint(name)
        draft = drafter.draft([im.image for im in loaded], sampler=args.sampler, indication=args.indication,
                              lang=args.lang, config=config, warnings=warnings, fallback=args.fallback)
    except CheckpointError as err:
        print(f"echo-report: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (ImageInputError, ValueError, OSError) as err:
        print(f"echo-report: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(draft.to_json(), ensure_ascii=False, indent=2))
        return 0
    tried = [*draft.replaced, {"sampler": draft.sampler}]
    for earlier, then in itertools.pairwise(tried):
        print(f"note: the {earlier['sampler']} draft failed the report check ({'; '.join(earlier['warnings'])}); "
              f"re-drafted with {then['sampler']}", file=sys.stderr)
    for w in draft.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"Findings: {draft.findings}")
    print(f"Impression: {draft.impression}")
    r = draft.result
    print(
        f"\n[{draft.sampler} | {draft.model} @ {draft.model_revision}] {r.tokens} tokens, "
        f"{r.forward_passes} denoising forwards ({r.tokens_per_forward:.2f} tokens/forward), "
        f"{r.seconds:.2f} s, first block {r.first_block_seconds * 1000:.0f} ms"
        + (f" ({r.seconds + sum(e['seconds'] for e in draft.replaced):.2f} s with the "
           f"draft{'s' if len(draft.replaced) > 1 else ''} it replaced)" if draft.replaced else "")
        + ". Draft only - not for clinical use.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
