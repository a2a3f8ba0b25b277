"""Sampler behaviour beyond parity: streaming, stopping, lengths, sampling options."""

from __future__ import annotations

import pytest
import torch

from echo_model.sampling import SamplerConfig, build_sampler, sample_tokens
from conftest import synthetic_cxr


@pytest.mark.parametrize("name", ["ar", "teacher", "echo"])
def test_stream_yields_each_block_before_the_end(checkpoint, name):
    ck = checkpoint
    prompt = ck.processor.encode([synthetic_cxr(1)])
    stream = build_sampler(name, ck.model, ck.processor, SamplerConfig(max_new_tokens=24, fixed_length=True)).stream(prompt)
    events = []
    while True:
        try:
            events.append(next(stream))
        except StopIteration as stop:
            result = stop.value[0]
            break
    assert len(events) == len(result.blocks) > 1
    assert [e.block for e in events] == list(range(len(events)))
    assert [e.token_ids for e in events] == result.blocks
    assert events[0].seconds <= events[-1].seconds
    assert not events[0].done and events[-1].done
    assert events[-1].text == result.text
    # Each event's text is the report as of its block, also when read after decoding went on (it is decoded
    # lazily, on first read, from the tokens committed up to that block).
    for k, e in enumerate(events):
        so_far = [t for block in result.blocks[: k + 1] for t in block]
        if not e.done:
            assert e.text == ck.processor.decode(so_far)
    assert len({e.text for e in events}) > 1


def test_stops_at_block_with_eos(checkpoint):
    """Force <eos> to win everywhere: the echo sampler must stop after the first block."""
    ck = checkpoint
    eos = ck.processor.eos_token_id
    bias = torch.zeros(ck.model.model.config.text_config.vocab_size)
    bias[eos] = 1e4
    handle = ck.model.model.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    try:
        prompt = ck.processor.encode([synthetic_cxr(0)])
        res = build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=40)).generate(prompt)[0]
        fixed = build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=40, fixed_length=True)).generate(prompt)[0]
    finally:
        handle.remove()
    assert res.stopped_by_eos and len(res.blocks) == 1
    assert res.token_ids == [eos] and res.text == ""
    assert not fixed.stopped_by_eos and fixed.tokens == 40


@pytest.mark.parametrize("name", ["ar", "teacher", "echo"])
@pytest.mark.parametrize("n", [1, 5, 17])
def test_max_new_tokens_is_respected(checkpoint, name, n):
    ck = checkpoint
    prompt = ck.processor.encode([synthetic_cxr(2)])
    res = build_sampler(name, ck.model, ck.processor, SamplerConfig(max_new_tokens=n, fixed_length=True)).generate(prompt)[0]
    assert res.tokens == n


def test_temperature_sampling_is_seeded(checkpoint):
    ck = checkpoint
    prompt = ck.processor.encode([synthetic_cxr(3)])
    cfg = SamplerConfig(max_new_tokens=24, temperature=1.5, top_k=20, top_p=0.9, seed=7, fixed_length=True)
    a = build_sampler("echo", ck.model, ck.processor, cfg).generate(prompt)[0]
    b = build_sampler("echo", ck.model, ck.processor, cfg).generate(prompt)[0]
    greedy = build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=24, fixed_length=True)).generate(prompt)[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids


def test_top_k_and_top_p_filter():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]]).log_softmax(-1)
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample_tokens(logits, SamplerConfig(temperature=1.0, top_k=2), gen)[0][0]) for _ in range(200)}
    assert seen == {0, 1}
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    seen = {int(sample_tokens(probs.log(), SamplerConfig(temperature=1.0, top_p=0.7), gen)[0][0]) for _ in range(200)}
    assert seen == {0, 1}


def test_greedy_confidence_is_probability_of_argmax():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    tok, conf = sample_tokens(logits, SamplerConfig())
    assert tok.item() == 0
    assert conf.item() == pytest.approx(torch.softmax(logits, -1).max().item())


def test_sampler_config_validation():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplerConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplerConfig(top_p=0.0)


def test_unknown_sampler_name(checkpoint):
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        build_sampler("fast", checkpoint.model, checkpoint.processor)


def test_to_host_reads_ids_and_confidences_exactly():
    """What a sampler's step reads back: token ids as ints, float32 confidences as the same numbers, the shapes
    kept; the accelerator path (one stacked float64 copy) gives the same lists as the CPU path."""
    from echo_model.sampling.base import to_host

    ids = torch.tensor([[151643, 5, 0], [7, 2**24 + 1, 3]])  # ids beyond float32's exact integers
    conf = torch.tensor([[0.1, 0.25, 1.0], [0.3, 0.7, 0.123456789]], dtype=torch.float32)
    cpu_ids, cpu_conf = to_host(ids, conf)
    assert cpu_ids == ids.tolist() and all(isinstance(v, int) for row in cpu_ids for v in row)
    assert cpu_conf == conf.tolist() and cpu_conf[1][2] == float(conf[1, 2])
    copied = to_host(ids, conf, one_copy=True)  # the accelerator's way: one stacked float64 copy
    assert copied == [cpu_ids, cpu_conf] and all(isinstance(v, int) for row in copied[0] for v in row)
    tokens, confidence = to_host(torch.tensor([3, 4]), torch.tensor([0.5, 0.25]))  # AR: one token per row
    assert tokens == [3, 4] and confidence == [0.5, 0.25]
    with pytest.raises(ValueError, match="no tensors"):
        to_host()
