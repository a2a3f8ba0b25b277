"""Training layouts: masks against a brute-force definition and train/inference consistency."""

from __future__ import annotations

import pytest
import torch

from echo_model.masks import to_attention_bias
from echo_model.sampling import SamplerConfig, build_sampler
from echo_model.layouts import CLEAN, CONTEXT, NOISY, assemble, build_layout
from conftest import synthetic_cxr


def brute_force(layout, b):
    """method.md §3.3 'allow(q, k)', written position by position."""
    L = layout.length
    seg, src = layout.segment.tolist(), layout.source.tolist()
    out = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            bq, bk = src[q] // b, src[k] // b
            if seg[q] == CONTEXT:
                ok = seg[k] == CONTEXT and bk <= bq
            elif seg[q] == NOISY:
                ok = seg[k] == CONTEXT or (seg[k] == NOISY and bk == bq) or (seg[k] == CLEAN and bk < bq)
            else:
                ok = seg[k] == CONTEXT or (seg[k] == CLEAN and bk <= bq)
            out[q, k] = ok
    return out


@pytest.mark.parametrize("kind", ["rad", "full"])
@pytest.mark.parametrize("P,R,b", [(5, 7, 4), (8, 8, 4), (11, 13, 8), (3, 2, 1)])
def test_masks_equal_brute_force(kind, P, R, b):
    layout = build_layout(P, R, b, kind)
    assert torch.equal(layout.allow, brute_force(layout, b))


def test_rad_duplicates_only_tail_and_response():
    lay = build_layout(10, 6, 4, "rad")
    assert lay.length == 8 + 2 * 8  # 8 context tokens, then tail (2) + response (6) twice
    assert lay.source[:8].tolist() == list(range(8))
    assert lay.noisy_response().sum() == 6
    full = build_layout(10, 6, 4, "full")
    assert full.length == 32 and full.noisy_response().sum() == 6


def test_bad_layout_arguments():
    with pytest.raises(ValueError, match="unknown layout 'half'"):
        build_layout(4, 4, 4, "half")
    with pytest.raises(ValueError, match=">= 1"):
        build_layout(0, 4, 4)


@pytest.mark.parametrize("kind", ["rad", "full"])
def test_train_logits_equal_inference_logits(checkpoint, kind):
    """Logits at a noisy block in the training layout == what the sampler computes for that block."""
    ck = checkpoint
    model, proc, b = ck.model, ck.processor, ck.model.block_length
    prompt = proc.encode([synthetic_cxr(4)], indication="cough")
    # A clean response: let the teacher write it (fixed length), then partially re-mask block k.
    res = build_sampler("teacher", model, proc, SamplerConfig(max_new_tokens=20, fixed_length=True)).generate(prompt)[0]
    P = prompt.length
    response = torch.tensor(res.token_ids)
    R = len(response)
    clean = torch.cat([prompt.input_ids, response])  # (P+R,)
    k = (P + 9) // b  # a block in the middle of the response
    lo, hi = k * b, (k + 1) * b
    noisy = clean.clone()
    noisy[lo:hi][torch.tensor([True, False] * (b // 2))] = proc.mask_token_id
    noisy[hi:] = proc.mask_token_id  # later blocks are invisible anyway

    rope, delta = model.rope_index(prompt, proc.image_token_id)  # (3, P)
    positions = torch.cat([rope, (torch.arange(P, P + R) + delta)[None].expand(3, -1)], 1)  # (3, P+R)
    layout = build_layout(P, R, b, kind)
    ids, pos = assemble(layout, clean, noisy, positions)
    copies = 2 if kind == "full" else 1
    logits = model(ids[None], position_ids=pos[:, None], attention_bias=to_attention_bias(layout.allow, model.dtype),
                   cache=None, pixel_values=torch.cat([prompt.pixel_values] * copies),
                   image_grid_thw=torch.cat([prompt.image_grid_thw] * copies))[0]  # (L, V)
    where = ((layout.segment == NOISY) & (layout.source >= lo) & (layout.source < hi)).nonzero().flatten()
    train_block = logits[where]  # (b, V)

    # Inference: prefill, then the clean blocks before k one by one (cache), then block k read-only.
    from echo_model.masks import block_causal_rows
    cache = model.new_cache()
    s0 = (P // b) * b
    x = noisy.clone()
    x[:lo] = clean[:lo]
    def run(q_lo, q_hi, keep, images=False):
        rows = block_causal_rows(q_lo, q_hi, q_hi, b)
        return model(x[None, q_lo:q_hi], position_ids=positions[:, None, q_lo:q_hi],
                     attention_bias=to_attention_bias(rows, model.dtype), cache=cache, keep_kv=keep,
                     pixel_values=prompt.pixel_values if images else None,
                     image_grid_thw=prompt.image_grid_thw if images else None)[0]
    run(0, s0, None, images=True)
    for j in range(s0, lo, b):
        run(j, j + b, None)
    infer_block = run(lo, hi, 0)
    # Equal up to float rounding: the full layout embeds two copies of the views in one patch-embedding GEMM,
    # inference one, and a CPU GEMM may round a row differently with the row count (~1e-5 on these logits).
    torch.testing.assert_close(train_block, infer_block, atol=1e-4, rtol=1e-4)
