"""Losses of the three stages (method.md §3). Pure functions of logits and targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Stage I: mean CE of next-token prediction. ``logits (B, L, V)``, ``targets (B, L)`` with -100 ignored
    (targets are already shifted: ``targets[:, j]`` is the token that follows position j)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def masked_diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, n_response: torch.Tensor) -> torch.Tensor:
    """Stage II (RAD): ``(1 / sum R) * sum_{i masked} CE(logits_i, x0_i) / t_i`` (MDLM ELBO, SDAR normalisation).

    Args:
        logits: ``(B, L, V)``; targets ``(B, L)`` with -100 where no loss is taken (unmasked, context, clean
            copy, padding); weights ``(B, L)`` = 1 / t of each position's block; n_response ``(B,)`` = R.
    """
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")  # (B*L,)
    return (ce * weights.flatten()).sum() / n_response.sum().clamp(min=1)


def dcd_loss(
    logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_probs: torch.Tensor,
    weights: torch.Tensor,
    committed: torch.Tensor,
    *,
    eos_token_id: int,
    eos_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage III (DCD): step-weighted forward KL to the stitched teacher target + CE on ``<eos>``.

    ``KL(P || q) = sum_v P(v) (log P(v) - log q(v))`` over the teacher's support (its top-K, renormalised),
    per noisy response position; forward KL is mass-covering, which the paper found better than reverse KL.

    Args:
        logits: ``(N, V)`` student logits at the N noisy response positions of the batch.
        teacher_ids / teacher_probs: ``(N, K)`` token ids and probabilities of the teacher's distribution at
            the step each position was committed.
        weights: ``(N,)`` step-wise weights (mean 1 over each block).
        committed: ``(N,)`` the token the teacher committed at each position; where it is ``<eos>`` a one-hot
            CE is added (the teacher's ``<eos>`` confidence is low and noisy, so one-step students otherwise
            fail to stop).
    """
    logq = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    p = teacher_probs / teacher_probs.sum(-1, keepdim=True).clamp(min=1e-12)  # (N, K)
    logq_k = logq.gather(-1, teacher_ids)  # (N, K)
    kl = (p * (p.clamp(min=1e-12).log() - logq_k)).sum(-1)  # (N,)
    kl_term = (weights * kl).sum() / max(len(kl), 1)
    eos_term = torch.zeros((), device=logits.device)
    is_eos = committed == eos_token_id  # (N,)
    if is_eos.any():
        eos_term = F.nll_loss(logq[is_eos], committed[is_eos])
    loss = kl_term + eos_weight * eos_term
    return loss, {"kl": kl_term.item(), "eos_ce": eos_term.item()}


def step_weights(steps: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Step-wise (SW) weights: proportional to the step at which a position was committed, normalised to mean
    1 within its block (the paper gives the proportionality, not the normalisation).

    Args:
        steps: ``(N,)`` 1-based commit steps; blocks: ``(N,)`` a block id per position (unique across the batch).
    """
    steps = steps.float()
    _, inverse = torch.unique(blocks, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, device=steps.device).index_add_(0, inverse, steps)
    counts = torch.zeros_like(sums).index_add_(0, inverse, torch.ones_like(steps))
    return steps / (sums / counts)[inverse]
