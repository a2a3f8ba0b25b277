"""Do the explanation methods find the quadrant a toy model's answer depends on? Quadrants x threads x seeds.

Usage::

    python scripts/explain_quadrant_sweep.py [--quadrants 0 1 2 3] [--threads 1 2 4] [--seeds 0 1 2]
        [--images 3] [--out results/explain_quadrant_sweep.json]

For every (quadrant, torch thread count, training seed) a quadrant toy is trained (:func:`train_quadrant_toy`),
its convergence checked (:func:`check_toy`: the answer flips with the quadrant's brightness and ignores the
other quadrants) and both methods of :mod:`echo_model.explain` explain its answer on ``--images`` images with
a bright target quadrant (:func:`quadrant_shares`). Prints a Markdown table of the share of each map in the
target quadrant (min / median per method and per thread count) and writes every measurement as JSON.

The toy (also the localisation test's, ``tests/test_explain.py``): 112-px images of four 56-px quadrants at grey
levels; the target quadrant also carries a fixed checker texture and its brightness decides between two 4-token
answers, the other three take random levels that carry no information (dimmed copies included, so the toy
stays blind to them along integrated gradients' path from a black image). The vision tower attends within
56-px windows (windows = quadrants, so ``window_index`` really permutes the patches) and the language model has
one layer, so the only route from the image to the answer is the answer rows' attention to the image tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

QUADRANTS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
#: The report sentences the toy tokenizer is trained on (both answers among them).
TOY_SENTENCES: tuple[str, ...] = (
    "Findings: The heart is normal in size. The lungs are clear.",
    "Impression: No acute cardiopulmonary abnormality.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "Mild cardiomegaly. Pulmonary vascular congestion without frank edema.",
)
YES_TEXT, NO_TEXT = "Mild cardiomegaly. The", "The lungs are clear."


@dataclass(frozen=True)
class ToyConfig:
    """How the quadrant toy is trained.

    Attributes:
        max_steps: AdamW steps at most.
        batch_size: images per step.
        lr: AdamW peak learning rate: linear warm-up over ``warmup`` steps, then cosine decay to ``lr / 10`` at
            ``max_steps``.
        warmup: warm-up steps.
        clip_norm: gradient norm clipping (a tiny model at lr 3e-3 otherwise jumps out of a learned solution).
        window: training stops once, over ``window`` consecutive batches, every cross-entropy is below
            ``loss_tol`` and every twin gap below ``gap_tol``.
        loss_tol: the largest batch cross-entropy (mean per answer token) counted as learned.
        gap_tol: the largest twin gap counted as blind to the other quadrants: how much an answer's
            log-probability changes when only the other quadrants are redrawn (half of each batch are twins).
        twin_weight: weight of the twin gaps' Huber loss, added once the cross-entropy is learned.
        threshold: the target quadrant's effective grey level (level x contrast) above which the answer is "yes".
        margin: training images keep the effective level at least this far from the threshold.
        min_contrast: half of each batch is dimmed by a contrast drawn from ``[min_contrast, 1]``. At 0 the
            dimmed copies cover integrated gradients' whole path from a black image, so the toy is trained to be
            blind to the other quadrants everywhere along it (from 0.2 the path's darkest stretch was never
            seen, and the seed-0 top-right toy let up to 24 % of its attribution land there).
    """

    max_steps: int = 3000
    batch_size: int = 8
    lr: float = 3e-3
    warmup: int = 100
    clip_norm: float = 1.0
    window: int = 50
    loss_tol: float = 0.01
    gap_tol: float = 0.05
    twin_weight: float = 0.1
    threshold: float = 125.0
    margin: float = 15.0
    min_contrast: float = 0.0


@dataclass
class Toy:
    """A trained quadrant toy.

    Attributes:
        checkpoint: the model and processor (an :class:`echo_model.checkpoint.EchoCheckpoint`).
        quadrant: index into :data:`QUADRANTS` of the quadrant the answer depends on.
        seed: the training seed (model initialisation and data).
        yes, no: the two answers' token ids (4 each).
        steps: optimiser steps taken; seconds: training time.
        recent_losses: the last ``window`` batch cross-entropies; recent_gaps: their largest twin gaps.
    """

    checkpoint: object
    quadrant: int
    seed: int
    yes: list[int]
    no: list[int]
    steps: int
    seconds: float
    recent_losses: list[float]
    recent_gaps: list[float]


@dataclass(frozen=True)
class ToyCheck:
    """Whether a toy learned its task, on fresh images.

    Attributes:
        flips: share of images whose greedy answer is "yes" exactly when the target quadrant is bright
            (levels 150..210 vs 40..100, other quadrants random 40..210).
        kept: share of those images whose greedy answer stays the same when only the other quadrants' levels
            are redrawn (the toy must be blind to them).
        max_other_shift: the largest change of log p("yes") under that redraw (must stay below 0.1).
    """

    flips: float
    kept: float
    max_other_shift: float

    @property
    def ok(self) -> bool:
        return self.flips == 1.0 and self.kept == 1.0 and self.max_other_shift < 0.1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def toy_tokenizer():
    """The toy's byte-level BPE tokenizer (trained on :data:`TOY_SENTENCES`; deterministic)."""
    from echo_model.tokenization import train_report_tokenizer

    return train_report_tokenizer(list(TOY_SENTENCES) * 20, vocab_size=320)


