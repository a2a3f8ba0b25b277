"""Time the two explanation methods on a checkpoint: draft one study, explain each block, print the figures.

Usage::

    python scripts/explain_cost.py [IMAGE ...] [--model embedded|FOLDER|HUB_ID] [--sampler echo] [--out FILE]

Without images a synthetic radiograph-like picture is used. Prints per-method median seconds per block and
the share of each map on the view, and writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _synthetic() -> Image.Image:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:448, 0:448]
    body = 180 - 90 * np.exp(-(((xx - 134) / 67) ** 2 + ((yy - 224) / 134) ** 2))
    body -= 90 * np.exp(-(((xx - 314) / 67) ** 2 + ((yy - 224) / 134) ** 2))
    return Image.fromarray(np.clip(body + rng.normal(0, 12, body.shape), 0, 255).astype(np.uint8), mode="L")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="views of one study (default: a synthetic picture)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--sampler", default="echo", choices=["echo", "teacher", "vanilla", "ar"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from echo_model.drafting import Drafter
    from echo_model.explain import ExplainConfig, Explainer, decode_states
    from echo_model.imaging import load_study
    from echo_model.sampling import SamplerConfig

    images = [v.image for v in load_study(args.images)] if args.images else [_synthetic()]
    drafter = Drafter(None if args.model == "embedded" else args.model, device="cpu")
    draft = drafter.draft(images, sampler=args.sampler, config=SamplerConfig(max_new_tokens=args.max_new_tokens))
    ck, prompt = drafter.prompt(images, sampler=args.sampler)
    explainer = Explainer(ck.model, ck.processor)
    blocks, steps = draft.result.blocks, draft.result.block_steps or None
    kept = len(draft.result.token_ids) - (1 if draft.result.stopped_by_eos else 0)
    figures: dict[str, dict[str, float]] = {}
    for method in ("attention", "integrated_gradients"):
        seconds = []
        start = 0
        for block in blocks:
            select = [j for j in range(start, start + len(block)) if j < kept]
            start += len(block)
            if not select:
                continue
            states = decode_states(prompt.input_ids, blocks, kind="ar" if args.sampler == "ar" else "block",
                                   block_length=ck.spec.block_length, mask_token_id=ck.processor.mask_token_id,
                                   select=select, steps=steps if args.sampler == "teacher" else None)
            out = explainer.explain(prompt, states, images=images, config=ExplainConfig(method=method))
            seconds.append(out.seconds)
        figures[method] = {"blocks": len(seconds), "median_s_per_block": round(statistics.median(seconds), 4),
                           "max_s_per_block": round(max(seconds), 4)}
        print(f"{method:22s} {len(seconds)} blocks  median {statistics.median(seconds):.3f} s/block  "
              f"max {max(seconds):.3f} s")
    record = {"model": ck.source, "revision": ck.spec.revision, "sampler": args.sampler, "images": len(images),
              "image_tokens": int((prompt.input_ids == ck.processor.image_token_id).sum()), "methods": figures}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
