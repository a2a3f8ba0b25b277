"""Explanations: patch layout through the vision tower's windows, decode-state parity, and localisation.

The localisation test trains, per quadrant, a tiny model whose report depends on that quadrant only: the
quadrant carries a fixed marker texture and its brightness decides between two 4-token answers, while the other
three quadrants take random grey levels that carry no information (dimmed copies included, so the toy stays
blind to them along integrated gradients' path from a black image). The vision tower attends within
56-px windows (the four quadrants of a 112-px image, so ``window_index`` really permutes the patches) and the
language model has one layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY, synthetic_cxr
from PIL import Image

from echo_model.checkpoint import EchoCheckpoint, build_tiny_checkpoint
from echo_model.explain import (
    DecodeState,
    ExplainConfig,
    Explainer,
    decode_states,
    patch_order,
    quadrant_mass,
    upsample,
)
from echo_model.masks import block_causal_mask, to_attention_bias
from echo_model.sampling import SamplerConfig, build_sampler
from echo_model.spec import EchoSpec
from transformers.vision_utils import get_vision_window_index

QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


# ----------------------------------------------------------------------------------------- patch layout
@pytest.mark.parametrize("size", [(112, 112), (112, 168), (168, 140)])
def test_patch_order_restores_image_layout_through_windows(checkpoint, size):
    """A patch's grey level encodes its (row, col); after the tower's window permutation the order puts it back."""
    h, w = size
    gh, gw = h // 14, w // 14
    arr = np.zeros((h, w), np.uint8)
    for r in range(gh):
        for c in range(gw):
            arr[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] = 2 * (r * gw + c) + 10
    proc = dataclasses.replace(checkpoint.spec, max_pixels=h * w, min_pixels=h * w)
    from transformers import Qwen2VLImageProcessorPil

    from echo_model.processing import EchoProcessor

    processor = EchoProcessor(checkpoint.processor.tokenizer,
                              Qwen2VLImageProcessorPil(max_pixels=h * w, min_pixels=h * w), proc)
    prompt = processor.encode([Image.fromarray(arr, "L")])
    assert prompt.image_grid_thw.tolist() == [[1, gh, gw]]
    levels = prompt.pixel_values.mean(-1)  # (N,) processor order
    window_index, _ = get_vision_window_index(prompt.image_grid_thw, spatial_merge_size=2, window_size=56, patch_size=14)
    assert not torch.equal(window_index, torch.arange(len(window_index)))  # the windows really permute
    rows = torch.arange(len(levels))
    block_output = levels[window_index[rows // 4] * 4 + rows % 4]  # what each row of a block output holds
    order = patch_order(prompt.image_grid_thw, merge_size=2, window_size=56, patch_size=14)
    in_layout = block_output[order]
    assert torch.all(torch.diff(in_layout) > 0)  # strictly increasing = row-major image layout


# ----------------------------------------------------------------------------------------- decode states
def test_decode_states_block_and_teacher_and_ar():
    prompt = torch.arange(10)
    blocks = [[21, 22], [23, 24, 25, 26]]
    one = decode_states(prompt, blocks, kind="block", block_length=4, mask_token_id=99, select=[3, 4])
    assert len(one) == 1  # both in block 1, one step
    assert one[0].tokens.tolist() == [*range(10), 21, 22, 99, 99, 99, 99]
    assert one[0].score_columns.tolist() == [13, 14] and one[0].target_ids.tolist() == [24, 25]
    steps = [[1, 1], [2, 1, 3, 1]]
    teacher = decode_states(prompt, blocks, kind="block", block_length=4, mask_token_id=99, select=range(6), steps=steps)
    assert [s.target_ids.tolist() for s in teacher] == [[21, 22], [24, 26], [23], [25]]
    assert teacher[2].tokens.tolist()[10:] == [21, 22, 99, 24, 99, 26]  # step 2: steps-1 tokens committed
    ar = decode_states(prompt, blocks, kind="ar", block_length=4, mask_token_id=99, select=[1, 2])
    assert len(ar) == 1 and ar[0].score_columns.tolist() == [10, 11] and ar[0].block_length == 1
    assert ar[0].tokens.tolist() == [*range(10), 21, 22, 23]
    with pytest.raises(ValueError, match="out of range"):
        decode_states(prompt, blocks, kind="block", block_length=4, mask_token_id=99, select=[6])
    with pytest.raises(ValueError, match="no token"):
        decode_states(prompt, blocks, kind="block", block_length=4, mask_token_id=99, select=[])


@pytest.mark.parametrize("sampler", ["teacher", "echo"])
def test_states_reproduce_the_logits_the_sampler_committed_with(checkpoint_b8, sampler):
    """Parity: every token's re-created decode state gives the logits the sampler had when it committed it."""
    ck = checkpoint_b8
    prompt = ck.processor.encode([synthetic_cxr(3)], indication="cough")
    runner = build_sampler(sampler, ck.model, ck.processor, SamplerConfig(max_new_tokens=24, threshold=0.5))
    seen: dict[int, torch.Tensor] = {}

    def record(step):
        for pos in step.committed[0].nonzero().flatten().tolist():
            index = int(step.response_index[0, pos])
            if index >= 0:
                seen[index] = step.logits[0, pos].clone()

    gen = runner.stream(prompt, on_commit=record)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value[0]
            break
    if sampler == "teacher":
        assert any(max(s) > 1 for s in result.block_steps)  # some tokens were committed after step 1
    states = decode_states(prompt.input_ids, result.blocks, kind="block", block_length=8,
                           mask_token_id=ck.processor.mask_token_id, select=range(sum(map(len, result.blocks))),
                           steps=result.block_steps if sampler == "teacher" else None)
    logits = Explainer(ck.model, ck.processor).state_logits(prompt, states)
    indices = torch.cat([s.score_columns for s in states]) - prompt.length
    expected = torch.stack([seen[int(i)] for i in indices])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_ar_states_predict_the_committed_tokens(tokenizer):
    from conftest import make_checkpoint

    ck = make_checkpoint(tokenizer, block_length=4, seed=5, role="ar")
    prompt = ck.processor.encode([synthetic_cxr(4)])
    result = build_sampler("ar", ck.model, ck.processor, SamplerConfig(max_new_tokens=12)).generate(prompt)[0]
    states = decode_states(prompt.input_ids, result.blocks, kind="ar", block_length=4,
                           mask_token_id=ck.processor.mask_token_id, select=range(len(result.token_ids)))
    logits = Explainer(ck.model, ck.processor).state_logits(prompt, states)
    assert logits.argmax(-1).tolist() == result.token_ids  # greedy: the causal state predicts each token


