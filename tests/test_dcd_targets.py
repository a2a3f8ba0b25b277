"""DCD targets on a toy teacher whose outputs are known in closed form.

The toy teacher's logits at absolute position p, while m positions of the current block are still masked,
put value ``0.5 * (p mod b) + 0.3 * (b - m)`` on token ``10 + p mod 5`` and 0 elsewhere (``<eos>`` wins at
one chosen position). Every confidence is far below tau, so the commit rule takes one position per step,
the one with the largest ``p mod b``: position j of a full block is committed at step ``b - (j mod b)``,
when ``m = j mod b + 1`` positions are still masked. So each recorded target must be that closed-form
distribution, each weight ``step / mean(step in block)``, and the ``<eos>`` CE must sit exactly where the
teacher wrote ``<eos>``.
"""

from __future__ import annotations

import math

import torch

from echo_model.data.records import StudyRecord
from train.items import encode_items
from train.objectives import DistillationObjective
from train.trajectories import record_trajectories


class ToyTeacher:
    """Implements what the samplers use of :class:`EchoModel`, with closed-form logits."""

    def __init__(self, *, block_length: int, vocab: int, mask_id: int, eos_id: int, eos_at: int):
        self.block_length, self.vocab, self.mask_id, self.eos_id, self.eos_at = block_length, vocab, mask_id, eos_id, eos_at
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def new_cache(self):
        return None  # the toy's logits do not depend on the cache

    def rope_index(self, prompt, image_token_id):
        n = prompt.length
        return torch.arange(n)[None].expand(3, n), 0

    def logits_at(self, p: int, masked_in_block: int) -> torch.Tensor:
        b = self.block_length
        out = torch.zeros(self.vocab)
        if p == self.eos_at:
            out[self.eos_id] = 5.0
        else:
            out[10 + p % 5] = 0.5 * (p % b) + 0.3 * (b - masked_in_block)
        return out

    def __call__(self, input_ids, *, position_ids, attention_bias, cache, keep_kv=None, pixel_values=None, image_grid_thw=None,
                 logits_at=None):
        B, q = input_ids.shape
        b = self.block_length
        out = torch.zeros(B, q, self.vocab)
        for i in range(B):
            block = input_ids[i, -b:]
            m = int((block == self.mask_id).sum())
            for j in range(q):
                out[i, j] = self.logits_at(int(position_ids[0, i, j]), m)
        return out if logits_at is None else out[:, -logits_at:]


def test_targets_are_commit_time_distributions(checkpoint):
    proc = checkpoint.processor
    b, V = 4, len(proc.tokenizer)
    rec = StudyRecord(id="s1", findings="The lungs are clear.", impression="Normal.", indication="cough")
    prompt_len = proc.encode([], indication="cough").length
    P_aligned = (prompt_len // b + 1) * b  # start of the first block without prompt tokens
    eos_at = P_aligned + b + 2  # <eos> in the middle of the second full generated block
    toy = ToyTeacher(block_length=b, vocab=V, mask_id=proc.mask_token_id, eos_id=proc.eos_token_id, eos_at=eos_at)
    items = encode_items([rec], toy, proc, block_pad=True)
    data, stats = record_trajectories(toy, proc, items, top_k=V, max_new_tokens=64, max_repeats=10_000)
    assert stats.kept == 1
    d = data[0]
    P = d.item.prompt.length
    tokens = d.item.response.tolist()

    # 1. Tokens and commit steps follow the closed form; the stop is at the block holding <eos>.
    assert P + len(tokens) == eos_at - eos_at % b + b
    for k, tok in enumerate(tokens):
        p = P + k
        j = p % b
        first_block = p // b == P // b
        if p < eos_at:
            assert tok == 10 + p % 5
        else:
            assert tok == proc.eos_token_id
        if p <= eos_at and not first_block:
            # full block: position j committed at step b - j, when j + 1 positions were masked
            want_step = b - j if p != eos_at else 1  # the <eos> logit (5.0) beats every other position
            if p // b == eos_at // b and p != eos_at:
                want_step = b - j + (1 if j > eos_at % b else 0)
            assert int(d.steps[k]) == want_step, (k, p)
            masked = b - want_step + 1
            want = torch.softmax(toy.logits_at(p, masked), -1)
            got = torch.zeros(V).index_add_(0, d.top_ids[k], d.top_probs[k])
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    # 2. Step-wise weights: proportional to the commit step, mean 1 within each block.
    obj = DistillationObjective(proc.pad_token_id, proc.mask_token_id, proc.eos_token_id, b)
    batch = obj.collate(data)
    cols = (torch.arange(P, P + len(tokens)) // b).tolist()
    for blk in set(cols):
        idx = [k for k, c in enumerate(cols) if c == blk]
        steps = d.steps[idx].float()
        torch.testing.assert_close(batch["weights"][idx], steps / steps.mean())

    # 3. The <eos> CE applies exactly where the teacher wrote <eos> (and after it, in the last block).
    is_eos = (batch["committed"] == proc.eos_token_id).tolist()
    assert is_eos == [P + k >= eos_at for k in range(len(tokens))]
    after = [k for k in range(len(tokens)) if P + k > eos_at]
    assert all(d.top_ids[k, 0] == proc.eos_token_id and math.isclose(float(d.top_probs[k, 0]), 1.0) for k in after)
