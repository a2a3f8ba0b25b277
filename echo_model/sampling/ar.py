"""Autoregressive greedy/sampled decoding with a KV cache: the Stage I baseline ("ECHO-AR").

Same backbone, same prompt, causal attention (the block-causal mask with b = 1). It decodes exactly as
``model.generate(do_sample=False)`` does (a test checks token for token) and streams in chunks aligned to the
same absolute block grid as the block samplers, so the app can show both at the same granularity.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import torch

from ..masks import canvas_bias
from ..modeling import EchoModel, prompt_images, text_positions
from ..processing import EchoProcessor, StudyPrompt
from .base import BlockEvent, GenerationResult, Sampler, SamplerConfig, sample_tokens, to_host


class ARSampler(Sampler):
    """Next-token decoding; ``forward_passes`` counts every forward that produced a token (TPF = 1)."""

    def __init__(self, model: EchoModel, processor: EchoProcessor, config: SamplerConfig = SamplerConfig(), *, name: str = "ar"):
        super().__init__(model, processor, config, name=name)

    @torch.inference_mode()  # no autograd bookkeeping at all: see Sampler.stream
    def stream(self, prompts: StudyPrompt | Sequence[StudyPrompt]) -> Generator[BlockEvent, None, list[GenerationResult]]:
        prompts, clock, generator = self._begin(prompts)
        cfg, proc, device = self.config, self.processor, self.model.device
        B = len(prompts)
        lens = [p.length for p in prompts]
        P = max(lens)
        T = P + cfg.max_new_tokens
        pads = [P - n for n in lens]

        # 1. Left-padded canvas, key validity and M-RoPE ids (text positions continue after the prompt).
        x = torch.full((B, T), proc.pad_token_id, dtype=torch.long)
        valid = torch.ones(B, T, dtype=torch.bool)
        positions = torch.zeros(3, B, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            x[i, pads[i] : P] = p.input_ids
            valid[i, : pads[i]] = False
            rope, delta = self.model.rope_index(p, proc.image_token_id)  # (3, n), int
            positions[:, i, pads[i] : P] = rope.cpu()
            positions[:, i, P:] = text_positions(P, T - P, delta, shift=pads[i])
        x, valid, positions = x.to(device), valid.to(device), positions.to(device)
        # (B, 1, T, T), causal (b = 1); shared between calls when no row is padded
        bias_all = canvas_bias(T, 1, self.model.dtype, batch=B, key_valid=valid if any(pads) else None, device=device)
        pixels, grid = prompt_images(prompts)
        pixels = pixels.to(device, self.model.dtype) if pixels is not None else None
        grid = grid.to(device) if grid is not None else None

        results = [GenerationResult(sampler=self.name, token_ids=[], text="") for _ in range(B)]
        chunk: list[list[int]] = [[] for _ in range(B)]
        chunk_conf: list[list[float]] = [[] for _ in range(B)]
        done = [False] * B
        cache = self.model.new_cache()

        # 2. Prefill (its last logits give the first token), then one forward per token.
        lo = 0
        for t in range(P, T):
            logits = self.model(
                x[:, lo:t], position_ids=positions[:, :, lo:t], attention_bias=bias_all[:, :, lo:t, :t], cache=cache,
                pixel_values=pixels if lo == 0 else None, image_grid_thw=grid if lo == 0 else None,
                logits_at=1,  # the prefill's other positions are never read
            )[:, -1]  # (B, V)
            tokens, conf = sample_tokens(logits, cfg, generator)  # (B,), (B,)
            x[:, t] = tokens
            lo = t
            # The step's one device sync (the one <eos> needs): tokens and confidences in one copy.
            step_tokens, step_conf = to_host(tokens, conf)  # (B,), (B,)
            now = clock()
            for i in range(B):
                if done[i]:
                    continue
                r = results[i]
                r.model_calls += 1
                r.forward_passes += 1
                tok = int(step_tokens[i])
                r.token_ids.append(tok)
                chunk[i].append(tok)
                chunk_conf[i].append(step_conf[i])
                hit_eos = tok == proc.eos_token_id and not cfg.fixed_length
                done[i] = hit_eos or len(r.token_ids) >= cfg.max_new_tokens
                r.stopped_by_eos = hit_eos
                own_pos = t - pads[i]
                if done[i] or (own_pos + 1) % self.block_length == 0:
                    r.blocks.append(chunk[i])
                    r.block_confidences.append(chunk_conf[i])
                    if len(r.blocks) == 1:
                        r.first_block_seconds = now
                    if done[i]:
                        r.text, r.seconds = proc.decode(r.token_ids), now
                    yield BlockEvent(sample=i, block=len(r.blocks) - 1, token_ids=chunk[i], confidences=chunk_conf[i],
                                     seconds=now, done=done[i], result=r if done[i] else None,
                                     decode_text=_text_so_far(proc, r))
                    chunk[i], chunk_conf[i] = [], []
            if all(done):
                break
        return results


def _text_so_far(proc: EchoProcessor, result: GenerationResult) -> Callable[[], str]:
    """The report as of now, decoded when a caller reads it (tokens are only appended, so the first n stay)."""
    n = len(result.token_ids)
    return lambda: proc.decode(result.token_ids[:n])
