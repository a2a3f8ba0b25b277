"""Block-diffusion samplers: the multi-step teacher (ECHO-Base) and one-step ECHO with the fused cache.

Implements the official inference algorithm (method.md §2, ``inference/generate_echo.py``):

1. Prefill the prompt's complete blocks with the block-causal mask; the prompt's last partial block (the
   "tail") is decoded together with the first generated tokens, as in the official code (which prefills the
   whole prompt and then crops the tail off the cache; computing the tail's keys there is wasted work).
2. For each block k of b positions, left to right:
   * ``steps == 1`` and ``fused`` (ECHO): ONE forward over ``[block k-1, final | block k, masked]``; the
     cache keeps only block k-1's keys/values (official ``store_kv_len=b``), block k's logits are decoded
     and all its masks committed. The first block is a read-only forward.
   * otherwise (teacher): ``steps`` read-only forwards, each committing tokens with the commit rule, then one
     forward that writes the finished block into the cache.
3. Stop after the block that contains ``<eos>`` (unless ``fixed_length``), or at ``max_new_tokens``.

Batches: each prompt is left-padded by a *multiple of b* so that every sample keeps the block boundaries of
its single run and all prompt tails land in the same block; padding keys are masked out. A batch therefore
reproduces the single runs exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch

from ..masks import canvas_bias
from ..modeling import EchoModel, prompt_images, text_positions
from ..processing import EchoProcessor, StudyPrompt
from .base import (
    BlockEvent,
    GenerationResult,
    Sampler,
    SamplerConfig,
    num_transfer_tokens,
    sample_tokens,
    to_host,
)
from .commit import commit_mask


@dataclass
class CommitStep:
    """What one denoising step committed, for callers that record teacher trajectories (DCD, method.md §3.4).

    Attributes:
        block: 0-based index of the block among the batch's decoded blocks.
        step: 1-based denoising step within the block at which these positions were committed.
        committed: ``(B, b)`` bool, positions committed at this step.
        tokens: ``(B, b)`` the committed tokens (valid where ``committed``).
        logits: ``(B, b, V)`` the model's logits at this step (the distribution *at commit time*).
        response_index: ``(B, b)`` long, index of each position in its sample's generated response
            (negative for the prompt tail).
    """

    block: int
    step: int
    committed: torch.Tensor
    tokens: torch.Tensor
    logits: torch.Tensor
    response_index: torch.Tensor


@dataclass
class _Layout:
    """The padded batch canvas. Columns are absolute positions shared by the batch.

    Attributes:
        x: ``(B, T)`` token ids (prompt, then mask ids to fill).
        masked: ``(B, T)`` bool, True where a generated position is still masked.
        valid: ``(B, T)`` bool, False at left padding.
        positions: ``(3, B, T)`` M-RoPE ids.
        start: first generated column per sample.
        end_block: last block index each sample may decode.
        prefix_blocks: M, the number of complete blocks prefilled (the block holding every prompt tail).
        pixel_values / image_grid_thw: the batch's images, in sample order.
    """

    x: torch.Tensor
    masked: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    bias: torch.Tensor
    start: list[int]
    end_block: list[int]
    prefix_blocks: int
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


class BlockDiffusionSampler(Sampler):
    """Decode with a block-diffusion checkpoint; ``steps=1, fused=True`` is ECHO, ``steps=b`` the teacher."""

    def __init__(self, model: EchoModel, processor: EchoProcessor, config: SamplerConfig = SamplerConfig(), *, name: str = "echo"):
        super().__init__(model, processor, config, name=name)
        self.steps = config.steps if config.steps is not None else self.block_length
        self.transfer = num_transfer_tokens(self.block_length, self.steps)

    @torch.inference_mode()  # no autograd bookkeeping at all: see Sampler.stream
    def stream(
        self, prompts: StudyPrompt | Sequence[StudyPrompt], *, on_commit: Callable[[CommitStep], None] | None = None
    ) -> Generator[BlockEvent, None, list[GenerationResult]]:
        """Yield a :class:`BlockEvent` per committed block; the generator's return value is the results.

        ``on_commit`` is called after every denoising step with a :class:`CommitStep`.
        """
        prompts, clock, generator = self._begin(prompts)
        cfg, b, device = self.config, self.block_length, self.model.device
        lay = self._layout(prompts)
        B, T = lay.x.shape
        results = [GenerationResult(sampler=self.name, token_ids=[], text="") for _ in range(B)]
        done = [False] * B
        cache = self.model.new_cache()

        # 1. Prefill the complete prompt blocks (block-causal, padding keys hidden).
        M = lay.prefix_blocks
        if M > 0:  # its logits are never read: project one position, not M*b, onto the vocabulary
            self._forward(lay, cache, 0, M * b, keep_kv=None, images=True, logits=1)
            for r in results:
                r.model_calls += 1

        # 2. Decode block by block.
        fused = self.steps == 1 and cfg.fused
        for k in range(M, T // b):
            lo, hi = k * b, (k + 1) * b
            active = [not d for d in done]
            if fused:
                q_lo, keep = (lo, 0) if k == M else (lo - b, b)
                logits = self._forward(lay, cache, q_lo, hi, keep_kv=keep, logits=b)  # (B, b, V)
                self._count(results, active, denoise=True)
                block_conf = self._commit_all(lay, lo, hi, logits, generator, on_commit=on_commit, block=k - M)
                block_step = None  # every token at step 1
            else:
                block_conf = torch.zeros(B, b, device=device)  # (B, b) confidence at commit time
                block_step = torch.zeros(B, b, dtype=torch.long, device=device)  # (B, b) step of commit
                for s in range(self.steps):
                    has_mask = lay.masked[:, lo:hi].any(-1).tolist()  # (B,)
                    if not any(has_mask):
                        break
                    logits = self._forward(lay, cache, lo, hi, keep_kv=0)  # (B, b, V)
                    self._count(results, [a and m for a, m in zip(active, has_mask)], denoise=True)
                    before = lay.masked[:, lo:hi].clone()  # (B, b)
                    block_conf = self._commit(lay, lo, hi, logits, self.transfer[s], generator, block_conf,
                                              on_commit=on_commit, block=k - M, step=s + 1)
                    block_step[before & ~lay.masked[:, lo:hi]] = s + 1
            # 3. Record the block, decide who stops. The block's ids, confidences and steps reach the host in
            # one transfer (float64 holds all three exactly): the loop's one device sync, the one <eos> needs.
            ids_rows, conf_rows, step_rows = _to_host(lay.x[:, lo:hi], block_conf, block_step)
            now = clock()
            for i in range(B):
                if done[i]:
                    continue
                g = max(lo, lay.start[i]) - lo
                block_ids = ids_rows[i][g:]
                results[i].blocks.append(block_ids)
                results[i].block_confidences.append(conf_rows[i][g:])
                results[i].block_steps.append(step_rows[i][g:])
                if len(results[i].blocks) == 1:
                    results[i].first_block_seconds = now
                hit_eos = self.processor.eos_token_id in block_ids and not cfg.fixed_length
                done[i] = hit_eos or k >= lay.end_block[i]
                results[i].stopped_by_eos = hit_eos
                if done[i]:
                    self._finish(results[i], now)
                yield BlockEvent(
                    sample=i,
                    block=len(results[i].blocks) - 1,
                    token_ids=block_ids,
                    confidences=results[i].block_confidences[-1],
                    seconds=now,
                    done=done[i],
                    steps=results[i].block_steps[-1],
                    result=results[i] if done[i] else None,
                    decode_text=self._text_so_far(results[i], done[i]),
                )
            if all(done):
                break
            if not fused:  # teacher: write the finished block's keys/values (official store_kv=True pass)
                self._forward(lay, cache, lo, hi, keep_kv=None, logits=1)  # its logits are never read
                self._count(results, [not d for d in done], denoise=False)
        return results

    # ------------------------------------------------------------------ internals
    def _layout(self, prompts: list[StudyPrompt]) -> _Layout:
        b, cfg, proc = self.block_length, self.config, self.processor
        lens = [p.length for p in prompts]
        full = [n // b for n in lens]
        M = max(full)
        pads = [b * (M - f) for f in full]
        start = [pad + n for pad, n in zip(pads, lens)]
        own_blocks = [math.ceil((n + cfg.max_new_tokens) / b) for n in lens]  # official nb per sample
        end_block = [nb - 1 + (M - f) for nb, f in zip(own_blocks, full)]
        T = (max(end_block) + 1) * b
        B = len(prompts)
        device = self.model.device
        x = torch.full((B, T), proc.mask_token_id, dtype=torch.long)
        masked = torch.zeros(B, T, dtype=torch.bool)
        valid = torch.ones(B, T, dtype=torch.bool)
        positions = torch.zeros(3, B, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            pad, n = pads[i], lens[i]
            image_cols = (p.input_ids == proc.image_token_id).nonzero().flatten()
            if len(image_cols) and int(image_cols.max()) >= full[i] * b:
                raise ValueError(f"prompt {i}: image tokens reach its last partial block ({n} tokens, b={b}); "
                                 "the prompt must end with text")
            x[i, :pad] = proc.pad_token_id
            valid[i, :pad] = False
            x[i, pad : pad + n] = p.input_ids
            masked[i, start[i] :] = True
            rope, delta = self.model.rope_index(p, proc.image_token_id)  # (3, n), int
            positions[:, i, pad : pad + n] = rope.cpu()
            positions[:, i, start[i] :] = text_positions(start[i], T - start[i], delta, shift=pad)
        pixel_values, grid = prompt_images(prompts)
        valid = valid.to(device)
        dtype = self.model.dtype
        # (B, 1, T, T): every forward takes a slice of it; shared between calls when no row is padded
        bias = canvas_bias(T, b, dtype, batch=B, key_valid=valid if any(pads) else None, device=device)
        return _Layout(
            x=x.to(device), masked=masked.to(device), valid=valid, positions=positions.to(device),
            bias=bias,
            start=start, end_block=end_block, prefix_blocks=M,
            pixel_values=pixel_values.to(device, dtype) if pixel_values is not None else None,
            image_grid_thw=grid.to(device) if grid is not None else None,
        )

    def _forward(self, lay: _Layout, cache, q_lo: int, q_hi: int, *, keep_kv: int | None, images: bool = False,
                 logits: int | None = None) -> torch.Tensor:
        """Forward over columns ``q_lo:q_hi`` against the cache (which holds columns ``0:q_lo``); logits of the
        last ``logits`` columns only (None = all)."""
        return self.model(
            lay.x[:, q_lo:q_hi],
            position_ids=lay.positions[:, :, q_lo:q_hi],
            attention_bias=lay.bias[:, :, q_lo:q_hi, :q_hi],  # (B, 1, q, k)
            cache=cache,
            keep_kv=keep_kv,
            pixel_values=lay.pixel_values if images else None,
            image_grid_thw=lay.image_grid_thw if images else None,
            logits_at=logits,
        )

    def _commit_all(self, lay: _Layout, lo: int, hi: int, logits: torch.Tensor, generator, *, on_commit,
                    block: int) -> torch.Tensor:
        """One denoising step per block (ECHO's fused path, method.md §2): every masked position of the block is
        committed, so the commit rule has nothing to choose. Returns the ``(B, b)`` confidences (positions that
        were not masked, the prompt's tail in the first block, are never read)."""
        tokens, conf = sample_tokens(logits, self.config, generator)  # (B, b), (B, b)
        if lo >= max(lay.start):  # no prompt tail in the block (every block after the first): all masked
            lay.x[:, lo:hi] = tokens
            sel = lay.masked[:, lo:hi].clone() if on_commit is not None else None  # (B, b), all True
        else:
            sel = lay.masked[:, lo:hi].clone()  # (B, b)
            lay.x[:, lo:hi] = torch.where(sel, tokens, lay.x[:, lo:hi])
        lay.masked[:, lo:hi] = False
        if on_commit is not None:
            self._report_commit(lay, lo, hi, on_commit, block=block, step=1, sel=sel, tokens=tokens, logits=logits)
        return conf

    def _report_commit(self, lay: _Layout, lo: int, hi: int, on_commit, *, block: int, step: int, sel: torch.Tensor,
                       tokens: torch.Tensor, logits: torch.Tensor) -> None:
        cols = torch.arange(lo, hi, device=lay.x.device)
        index = cols[None] - torch.tensor(lay.start, device=lay.x.device)[:, None]  # (B, b)
        on_commit(CommitStep(block=block, step=step, committed=sel, tokens=tokens, logits=logits, response_index=index))

    def _commit(self, lay: _Layout, lo: int, hi: int, logits: torch.Tensor, n: int, generator,
                block_conf: torch.Tensor, *, on_commit, block: int, step: int) -> torch.Tensor:
        """Sample, apply the commit rule in place on the canvas; return the updated commit confidences."""
        if n >= self.block_length:  # one step per block: every masked position is committed
            return self._commit_all(lay, lo, hi, logits, generator, on_commit=on_commit, block=block)
        tokens, conf = sample_tokens(logits, self.config, generator)  # (B, b), (B, b)
        cur_masked = lay.masked[:, lo:hi].clone()  # (B, b); a copy: the canvas is updated below
        sel = commit_mask(cur_masked, conf, n=n, threshold=self.config.threshold)  # (B, b)
        lay.x[:, lo:hi] = torch.where(sel, tokens, lay.x[:, lo:hi])
        lay.masked[:, lo:hi] = cur_masked & ~sel
        if on_commit is not None:
            self._report_commit(lay, lo, hi, on_commit, block=block, step=step, sel=sel, tokens=tokens, logits=logits)
        return torch.where(sel, conf.float(), block_conf)  # (B, b)

    @staticmethod
    def _count(results: list[GenerationResult], which: list[bool], *, denoise: bool) -> None:
        for r, w in zip(results, which):
            if w:
                r.model_calls += 1
                r.forward_passes += int(denoise)

    def _text_so_far(self, result: GenerationResult, done: bool) -> Callable[[], str]:
        """The report as of now, decoded when a caller reads it (blocks are only appended, so the first n stay)."""
        if done:
            text = result.text
            return lambda: text
        n = len(result.blocks)
        return lambda: self.processor.decode([t for block in result.blocks[:n] for t in block])

    def _finish(self, result: GenerationResult, now: float) -> None:
        ids = _generated(result)[: self.config.max_new_tokens]
        eos = self.processor.eos_token_id
        if not self.config.fixed_length and eos in ids:
            ids = ids[: ids.index(eos) + 1]
        result.token_ids = ids
        result.text = self.processor.decode(ids)
        result.seconds = now


def _generated(result: GenerationResult) -> list[int]:
    """Every token the sample's blocks committed so far, in order (its canvas from its first generated column)."""
    return [t for block in result.blocks for t in block]


def _to_host(ids: torch.Tensor, conf: torch.Tensor,
             step: torch.Tensor | None) -> tuple[list[list[int]], list[list[float]], list[list[int]]]:
    """``(B, b)`` token ids, confidences and commit steps (None: all 1) as Python lists (:func:`to_host`)."""
    rows = to_host(ids, conf, *([step] if step is not None else []))
    return rows[0], rows[1], rows[2] if step is not None else [[1] * ids.shape[1] for _ in rows[0]]