# ----------------------------------------------------------------------------------------- maps
def test_explanation_maps_are_distributions_per_image(checkpoint):
    images = [synthetic_cxr(1, (112, 112)), synthetic_cxr(2, (112, 140))]
    prompt = checkpoint.processor.encode(images)
    states = decode_states(prompt.input_ids, [[5, 6, 7]], kind="block", block_length=4,
                           mask_token_id=checkpoint.processor.mask_token_id, select=[0, 1, 2])
    explainer = Explainer(checkpoint.model, checkpoint.processor)
    for method in ("attention", "integrated_gradients"):
        out = explainer.explain(prompt, states, images=images, config=ExplainConfig(method=method, n_steps=4))
        assert [m.shape for m in out.maps] == [tuple(g[1:]) for g in prompt.image_grid_thw.tolist()]
        assert all((m >= 0).all() for m in out.maps)
        assert sum(float(m.sum()) for m in out.maps) == pytest.approx(1.0, abs=1e-5)
        assert out.tokens == 3 and out.states == 1 and method.split("_")[0] in out.label.lower()
    assert upsample(out.maps[0], (112, 112)).shape == (112, 112)


def test_explain_config_and_inputs_are_checked(checkpoint):
    with pytest.raises(ValueError, match="unknown explanation method 'occlusion'"):
        ExplainConfig(method="occlusion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline"):
        ExplainConfig(baseline="white")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_steps"):
        ExplainConfig(n_steps=1)
    text_only = checkpoint.processor.encode([])
    state = DecodeState(text_only.input_ids, torch.tensor([3]), torch.tensor([5]), 4)
    with pytest.raises(ValueError, match="no image"):
        Explainer(checkpoint.model, checkpoint.processor).explain(text_only, [state], images=[])


