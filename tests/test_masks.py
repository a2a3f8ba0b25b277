import pytest
import torch

from echo_model.masks import block_causal_mask, block_causal_rows, to_attention_bias, with_key_padding


def brute_force(total: int, b: int) -> torch.Tensor:
    """method.md §2: query q may attend key k iff k's block index <= q's (absolute positions from 0)."""
    m = torch.zeros(total, total, dtype=torch.bool)
    for q in range(total):
        for k in range(total):
            m[q, k] = (k // b) <= (q // b)
    return m


@pytest.mark.parametrize("total,b", [(1, 1), (7, 1), (8, 4), (13, 4), (16, 8), (21, 8)])
def test_block_causal_matches_definition(total, b):
    assert torch.equal(block_causal_mask(total, b), brute_force(total, b))


def test_block_causal_equals_official_construction():
    nb, b = 5, 4
    official = torch.tril(torch.ones(nb, nb, dtype=torch.bool)).repeat_interleave(b, 0).repeat_interleave(b, 1)
    assert torch.equal(block_causal_mask(nb * b, b), official)


def test_b1_is_causal():
    assert torch.equal(block_causal_mask(9, 1), torch.tril(torch.ones(9, 9, dtype=torch.bool)))


@pytest.mark.parametrize("q_start,q_end,kv", [(0, 8, 8), (8, 16, 16), (4, 16, 16), (12, 16, 20)])
def test_rows_are_slices_of_full_mask(q_start, q_end, kv):
    full = brute_force(24, 4)
    assert torch.equal(block_causal_rows(q_start, q_end, kv, 4), full[q_start:q_end, :kv])


def test_rows_reject_bad_ranges():
    with pytest.raises(ValueError, match="q_start"):
        block_causal_rows(5, 3, 8, 4)


def test_key_padding_hides_pads_and_keeps_rows_nonempty():
    rows = block_causal_rows(0, 8, 8, 4)
    valid = torch.tensor([[False, False, False, False, True, True, True, True], [True] * 8])
    out = with_key_padding(rows, valid, 0)
    assert out.shape == (2, 8, 8)
    assert not out[0, 4:, :4].any()  # real queries never see padding keys
    assert torch.equal(out[0, :4], torch.eye(8, dtype=torch.bool)[:4])  # pad queries see only themselves
    assert torch.equal(out[1], rows)
    assert out.any(-1).all()


def test_attention_bias_values():
    m = torch.tensor([[True, False], [True, True]])
    bias = to_attention_bias(m, torch.float32)
    assert bias.shape == (1, 1, 2, 2)
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="bool"):
        to_attention_bias(m.float(), torch.float32)


def test_block_causal_bias_is_the_masks_bias_made_once_per_shape():
    """The samplers' shared bias equals the one built from the mask, and is reused, not rebuilt, for the same
    (length, b, dtype, device); another shape or dtype gets its own. It is an ordinary tensor even when first made
    under inference mode (a sampler's), so later callers outside that mode can use it."""
    from echo_model.masks import block_causal_bias

    with torch.inference_mode():
        first = block_causal_bias(21, 8, torch.float32)
    assert not first.is_inference()
    assert first.shape == (1, 1, 21, 21)
    assert torch.equal(first, to_attention_bias(block_causal_mask(21, 8), torch.float32))
    assert block_causal_bias(21, 8, torch.float32, device="cpu") is first
    assert block_causal_bias(21, 4, torch.float32) is not first
    other = block_causal_bias(21, 8, torch.float64)
    assert other.dtype == torch.float64 and torch.equal(other, to_attention_bias(block_causal_mask(21, 8), torch.float64))


def test_canvas_bias_shares_the_unpadded_bias_and_hides_padding_keys():
    """A sampler's canvas: without padding, the shared bias over the batch (a view, nothing built); with left
    padding, a bias of its own in which padding keys are hidden and a padding query sees itself."""
    from echo_model.masks import block_causal_bias, canvas_bias

    shared = canvas_bias(12, 4, torch.float32, batch=3)
    assert shared.shape == (3, 1, 12, 12)
    assert shared.data_ptr() == block_causal_bias(12, 4, torch.float32).data_ptr()
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :4] = False  # row 1 left-padded by one block
    padded = canvas_bias(12, 4, torch.float32, batch=2, key_valid=valid)
    assert torch.equal(padded, to_attention_bias(with_key_padding(block_causal_mask(12, 4), valid, 0), torch.float32))
    assert torch.equal(padded[0], shared[0])
    with pytest.raises(ValueError, match=r"key_valid must be \(3, 12\), got \(2, 12\)"):
        canvas_bias(12, 4, torch.float32, batch=3, key_valid=valid)