def quadrant_array(rng: np.random.RandomState, levels: Sequence[float], marked: int, *,
                   contrast: float = 1.0) -> np.ndarray:
    """``(112, 112)`` uint8: four 56-px quadrants at grey ``levels`` plus noise; the ``marked`` one also carries
    a fine checker texture; everything scaled by ``contrast``."""
    img = rng.normal(0, 15, (112, 112))
    yy, xx = np.mgrid[0:56, 0:56]
    checker = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 35.0, -35.0)
    for q, level in enumerate(levels):
        r0, c0 = (q // 2) * 56, (q % 2) * 56
        img[r0:r0 + 56, c0:c0 + 56] += level + (checker if q == marked else 0.0)
    return np.clip(img * contrast, 0, 255).astype(np.uint8)


def quadrant_image(rng: np.random.RandomState, levels: Sequence[float], marked: int, *,
                   contrast: float = 1.0) -> Image.Image:
    """:func:`quadrant_array` as a grey PIL image."""
    return Image.fromarray(quadrant_array(rng, levels, marked, contrast=contrast), mode="L")


class PixelEncoder:
    """The processor's ``pixel_values`` of 112-px grey images, ~100x faster (training encodes 8 images a step).

    A grey image that needs no resizing becomes pixel values by a gather (RGB copies, temporal duplication,
    patchification) and a per-feature affine map (rescale, normalise). Both are read off the processor itself
    (images whose pixels encode their own index, black and white), and checked against it on a noise image.
    """

    def __init__(self, processor):
        def encode(a: np.ndarray) -> torch.Tensor:
            return processor.encode([Image.fromarray(a.astype(np.uint8), mode="L")]).pixel_values.double()

        index = np.arange(112 * 112).reshape(112, 112)
        black, white = encode(np.zeros((112, 112))), encode(np.full((112, 112), 255))
        scale = (white - black) / 255.0  # (N, D)
        def level(pv: torch.Tensor) -> torch.Tensor:
            return torch.round((pv - black) / scale)

        self.index = (level(encode(index // 256)) * 256 + level(encode(index % 256))).long()  # (N, D)
        self.black, self.scale = black.float(), scale.float()
        probe = np.random.RandomState(0).randint(0, 256, (112, 112))
        if not torch.allclose(self(probe[None]), encode(probe).float(), atol=1e-4):
            raise RuntimeError("the processor does more than gather and rescale 112-px grey images")

    def __call__(self, arrays: np.ndarray) -> torch.Tensor:
        """``(B, 112, 112)`` uint8 -> ``(B * N, D)`` pixel values, image by image."""
        flat = torch.as_tensor(np.asarray(arrays, dtype=np.float32).reshape(len(arrays), -1))  # (B, 112*112)
        return (self.black + self.scale * flat[:, self.index]).reshape(-1, self.index.shape[1])


def _answer_ids(tokenizer) -> tuple[list[int], list[int]]:
    yes = tokenizer(YES_TEXT, add_special_tokens=False)["input_ids"][:4]
    no = tokenizer(NO_TEXT, add_special_tokens=False)["input_ids"][:4]
    if len(yes) != 4 or len(no) != 4 or yes == no:
        raise ValueError("the toy tokenizer must give two different 4-token answers")
    return yes, no


def train_quadrant_toy(quadrant: int, *, seed: int, tokenizer=None, config: ToyConfig = ToyConfig(),
                       log_every: int = 0) -> Toy:
    """Train a one-text-layer tiny ECHO model whose answer depends on one quadrant's brightness only.

    Deterministic for a given (quadrant, seed, torch thread count); different thread counts reduce in other
    orders and so take other, equally valid, training paths. Raises ``RuntimeError`` when the losses do not
    settle below ``config.loss_tol`` within ``config.max_steps``.
    """
    from echo_model.checkpoint import build_tiny_checkpoint
    from echo_model.masks import block_causal_mask, to_attention_bias
    from echo_model.modeling import TinyModelSize
    from echo_model.spec import EchoSpec

    tokenizer = tokenizer if tokenizer is not None else toy_tokenizer()
    yes, no = _answer_ids(tokenizer)
    torch.manual_seed(seed)
    rng = np.random.RandomState(1000 * seed + quadrant)
    size = TinyModelSize(text_hidden=64, text_layers=1, text_heads=4, text_kv_heads=2, text_intermediate=128,
                         vision_hidden=32, vision_depth=2, vision_heads=2, vision_intermediate=64,
                         max_positions=2048)
    ck = build_tiny_checkpoint(tokenizer, EchoSpec(block_length=4, role="student"), size=size, seed=seed,
                               image_size=112)
    visual = ck.model.model.model.visual
    visual.fullatt_block_indexes, visual.window_size = [], 56  # every block windowed; windows = quadrants
    model, proc = ck.model, ck.processor
    first = proc.encode([quadrant_image(rng, np.zeros(4), quadrant)])  # the prompt layout (same for all)
    P, L, B = first.length, first.length + 4, config.batch_size
    pixels, grid = PixelEncoder(proc), first.image_grid_thw.repeat(B, 1)
    ids = torch.cat([first.input_ids, torch.full((4,), proc.mask_token_id)])[None].expand(B, L)
    rope, delta = model.rope_index(first, proc.image_token_id)
    positions = torch.cat([rope, (torch.arange(P, L) + delta)[None].expand(3, -1)], 1)[:, None].expand(3, B, L)
    bias = to_attention_bias(block_causal_mask(L, 4)[None].expand(B, L, L), model.dtype)
    optimiser = torch.optim.AdamW(model.model.parameters(), lr=config.lr)

    def lr_factor(i: int) -> float:
        if i < config.warmup:
            return (i + 1) / config.warmup
        progress = min(1.0, (i - config.warmup) / max(1, config.max_steps - config.warmup))
        return 0.1 + 0.45 * (1 + float(np.cos(np.pi * progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    model.model.train()
    recent: list[float] = []
    gaps: list[float] = []
    learned = False
    start, step = time.perf_counter(), 0
    half = B // 2
    for step in range(1, config.max_steps + 1):
        # Twins: each image and a copy with the other quadrants redrawn (same target level, same contrast) must get
        # the same answer log-probabilities. Cross-entropy alone saturates once the answers are right and leaves
        # the toy leaning on the other quadrants' levels (integrated gradients then rightly finds them).
        levels = rng.uniform(40, 210, (half, 4))
        twins = rng.uniform(40, 210, (half, 4))
        twins[:, quadrant] = levels[:, quadrant]
        levels = np.concatenate([levels, twins])  # (B, 4)
        # Dimmed copies too: integrated gradients walks from a black image, so the toy must stay blind to the
        # other quadrants along that path as well.
        contrast = np.tile(np.where(rng.rand(half) < 0.5, rng.uniform(config.min_contrast, 1.0, half), 1.0), 2)
        # A margin around the threshold: a cleanly separable task, so the cross-entropy can settle.
        for i in range(half):
            while abs(levels[i, quadrant] * contrast[i] - config.threshold) < config.margin:
                levels[i, quadrant] = levels[i + half, quadrant] = rng.uniform(40, 210)
        arrays = np.stack([quadrant_array(rng, lv, quadrant, contrast=c) for lv, c in zip(levels, contrast)])
        target = torch.tensor([yes if lv[quadrant] * c > config.threshold else no
                               for lv, c in zip(levels, contrast)])  # (B, 4)
        logits = model(ids, position_ids=positions, attention_bias=bias, cache=None,
                       pixel_values=pixels(arrays), image_grid_thw=grid)
        logp = logits[:, P:].float().log_softmax(-1)  # (B, 4, V)
        answers = torch.stack([logp[:, torch.arange(4), torch.tensor(a)].sum(-1) for a in (yes, no)], -1)  # (B, 2)
        twin_gap = answers[:half] - answers[half:]  # (half, 2) log p of each answer, image minus twin
        ce = torch.nn.functional.cross_entropy(logp.reshape(-1, logp.shape[-1]), target.reshape(-1))
        learned = learned or (len(recent) == config.window and max(recent) < config.loss_tol)
        # The twin term joins once the answers are right (from the start it can pull the toy into answering
        # blind to the image, a constant answer having zero twin gap); Huber keeps a large gap's pull bounded.
        twin = torch.nn.functional.smooth_l1_loss(twin_gap, torch.zeros_like(twin_gap))
        loss = ce + (config.twin_weight * twin if learned else 0.0)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.model.parameters(), config.clip_norm)
        optimiser.step()
        schedule.step()
        recent = [*recent[-(config.window - 1):], ce.item()]
        gaps = [*gaps[-(config.window - 1):], twin_gap.abs().max().item()]
        if log_every and step % log_every == 0:
            print(f"  {QUADRANTS[quadrant]} seed {seed} step {step}: recent losses up to {max(recent):.4f}, "
                  f"twin gaps up to {max(gaps):.4f}", file=sys.stderr, flush=True)
        if len(recent) == config.window and max(recent) < config.loss_tol and max(gaps) < config.gap_tol:
            break
    model.model.eval()
    toy = Toy(ck, quadrant, seed, yes, no, step, time.perf_counter() - start, recent, gaps)
    if not (len(recent) == config.window and max(recent) < config.loss_tol and max(gaps) < config.gap_tol):
        raise RuntimeError(f"the {QUADRANTS[quadrant]} toy (seed {seed}) did not learn its quadrant in "
                           f"{config.max_steps} steps (recent losses up to {max(recent):.3f}, twin gaps up to "
                           f"{max(gaps):.3f})")
    return toy


def _answer(toy: Toy, image: Image.Image) -> tuple[list[int], float]:
    """The toy's greedy answer (4 tokens, one forward with the block masked) and log p("yes")."""
    from echo_model.explain import Explainer, decode_states

    ck = toy.checkpoint
    prompt = ck.processor.encode([image])
    states = decode_states(prompt.input_ids, [toy.yes], kind="block", block_length=4,
                           mask_token_id=ck.processor.mask_token_id, select=range(4))
    logits = Explainer(ck.model, ck.processor).state_logits(prompt, states)  # (4, V)
    logp = logits.float().log_softmax(-1)
    return logits.argmax(-1).tolist(), float(logp[torch.arange(4), torch.tensor(toy.yes)].sum())


def check_toy(toy: Toy, *, n: int = 8, seed: int = 12345) -> ToyCheck:
    """Does the answer flip with the target quadrant's brightness, and only with it? (see :class:`ToyCheck`)"""
    rng = np.random.RandomState(seed)
    right, kept, shift = 0, 0, 0.0
    for i in range(n):
        levels = rng.uniform(40, 210, 4)
        bright = i % 2 == 0
        levels[toy.quadrant] = rng.uniform(150, 210) if bright else rng.uniform(40, 100)
        answer, logp = _answer(toy, quadrant_image(rng, levels, toy.quadrant))
        right += answer == (toy.yes if bright else toy.no)
        others = rng.uniform(40, 210, 4)
        others[toy.quadrant] = levels[toy.quadrant]
        answer_other, logp_other = _answer(toy, quadrant_image(rng, others, toy.quadrant))
        kept += answer_other == answer
        shift = max(shift, abs(logp_other - logp))
    return ToyCheck(flips=right / n, kept=kept / n, max_other_shift=shift)


def quadrant_shares(toy: Toy, *, images: int = 3, seed: int | None = None) -> dict[str, list[float]]:
    """Share of each method's map in the toy's quadrant, on ``images`` images with a bright target quadrant.

    Integrated gradients starts from a black image (the toy's finding is brightness, which a blur keeps) with
    128 points: the toy is saturated, so its answer flips within a narrow stretch of the path and a coarse
    integral misses the flip.
    """
    from echo_model.explain import ExplainConfig, Explainer, decode_states, quadrant_mass

    ck = toy.checkpoint
    rng = np.random.RandomState(seed if seed is not None else 7919 + 1000 * toy.seed + toy.quadrant)
    explainer = Explainer(ck.model, ck.processor)
    configs = {"attention": ExplainConfig(method="attention"),
               "integrated_gradients": ExplainConfig(method="integrated_gradients", baseline="black", n_steps=128,
                                                     internal_batch_size=32)}
    shares: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(images):
        levels = rng.uniform(40, 210, 4)
        levels[toy.quadrant] = rng.uniform(170, 210)  # a positive finding in the quadrant, random levels elsewhere
        image = quadrant_image(rng, levels, toy.quadrant)
        prompt = ck.processor.encode([image])
        states = decode_states(prompt.input_ids, [toy.yes], kind="block", block_length=4,
                               mask_token_id=ck.processor.mask_token_id, select=range(4))
        for name, config in configs.items():
            out = explainer.explain(prompt, states, images=[image], config=config)
            shares[name].append(quadrant_mass(out.maps[0])[QUADRANTS[toy.quadrant]])
    return shares


def run_one(quadrant: int, *, threads: int, seed: int, images: int = 3, tokenizer=None) -> dict:
    """Train, check and explain one toy with ``threads`` torch threads throughout; a JSON-ready record."""
    with torch_threads(threads):
        try:
            toy = train_quadrant_toy(quadrant, seed=seed, tokenizer=tokenizer)
        except RuntimeError as err:
            return {"quadrant": QUADRANTS[quadrant], "threads": threads, "seed": seed, "learned": False,
                    "error": str(err)}
        check = check_toy(toy)
        start = time.perf_counter()
        shares = quadrant_shares(toy, images=images)
    return {"quadrant": QUADRANTS[quadrant], "threads": threads, "seed": seed, "learned": True,
            "steps": toy.steps, "train_seconds": round(toy.seconds, 1),
            "explain_seconds": round(time.perf_counter() - start, 1),
            "check": {"flips": check.flips, "kept": check.kept, "max_other_shift": round(check.max_other_shift, 5), "ok": check.ok},
            "shares": {k: [round(v, 4) for v in vs] for k, vs in shares.items()}}


def markdown_table(records: Sequence[dict], methods: Sequence[str] = ("attention", "integrated_gradients")) -> str:
    """Share of the map in the target quadrant, min / median over seeds and images, per quadrant and threads."""
    threads = sorted({r["threads"] for r in records})
    head = "| quadrant | " + " | ".join(f"{m} @ {t} thr" for m in methods for t in threads) + " |"
    lines = [head, "|---|" + "---|" * (len(methods) * len(threads))]
    rows = [*QUADRANTS, "all"]
    for q in rows:
        cells = []
        for m in methods:
            for t in threads:
                vals = [v for r in records if r["learned"] and r["threads"] == t and q in ("all", r["quadrant"])
                        for v in r["shares"][m]]
                cells.append(f"{min(vals):.2f} / {statistics.median(vals):.2f}" if vals else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quadrants", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/explain_quadrant_sweep.json"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="no training: table and JSON from the records of these JSON / JSON-lines files "
                             "(e.g. parts of the sweep run side by side)")
    args = parser.parse_args(argv)
    records: list[dict] = []
    start = time.perf_counter()
    if args.merge:
        for path in args.merge:
            text = path.read_text()
            records += (json.loads(text)["records"] if text.lstrip().startswith("{\n") else
                        [json.loads(line) for line in text.splitlines() if line.strip()])
        args.quadrants = sorted({QUADRANTS.index(r["quadrant"]) for r in records})
        args.threads = sorted({r["threads"] for r in records})
        args.seeds = sorted({r["seed"] for r in records})
    else:
        tokenizer = toy_tokenizer()
        partial = args.out.with_suffix(".partial.jsonl")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("")
        for quadrant in args.quadrants:
            for threads in args.threads:
                for seed in args.seeds:
                    record = run_one(quadrant, threads=threads, seed=seed, images=args.images, tokenizer=tokenizer)
                    records.append(record)
                    print(json.dumps(record), file=sys.stderr, flush=True)
                    with partial.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
    table = markdown_table(records)
    print(table)
    learned = [r for r in records if r["learned"]]
    summary = {m: {"min": min(v for r in learned for v in r["shares"][m]),
                   "median": statistics.median(v for r in learned for v in r["shares"][m]),
                   "share_of_images_at_least_0.8": float(np.mean([v >= 0.8 for r in learned
                                                                  for v in r["shares"][m]]))}
               for m in ("attention", "integrated_gradients")} if learned else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python scripts/explain_quadrant_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__, "quadrants": [QUADRANTS[q] for q in args.quadrants], "threads": args.threads,
        "seeds": args.seeds, "images": args.images, "seconds": round(time.perf_counter() - start, 1),
        "not_learned": len(records) - len(learned), "summary": summary, "table": table, "records": records,
    }, indent=1) + "\n")
    return 0 if len(learned) == len(records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
