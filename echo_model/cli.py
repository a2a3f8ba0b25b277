"""``echo-report``: draft a chest X-ray report from the views of one study.

Examples::

    echo-report frontal.png lateral.dcm
    echo-report --sampler teacher --indication "cough, fever" --json study.dcm
    echo-report --model Midea-AIRC/ECHO_block8 --lang zh frontal.png

Without ``--model`` each sampler uses its embedded checkpoint (ar -> AR, teacher and vanilla -> teacher,
echo -> student). Errors go to stderr as one line, with exit status 2 (bad input: a folder, a missing or
unreadable file, not an image) or 1 (anything else). Loading the weights shows a progress line only when it
takes more than a second (a cached checkpoint loads silently).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from . import __version__
from .sampling import SAMPLERS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="echo-report",
        description="Draft a chest X-ray report (not for clinical use). The images are the views of one study.",
    )
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or DICOM files of one study")
    ap.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the embedded checkpoints)")
    ap.add_argument("--sampler", default="echo", choices=SAMPLERS)
    ap.add_argument("--indication", default=None, help="clinical indication put in the prompt")
    ap.add_argument("--lang", default="en", choices=["en", "zh"])
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return ap


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        drafter = Drafter(args.model, device=args.device)
        with quiet_loading():
            drafter.checkpoint(args.sampler)
        draft = drafter.draft([im.image for im in loaded], sampler=args.sampler, indication=args.indication,
                              lang=args.lang, config=config, warnings=warnings)
    except CheckpointError as err:
        print(f"echo-report: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (ImageInputError, ValueError, OSError) as err:
        print(f"echo-report: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(draft.to_json(), ensure_ascii=False, indent=2))
        return 0
    for w in draft.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"Findings: {draft.findings}")
    print(f"Impression: {draft.impression}")
    r = draft.result
    print(
        f"\n[{draft.sampler} | {draft.model} @ {draft.model_revision}] {r.tokens} tokens, "
        f"{r.forward_passes} denoising forwards ({r.tokens_per_forward:.2f} tokens/forward), "
        f"{r.seconds:.2f} s, first block {r.first_block_seconds * 1000:.0f} ms. Draft only - not for clinical use.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
