"""Phase 1 of DCD (method.md §3.4, Algorithm 1): on-policy teacher trajectories.

The teacher (ECHO-Base) decodes each training prompt greedily with the confidence-threshold rule; for every
generated position we keep the token it committed, the step at which it committed it, and its distribution
*at that step* (top-K, renormalised later; the full vocabulary when K >= V). Stitched over a block these
conditionals form the non-factorised target the one-step student learns.

Trajectories with degenerate repetition loops, or that never emit ``<eos>``, are dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from echo_model.modeling import EchoModel, text_positions
from echo_model.processing import EchoProcessor
from echo_model.sampling import BlockDiffusionSampler, CommitStep, SamplerConfig, drain

from .items import TrainItem
from .objectives import DistillItem

log = logging.getLogger(__name__)


def is_degenerate(tokens: Sequence[int], *, n: int = 4, max_repeats: int = 3) -> bool:
    """True when some n-gram occurs more than ``max_repeats`` times (a repetition loop)."""
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return any(c > max_repeats for c in grams.values())


@dataclass
class TrajectoryStats:
    kept: int = 0
    no_eos: int = 0
    degenerate: int = 0


class _Recorder:
    """Collects (step, top-K distribution) per (sample, response index) from :class:`CommitStep` callbacks."""

    def __init__(self, batch: int, length: int, top_k: int):
        self.steps = torch.zeros(batch, length, dtype=torch.long)
        self.top_ids = torch.zeros(batch, length, top_k, dtype=torch.long)
        self.top_probs = torch.zeros(batch, length, top_k)
        self.top_k = top_k

    def __call__(self, step: CommitStep) -> None:
        keep = step.committed & (step.response_index >= 0) & (step.response_index < self.steps.shape[1])  # (B, b)
        if not keep.any():
            return
        probs = torch.softmax(step.logits[keep].float(), -1)  # (n, V)
        p, ids = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)  # (n, K)
        rows, cols = keep.nonzero(as_tuple=True)
        j = step.response_index[rows, cols]
        self.steps[rows.cpu(), j.cpu()] = step.step
        self.top_ids[rows.cpu(), j.cpu(), : p.shape[1]] = ids.cpu()
        self.top_probs[rows.cpu(), j.cpu(), : p.shape[1]] = p.cpu()


def with_response(item: TrainItem, response: torch.Tensor) -> TrainItem:
    """``item`` with another response (M-RoPE ids extended for its length)."""
    P = item.prompt.length
    delta = int(item.positions[0, P]) - P  # text position j has id j + delta after the prompt
    positions = torch.cat([item.positions[:, :P], text_positions(P, len(response), delta)], 1)  # (3, P+R)
    return TrainItem(prompt=item.prompt, positions=positions, response=response, record_id=item.record_id)


@torch.no_grad()
def record_trajectories(
    teacher: EchoModel,
    processor: EchoProcessor,
    items: Sequence[TrainItem],
    *,
    top_k: int = 64,
    threshold: float = 0.85,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    max_repeats: int = 3,
) -> tuple[list[DistillItem], TrajectoryStats]:
    """Roll the teacher out on every item's prompt; returns the kept trajectories and drop counts."""
    b = teacher.block_length
    eos = processor.eos_token_id
    sampler = BlockDiffusionSampler(teacher, processor, SamplerConfig(max_new_tokens=max_new_tokens, threshold=threshold,
                                                                       steps=b, fused=False), name="teacher")
    out: list[DistillItem] = []
    stats = TrajectoryStats()
    for lo in tqdm(range(0, len(items), batch_size), desc="teacher trajectories", leave=False):
        chunk = list(items[lo : lo + batch_size])
        rec = _Recorder(len(chunk), max_new_tokens + b, top_k)
        results = drain(sampler.stream([it.prompt for it in chunk], on_commit=rec))
        for i, (it, res) in enumerate(zip(chunk, results)):
            if not res.stopped_by_eos:
                stats.no_eos += 1
                continue
            if is_degenerate(res.token_ids, max_repeats=max_repeats):
                stats.degenerate += 1
                continue
            tokens = torch.tensor([t for blk in res.blocks for t in blk])  # whole blocks, past <eos> too
            R = len(tokens)
            first_eos = int((tokens == eos).nonzero()[0])
            steps, ids, probs = rec.steps[i, :R].clone(), rec.top_ids[i, :R].clone(), rec.top_probs[i, :R].clone()
            # After <eos> the teacher's tokens are never read: target <eos> there, as in RAD's block padding.
            tokens[first_eos:] = eos
            ids[first_eos + 1 :] = 0
            ids[first_eos + 1 :, 0] = eos
            probs[first_eos + 1 :] = 0
            probs[first_eos + 1 :, 0] = 1.0
            out.append(DistillItem(item=with_response(it, tokens), steps=steps.clamp(min=1), top_ids=ids, top_probs=probs))
            stats.kept += 1
    log.info("trajectories: kept %d, dropped %d without <eos>, %d degenerate", stats.kept, stats.no_eos, stats.degenerate)
    return out, stats
