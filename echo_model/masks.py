"""Attention masks of block diffusion.

Inference (method.md §2, official ``create_block_diffusion_mask``) uses one block-causal mask over
*absolute* positions, prompt included: ``M = tril(ones(nb, nb)).repeat_interleave(b, 0).repeat_interleave(b, 1)``.
Query q may attend key k iff ``k // b <= q // b``. Blocks are aligned at position 0, so the prompt's last
(partial) block is decoded together with the first generated tokens.

Masks are boolean (True = may attend) until the last moment; :func:`to_attention_bias` turns them into the
additive 4-D float mask that the stock transformers attention accepts.
"""

from __future__ import annotations

import functools

import torch


def block_ids(positions: torch.Tensor, block_length: int) -> torch.Tensor:
    """Block index of each absolute position: ``pos // b``."""
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    return torch.div(positions, block_length, rounding_mode="floor")


def block_causal_mask(length: int, block_length: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Full block-causal mask over positions ``0..length-1``.

    Returns:
        Bool tensor ``(length, length)``; entry ``[q, k]`` is True iff ``k // b <= q // b``.
    """
    blk = block_ids(torch.arange(length, device=device), block_length)  # (L,)
    return blk[:, None] >= blk[None, :]  # (L, L)


def block_causal_rows(
    q_start: int, q_end: int, kv_len: int, block_length: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rows ``q_start:q_end`` of :func:`block_causal_mask`, restricted to keys ``0:kv_len``.

    This is ``M[q_start:q_end, :kv_len]`` of the official code without building the whole matrix.
    """
    if not 0 <= q_start <= q_end <= kv_len:
        raise ValueError(f"need 0 <= q_start <= q_end <= kv_len, got {q_start}, {q_end}, {kv_len}")
    q_blk = block_ids(torch.arange(q_start, q_end, device=device), block_length)  # (q,)
    k_blk = block_ids(torch.arange(kv_len, device=device), block_length)  # (k,)
    return q_blk[:, None] >= k_blk[None, :]  # (q, k)


def with_key_padding(mask: torch.Tensor, key_valid: torch.Tensor, q_start: int) -> torch.Tensor:
    """Apply per-sample key padding to a shared ``(q, k)`` mask.

    Padding keys are hidden from every query; a padding query sees only itself so that no softmax row is
    empty (its output is never used).

    Args:
        mask: ``(q, k)`` bool.
        key_valid: ``(B, k)`` bool, False at padding.
        q_start: absolute column of the first query row (queries are ``q_start .. q_start + q - 1``).

    Returns:
        ``(B, q, k)`` bool.
    """
    q, k = mask.shape
    if key_valid.shape[1] != k:
        raise ValueError(f"key_valid has {key_valid.shape[1]} columns, mask has {k}")
    out = mask[None] & key_valid[:, None, :]  # (B, q, k)
    q_cols = torch.arange(q_start, q_start + q, device=mask.device)  # (q,)
    q_pad = ~key_valid[:, q_cols]  # (B, q)  queries that are padding
    self_edge = q_cols[:, None] == torch.arange(k, device=mask.device)[None, :]  # (q, k)
    return torch.where(q_pad[:, :, None], self_edge[None], out)  # (B, q, k)


def to_attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool ``(q, k)`` or ``(B, q, k)`` mask -> additive ``(B, 1, q, k)`` bias (0 = attend, min = blocked)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if mask.dim() == 2:
        mask = mask[None]  # (1, q, k)
    if mask.dim() != 3:
        raise ValueError(f"mask must be 2-D or 3-D, got shape {tuple(mask.shape)}")
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)  # (B, q, k)
    bias.masked_fill_(~mask, torch.finfo(dtype).min)
    return bias[:, None]  # (B, 1, q, k)


def block_causal_bias(length: int, block_length: int, dtype: torch.dtype, *,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`to_attention_bias` of :func:`block_causal_mask`, ``(1, 1, length, length)``, made once per
    ``(length, b, dtype, device)`` and shared by every caller: read it (slice, expand), never write into it.

    Why: a sampler needs the whole bias of its canvas once per call (every forward reads a slice of it), and an
    unpadded canvas has the same one each time: building it is four ops over ``length**2`` entries (1.4 MB at
    the 610 columns of a 512-token report), paid before the first block. Padded batches still build their own
    (:func:`with_key_padding`).
    """
    return _block_causal_bias(int(length), int(block_length), dtype, torch.device(device) if device is not None
                              else torch.device("cpu"))


@functools.lru_cache(maxsize=4)
def _block_causal_bias(length: int, block_length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # an ordinary tensor, usable inside and outside inference mode
        return to_attention_bias(block_causal_mask(length, block_length, device=device), dtype)  # (1, 1, L, L)


def canvas_bias(length: int, block_length: int, dtype: torch.dtype, *, batch: int = 1,
                key_valid: torch.Tensor | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """The additive block-causal bias ``(batch, 1, length, length)`` of a sampler's whole canvas (every forward
    reads a slice of it).

    ``key_valid`` ``(batch, length)`` bool, False at left padding: padding keys are hidden
    (:func:`with_key_padding`) in a bias built for this call. None (no row is padded): the shared
    :func:`block_causal_bias`, expanded over the batch, not rebuilt.
    """
    if key_valid is None:
        return block_causal_bias(length, block_length, dtype, device=device).expand(batch, 1, length, length)
    if key_valid.shape != (batch, length):
        raise ValueError(f"key_valid must be ({batch}, {length}), got {tuple(key_valid.shape)}")
    return to_attention_bias(with_key_padding(block_causal_mask(length, block_length, device=device), key_valid, 0),
                             dtype)
