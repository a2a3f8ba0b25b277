"""The commit rule: which masked tokens of a block to accept at one denoising step.

``low_confidence_dynamic`` of the official code (method.md §2): accept every masked position whose
confidence exceeds tau; if that is fewer than ``n`` positions, accept the ``n`` most confident masked
positions instead (``n`` capped at the number still masked). A pure function of tensors, so it can be tested
on hand-built confidences.
"""

from __future__ import annotations

import torch


def commit_mask(masked: torch.Tensor, confidence: torch.Tensor, *, n: int, threshold: float) -> torch.Tensor:
    """Positions to commit at this step.

    Args:
        masked: ``(B, b)`` bool, True where the block is still masked.
        confidence: ``(B, b)`` float, confidence of the proposed token at each position.
        n: minimum number of positions to commit per row (fewer if fewer are masked).
        threshold: tau; masked positions with confidence strictly above it are committed.

    Returns:
        ``(B, b)`` bool, a subset of ``masked``.
    """
    if masked.shape != confidence.shape or masked.dim() != 2:
        raise ValueError(f"masked and confidence must both be (B, b), got {tuple(masked.shape)} and {tuple(confidence.shape)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    scores = torch.where(masked, confidence.float(), torch.full_like(confidence, -torch.inf, dtype=torch.float))  # (B, b)
    above = scores > threshold  # (B, b)
    need = torch.clamp(masked.sum(-1), max=n)  # (B,)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)  # (B, b)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))  # (B, b)
    top = rank < need[:, None]  # (B, b)
    use_top = above.sum(-1) < need  # (B,)
    return torch.where(use_top[:, None], top, above) & masked  # (B, b)
