"""``echo-report``: draft a chest X-ray report from the views of one study.

Examples::

    echo-report frontal.png lateral.dcm
    echo-report --sampler teacher --indication "cough, fever" --json study.dcm
    echo-report --model Midea-AIRC/ECHO_block8 --lang zh frontal.png

Without ``--model`` each sampler uses its embedded checkpoint (ar -> AR, teacher and vanilla -> teacher,
echo -> student). Errors go to stderr with exit status 2 (bad input) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports after argument parsing, so --help is instant.
    from .drafting import Drafter
    from .imaging import ImageInputError, load_study
    from .loading import CheckpointError
    from .sampling import SamplerConfig

    try:
        config = SamplerConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
        loaded = load_study(args.images)
        warnings = [f"{im.name}: {w}" for im in loaded for w in im.warnings]
        drafter = Drafter(args.model, device=args.device)
        draft = drafter.draft([im.image for im in loaded], sampler=args.sampler, indication=args.indication,
                              lang=args.lang, config=config, warnings=warnings)
    except (ImageInputError, ValueError, FileNotFoundError) as err:
        print(f"echo-report: error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"echo-report: error: {err}", file=sys.stderr)
        return 1
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
