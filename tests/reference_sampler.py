"""An independent reference of the official ECHO inference (method.md §2), for parity tests only.

It imports nothing from ``echo_model``: it drives the stock Qwen2.5-VL model directly and recomputes the
WHOLE sequence with the full block-causal mask at every denoising step (no KV cache, no fused cache, no
batching). If the cached samplers are right, they produce exactly its tokens.
"""

from __future__ import annotations

import math

import torch


def official_block_mask(total: int, b: int) -> torch.Tensor:
    """``tril(ones(nb, nb)).repeat_interleave(b, 0).repeat_interleave(b, 1)`` cut to ``total`` (method.md §2)."""
    nb = math.ceil(total / b)
    m = torch.tril(torch.ones(nb, nb, dtype=torch.bool))
    return m.repeat_interleave(b, 0).repeat_interleave(b, 1)[:total, :total]


def official_transfer(b: int, steps: int) -> list[int]:
    base = b // steps
    out = [base] * steps
    for i in range(b % steps):
        out[i] += 1
    return out


def official_commit(cur_masked: torch.Tensor, conf: torch.Tensor, n: int, tau: float) -> torch.Tensor:
    """``low_confidence_dynamic`` for one row, as in the pseudocode (topk fallback)."""
    c = torch.where(cur_masked, conf, torch.tensor(-math.inf))
    sel = c > tau
    if int(sel.sum()) < n:
        k = min(n, int(cur_masked.sum()))
        sel = torch.zeros_like(sel)
        sel[torch.topk(c, k).indices] = True
    return sel


class Reference:
    def __init__(self, hf_model, *, mask_id: int, eos_id: int, image_token_id: int):
        self.m = hf_model
        self.mask_id, self.eos_id, self.image_token_id = mask_id, eos_id, image_token_id

    @torch.no_grad()
    def full_logits(self, x: torch.Tensor, positions: torch.Tensor, hi: int, b: int, pixel_values, grid) -> torch.Tensor:
        """Logits of x[:hi] under the full block-causal mask, recomputed from scratch. (hi, V)"""
        allow = official_block_mask(hi, b)
        bias = torch.zeros(1, 1, hi, hi).masked_fill(~allow, torch.finfo(torch.float32).min)
        out = self.m(input_ids=x[None, :hi], attention_mask=bias, position_ids=positions[:, None, :hi],
                     pixel_values=pixel_values, image_grid_thw=grid, use_cache=False)
        return out.logits[0].float()

    @torch.no_grad()
    def generate(self, input_ids, pixel_values, grid, *, b: int, steps: int, gen_len: int, tau: float = 0.85):
        """Returns (generated ids cut at max gen_len and after the first eos, list of per-block last-step logits)."""
        P = len(input_ids)
        nb = math.ceil((P + gen_len) / b)
        x = torch.full((nb * b,), self.mask_id, dtype=torch.long)
        x[:P] = input_ids
        masked = torch.zeros(nb * b, dtype=torch.bool)
        masked[P:] = True
        mm = (input_ids == self.image_token_id).int()[None]
        pos, delta = self.m.model.get_rope_index(input_ids[None], mm, image_grid_thw=grid)
        positions = torch.cat([pos[:, 0], (torch.arange(P, nb * b) + int(delta.reshape(-1)[0]))[None].expand(3, -1)], 1)
        ntr = official_transfer(b, steps)
        block_logits = []
        for k in range(P // b, nb):
            lo, hi = k * b, (k + 1) * b
            for s in range(steps):
                if not masked[lo:hi].any():
                    break
                logits = self.full_logits(x, positions, hi, b, pixel_values, grid)[lo:hi]  # (b, V)
                probs = torch.softmax(logits, -1)
                conf, tok = probs.max(-1)
                sel = official_commit(masked[lo:hi], conf, ntr[s], tau)
                x[lo:hi] = torch.where(sel, tok, x[lo:hi])
                masked[lo:hi] &= ~sel
                block_logits.append(logits)
            if self.eos_id in x[max(lo, P):hi].tolist():
                break
        out = x[P : P + gen_len].tolist()
        if self.eos_id in out:
            out = out[: out.index(self.eos_id) + 1]
        return out, block_logits