# ----------------------------------------------------------------------------------------- localisation
def _quadrant_image(rng: np.random.RandomState, levels: np.ndarray, marked: int, *, contrast: float = 1.0) -> Image.Image:
    """Four 56-px quadrants at grey ``levels``; the marked one also carries a fine checker texture."""
    img = rng.normal(0, 15, (112, 112))
    yy, xx = np.mgrid[0:56, 0:56]
    checker = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 35.0, -35.0)
    for q, level in enumerate(levels):
        r0, c0 = (q // 2) * 56, (q % 2) * 56
        img[r0:r0 + 56, c0:c0 + 56] += level + (checker if q == marked else 0.0)
    return Image.fromarray(np.clip(img * contrast, 0, 255).astype(np.uint8), mode="L")


def _train_quadrant_model(tokenizer, quadrant: int, *, max_steps: int = 2500) -> tuple[EchoCheckpoint, list[int], np.random.RandomState]:
    torch.manual_seed(0)
    rng = np.random.RandomState(quadrant)
    ck = build_tiny_checkpoint(tokenizer, EchoSpec(block_length=4, role="student"),
                               size=dataclasses.replace(TINY, text_layers=1), seed=0, image_size=112)
    visual = ck.model.model.model.visual
    visual.fullatt_block_indexes, visual.window_size = [], 56  # every block windowed; windows = quadrants
    yes = tokenizer("Mild cardiomegaly. The", add_special_tokens=False)["input_ids"][:4]
    no = tokenizer("The lungs are clear.", add_special_tokens=False)["input_ids"][:4]
    model, proc = ck.model, ck.processor
    first = proc.encode([_quadrant_image(rng, np.zeros(4), quadrant)])  # the prompt layout (same for all)
    P, L, B = first.length, first.length + 4, 8
    rope, delta = model.rope_index(first, proc.image_token_id)
    positions = torch.cat([rope, (torch.arange(P, L) + delta)[None].expand(3, -1)], 1)[:, None].expand(3, B, L)
    bias = to_attention_bias(block_causal_mask(L, 4)[None].expand(B, L, L), model.dtype)
    optimiser = torch.optim.AdamW(model.model.parameters(), lr=3e-3)
    model.model.train()
    recent: list[float] = []
    for _ in range(max_steps):
        levels = rng.uniform(40, 210, (B, 4))
        # Dimmed copies too: integrated gradients walks from a black image, so the toy must stay blind to the
        # other quadrants along that path as well.
        contrast = np.where(rng.rand(B) < 0.5, rng.uniform(0.2, 1.0, B), 1.0)
        prompts = [proc.encode([_quadrant_image(rng, lv, quadrant, contrast=c)]) for lv, c in zip(levels, contrast)]
        ids = torch.stack([torch.cat([p.input_ids, torch.full((4,), proc.mask_token_id)]) for p in prompts])
        target = torch.tensor([yes if lv[quadrant] * c > 125 else no for lv, c in zip(levels, contrast)])  # (B, 4)
        logits = model(ids, position_ids=positions, attention_bias=bias, cache=None,
                       pixel_values=torch.cat([p.pixel_values for p in prompts]),
                       image_grid_thw=torch.cat([p.image_grid_thw for p in prompts]))
        loss = torch.nn.functional.cross_entropy(logits[:, P:].reshape(-1, logits.shape[-1]), target.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        recent = [*recent[-19:], loss.item()]
        if len(recent) == 20 and max(recent) < 0.01:  # learned: every recent batch answered confidently
            break
    model.model.eval()
    assert max(recent) < 0.01, f"the toy did not learn its quadrant (recent losses up to {max(recent):.3f})"
    return ck, yes, rng


@pytest.mark.slow
@pytest.mark.parametrize("quadrant", range(4), ids=QUADRANTS)
def test_both_methods_land_in_the_quadrant_the_output_depends_on(tokenizer, quadrant):
    ck, yes, rng = _train_quadrant_model(tokenizer, quadrant)
    explainer = Explainer(ck.model, ck.processor)
    # The toy is saturated: its answer flips within a narrow stretch of the path from black, so the integral
    # needs fine steps (with 16 points the integral misses the flip and scatters mass).
    configs = {"attention": ExplainConfig(method="attention"),
               "integrated_gradients": ExplainConfig(method="integrated_gradients", baseline="black", n_steps=128,
                                                     internal_batch_size=32)}
    shares: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(3):
        levels = rng.uniform(40, 210, 4)
        levels[quadrant] = rng.uniform(170, 210)  # a positive finding in the quadrant, random levels elsewhere
        image = _quadrant_image(rng, levels, quadrant)
        prompt = ck.processor.encode([image])
        states = decode_states(prompt.input_ids, [yes], kind="block", block_length=4,
                               mask_token_id=ck.processor.mask_token_id, select=range(4))
        for name, config in configs.items():
            out = explainer.explain(prompt, states, images=[image], config=config)
            shares[name].append(quadrant_mass(out.maps[0])[QUADRANTS[quadrant]])
    assert all(min(s) >= 0.8 for s in shares.values()), shares
