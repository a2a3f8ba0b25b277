"""Parity of the cached samplers with an independent uncached reference, and the counting contract."""

from __future__ import annotations

import pytest
import torch

from echo_model.sampling import SamplerConfig, build_sampler
from reference_sampler import Reference
from conftest import synthetic_cxr


class ForwardCounter:
    """Counts calls of the stock model's ``forward`` (not the sampler's own counters) and their query lengths."""

    def __init__(self, module: torch.nn.Module):
        self.lengths: list[int] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.lengths.append(int(kwargs["input_ids"].shape[1]))

    def close(self) -> None:
        self.handle.remove()


def _prompts(ck, n=3):
    return [
        ck.processor.encode([synthetic_cxr(i)], indication=["cough", None, "fever and chest pain"][i % 3])
        for i in range(n)
    ]


def _reference(ck):
    p = ck.processor
    return Reference(ck.model.model, mask_id=p.mask_token_id, eos_id=p.eos_token_id, image_token_id=p.image_token_id)


@pytest.mark.parametrize("sampler,steps", [("echo", 1), ("vanilla", 1), ("teacher", None)])
@pytest.mark.parametrize("ck_name", ["checkpoint", "checkpoint_b8"])
def test_cached_sampler_equals_uncached_reference(request, ck_name, sampler, steps):
    ck = request.getfixturevalue(ck_name)
    b = ck.model.block_length
    ref = _reference(ck)
    for prompt in _prompts(ck):
        got = build_sampler(sampler, ck.model, ck.processor, SamplerConfig(max_new_tokens=30)).generate(prompt)[0]
        want, _ = ref.generate(prompt.input_ids, prompt.pixel_values, prompt.image_grid_thw,
                               b=b, steps=steps or b, gen_len=30)
        assert got.token_ids == want


def test_one_step_logits_match_reference(checkpoint):
    """The fused-cache forward gives the same block logits as a full recomputation (~1e-5)."""
    ck = checkpoint
    b = ck.model.block_length
    prompt = _prompts(ck, 1)[0]
    captured: list[torch.Tensor] = []
    hook = ck.model.model.register_forward_hook(lambda m, a, out: captured.append(out.logits[0, -b:].detach().clone()))
    try:
        build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=24, fixed_length=True)).generate(prompt)
    finally:
        hook.remove()
    _, ref_logits = _reference(ck).generate(prompt.input_ids, prompt.pixel_values, prompt.image_grid_thw, b=b, steps=1, gen_len=24)
    denoise = captured[1:]  # drop the prefill
    assert len(denoise) == len(ref_logits) > 3
    for got, want in zip(denoise, ref_logits):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_echo_counts_one_forward_per_block(checkpoint_b8):
    ck = checkpoint_b8
    b = ck.model.block_length
    prompt = _prompts(ck, 1)[0]
    counter = ForwardCounter(ck.model.model)
    try:
        res = build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=60, fixed_length=True)).generate(prompt)[0]
    finally:
        counter.close()
    n_blocks = len(res.blocks)
    assert counter.lengths[0] == (prompt.length // b) * b  # prefill of the complete prompt blocks
    assert counter.lengths[1] == b  # first block: read-only forward over b tokens
    assert all(q == 2 * b for q in counter.lengths[2:])  # fused [previous | current]
    assert len(counter.lengths) == res.model_calls == n_blocks + 1
    assert res.forward_passes == n_blocks
    assert res.block_tokens[0] == b - prompt.length % b  # first block holds the prompt tail
    assert all(t == b for t in res.block_tokens[1:])
    assert res.tokens == 60
    assert res.tokens_per_forward == pytest.approx(sum(res.block_tokens) / n_blocks)


def test_teacher_counts_denoise_and_write_forwards(checkpoint):
    ck = checkpoint
    b = ck.model.block_length
    prompt = _prompts(ck, 1)[0]
    counter = ForwardCounter(ck.model.model)
    try:
        res = build_sampler("teacher", ck.model, ck.processor, SamplerConfig(max_new_tokens=40, fixed_length=True)).generate(prompt)[0]
    finally:
        counter.close()
    n_blocks = len(res.blocks)
    # prefill + denoising forwards + one KV-write forward per block except the last
    assert len(counter.lengths) == res.model_calls == 1 + res.forward_passes + n_blocks - 1
    assert n_blocks <= res.forward_passes <= n_blocks * b
    assert all(q == b for q in counter.lengths[1:])


def test_ar_equals_generate(checkpoint):
    ck = checkpoint
    hf = ck.model.model
    for prompt in _prompts(ck):
        res = build_sampler("ar", ck.model, ck.processor, SamplerConfig(max_new_tokens=20)).generate(prompt)[0]
        mm = (prompt.input_ids == ck.processor.image_token_id).int()[None]
        out = hf.generate(
            input_ids=prompt.input_ids[None], attention_mask=torch.ones(1, prompt.length, dtype=torch.long),
            mm_token_type_ids=mm, pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
            max_new_tokens=20, do_sample=False, eos_token_id=ck.processor.eos_token_id, pad_token_id=ck.processor.pad_token_id,
        )
        assert res.token_ids == out[0, prompt.length :].tolist()
        assert res.forward_passes == res.tokens and res.tokens_per_forward == 1.0


@pytest.mark.parametrize("sampler", ["ar", "teacher", "echo"])
def test_batch_of_three_equals_single_runs(checkpoint, sampler):
    ck = checkpoint
    prompts = _prompts(ck)
    assert len({p.length for p in prompts}) > 1  # different lengths exercise the padding
    cfg = SamplerConfig(max_new_tokens=25)
    batch = build_sampler(sampler, ck.model, ck.processor, cfg).generate(prompts)
    singles = [build_sampler(sampler, ck.model, ck.processor, cfg).generate(p)[0] for p in prompts]
    for got, want in zip(batch, singles):
        assert got.token_ids == want.token_ids
        assert got.text == want.text
        assert got.block_tokens == want.block_tokens
        assert got.forward_passes == want.forward_passes


def test_text_only_prompt(checkpoint):
    """IU X-ray studies have no images: the samplers must work without pixels."""
    ck = checkpoint
    prompt = ck.processor.encode([], indication="chest pain")
    assert prompt.pixel_values is None
    got = build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=16)).generate(prompt)[0]
    want, _ = _reference(ck).generate(prompt.input_ids, None, None, b=4, steps=1, gen_len=16)
    assert got.token_ids == want
