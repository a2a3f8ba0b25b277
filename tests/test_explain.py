"""Explanations: patch layout through the vision tower's windows, decode-state parity, and localisation.

The localisation test trains a quadrant toy (``scripts/explain_quadrant_sweep.py``): a tiny model whose report
depends on one quadrant of the image only (its brightness decides between two 4-token answers; the other
quadrants take random grey levels, dimmed copies included). Vision windows are the four quadrants and the
language model has one layer. The toy is trained to convergence and checked (its answer flips with the
quadrant's brightness and ignores the rest), at 1, 2 and 4 torch threads, then each method the library calls
reliable must put >= 80 % of its map in the quadrant.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr
from PIL import Image
from transformers.vision_utils import get_vision_window_index

from echo_model.explain import (
    DEFAULT_METHOD,
    DecodeState,
    ExplainConfig,
    Explainer,
    decode_states,
    patch_order,
    reliability,
    upsample,
)
from echo_model.sampling import SamplerConfig, build_sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import explain_quadrant_sweep as sweep  # the toy, its training and check


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
# The toy, its training and convergence check live in scripts/explain_quadrant_sweep.py (the full sweep, 4
# quadrants x threads 1, 2, 4 x seeds, behind docs/explain.md's table); CI runs one quadrant at 1, 2 and 4 torch
# threads, the other quadrants are marked slow.
@pytest.fixture(scope="module")
def toy_tokenizer():
    return sweep.toy_tokenizer()


#: Training seeds tried in turn until a toy converges: a toy that does not learn its quadrant within the step
#: budget says nothing about the explanation methods (the same seed trains another toy on another CPU or thread
#: count: on an Intel Xeon the seed-0 bottom-left toy at 4 threads did not converge, seed 1 did).
SEEDS = (0, 1, 2)


def _converged_toy(tokenizer, quadrant: int):
    failures = []
    for seed in SEEDS:
        try:
            toy = sweep.train_quadrant_toy(quadrant, seed=seed, tokenizer=tokenizer)
        except RuntimeError as err:  # did not converge within the step budget
            failures.append(str(err))
            continue
        return toy, sweep.check_toy(toy)
    raise AssertionError(f"no seed of {SEEDS} trained a converged toy: {failures}")


def _localises(tokenizer, quadrant: int, threads: int) -> None:
    threads_before = torch.get_num_threads()
    with sweep.torch_threads(threads):  # training and explanation alike; restored afterwards
        toy, check = _converged_toy(tokenizer, quadrant)
        shares = sweep.quadrant_shares(toy, images=3)
    assert torch.get_num_threads() == threads_before
    # Converged: the answer flips with the quadrant's brightness and ignores the other quadrants.
    assert check.ok, check
    # A reliable method puts >= 80 % of its map in the quadrant on the images of a converged toy, bar the odd
    # image (the library's definition: on >= 90 % of the sweep's images): here on at least 2 of the 3.
    for method, values in shares.items():
        if reliability(method).reliable:  # the library's claim, measured by the sweep, must hold here too
            assert sorted(values)[1] >= 0.8, (method, shares)
    assert reliability(DEFAULT_METHOD).reliable and sorted(shares[DEFAULT_METHOD])[1] >= 0.8, shares


FAST_QUADRANT = 0  # top_left, in CI at every thread count; the other quadrants are slow (the sweep runs them all)


@pytest.mark.parametrize("threads", [1, 2, 4], ids=lambda n: f"{n}threads")
@pytest.mark.parametrize("quadrant", [
    pytest.param(q, id=name, marks=() if q == FAST_QUADRANT else pytest.mark.slow)
    for q, name in enumerate(sweep.QUADRANTS)
])
def test_reliable_methods_land_in_the_quadrant_the_output_depends_on(toy_tokenizer, quadrant, threads):
    """Integrated gradients (and any method the library calls reliable) puts >= 80 % of its map in the quadrant
    on at least 2 of 3 images of a converged toy, at 1, 2 and 4 torch threads. Attention rollout is not asserted: the sweep
    found it off the quadrant on converged toys, and the library and the app say so (``reliability``)."""
    _localises(toy_tokenizer, quadrant, threads)
