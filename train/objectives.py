"""The three training objectives: how a batch is built from items and how its loss is computed.

Each objective owns its noise and its loss and calls only the model's ``forward``. Batches are padded on the
right; padding keys are hidden and padding queries see only themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from echo_model.layouts import assemble, build_layout
from echo_model.masks import block_causal_mask
from echo_model.modeling import EchoModel, PaddedBatch, pad_sequences, prompt_images

from .items import TrainItem
from .losses import dcd_loss, masked_diffusion_loss, next_token_loss, step_weights


class Objective(Protocol):
    name: str

    def collate(self, items: list) -> dict: ...

    def loss(self, model: EchoModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...


def _pad_batch(ids: list[torch.Tensor], pos: list[torch.Tensor], allow: list[torch.Tensor], pad_id: int) -> dict:
    """Right-pad per-sample sequences into ``input_ids (B, L)``, ``position_ids (3, B, L)``, ``allow (B, L, L)``."""
    return vars(pad_sequences(ids, pos, allow, pad_id=pad_id))


def _images(items: list[TrainItem], copies: int = 1) -> dict:
    # the full layout holds each sample's image tokens ``copies`` times, in sample order
    px, grid = prompt_images([it.prompt for it in items for _ in range(copies)])
    return {"pixel_values": px, "image_grid_thw": grid}


def _logits(model: EchoModel, batch: dict) -> torch.Tensor:
    padded = PaddedBatch(batch["input_ids"], batch["position_ids"], batch["allow"])
    return model.forward_padded(padded, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])  # (B, L, V)


@dataclass
class AutoregressiveObjective:
    """Stage I: next-token CE on the response under causal attention."""

    pad_token_id: int
    name: str = "ar"

    def collate(self, items: list[TrainItem]) -> dict:
        ids, pos, allow, targets = [], [], [], []
        for it in items:
            seq = it.sequence
            ids.append(seq)
            pos.append(it.positions)
            allow.append(block_causal_mask(len(seq), 1))
            t = torch.full_like(seq, -100)
            P = it.prompt.length
            t[P - 1 : -1] = seq[P:]  # position j predicts token j+1, only for response tokens
            targets.append(t)
        batch = _pad_batch(ids, pos, allow, self.pad_token_id)
        batch["targets"] = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
        batch["tokens"] = int(sum(len(x) for x in ids))
        return batch | _images(items)

    def loss(self, model: EchoModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = next_token_loss(_logits(model, batch), batch["targets"])
        return loss, {"ce": loss.item()}


@dataclass
class DiffusionObjective:
    """Stage II (RAD, or the ``full`` duplication for comparison): per-block noise t ~ U(eps, 1), each response
    token of block n masked with probability t_n (at least one per sample), 1/t-weighted CE on masked tokens."""

    pad_token_id: int
    mask_token_id: int
    block_length: int
    layout: str = "rad"
    eps: float = 1e-3
    seed: int = 0
    name: str = "rad"
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)

    def noise(self, item: TrainItem) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked (R,) bool, t (R,))`` for the response of ``item``."""
        P, R, b = item.prompt.length, len(item.response), self.block_length
        blocks = torch.div(torch.arange(P, P + R), b, rounding_mode="floor")  # (R,)
        first = int(blocks[0])
        t_block = (1 - self.eps) * torch.rand(int(blocks[-1]) - first + 1, generator=self._gen) + self.eps  # (nb,)
        t = t_block[blocks - first]  # (R,)
        masked = torch.rand(R, generator=self._gen) < t
        if not masked.any():
            masked[torch.randint(R, (1,), generator=self._gen)] = True
        return masked, t

    def collate(self, items: list[TrainItem]) -> dict:
        ids, pos, allow, targets, weights = [], [], [], [], []
        for it in items:
            masked, t = self.noise(it)
            P = it.prompt.length
            clean = it.sequence
            noisy = clean.clone()
            noisy[P:][masked] = self.mask_token_id
            lay = build_layout(P, len(it.response), self.block_length, self.layout)
            x, p = assemble(lay, clean, noisy, it.positions)
            resp = lay.noisy_response()  # (L,)
            src = lay.source - P  # response index where resp
            tgt = torch.full_like(x, -100)
            w = torch.zeros(len(x))
            hit = resp.clone()
            hit[resp] = masked[src[resp]]
            tgt[hit] = clean[lay.source[hit]]
            w[hit] = 1.0 / t[src[hit]]
            ids.append(x), pos.append(p), allow.append(lay.allow), targets.append(tgt), weights.append(w)
        batch = _pad_batch(ids, pos, allow, self.pad_token_id)
        batch["targets"] = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
        batch["weights"] = torch.nn.utils.rnn.pad_sequence(weights, batch_first=True)
        batch["n_response"] = torch.tensor([len(it.response) for it in items])
        batch["tokens"] = int(sum(len(x) for x in ids))
        return batch | _images(items, copies=2 if self.layout == "full" else 1)

    def loss(self, model: EchoModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = masked_diffusion_loss(_logits(model, batch), batch["targets"], batch["weights"], batch["n_response"])
        return loss, {"diffusion_ce": loss.item()}


@dataclass
class DistillItem:
    """A training item plus the teacher's trajectory over its (teacher-written) response.

    ``item.response`` holds the teacher's committed tokens b-hat; per response position: ``steps`` (R,) the
    1-based commit step, ``top_ids`` / ``top_probs`` (R, K) the teacher distribution at that step.
    """

    item: TrainItem
    steps: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor


@dataclass
class DistillationObjective:
    """Stage III (DCD): the student sees every response block fully masked (RAD layout, t = 1) with the
    teacher's clean blocks as context, and matches the teacher's commit-time distributions."""

    pad_token_id: int
    mask_token_id: int
    eos_token_id: int
    block_length: int
    eos_weight: float = 1.0
    step_weighting: bool = True
    name: str = "dcd"

    def collate(self, items: list[DistillItem]) -> dict:
        ids, pos, allow, rows = [], [], [], []
        top_ids, top_probs, steps, blocks, committed = [], [], [], [], []
        for i, d in enumerate(items):
            it = d.item
            P, R = it.prompt.length, len(it.response)
            clean = it.sequence
            noisy = clean.clone()
            noisy[P:] = self.mask_token_id
            lay = build_layout(P, R, self.block_length, "rad")
            x, p = assemble(lay, clean, noisy, it.positions)
            where = lay.noisy_response().nonzero().flatten()  # (R,) in response order
            src = lay.source[where] - P
            rows.append(torch.stack([torch.full_like(where, i), where], 1))
            top_ids.append(d.top_ids[src]), top_probs.append(d.top_probs[src]), steps.append(d.steps[src])
            blocks.append(i * 100_000 + torch.div(lay.source[where], self.block_length, rounding_mode="floor"))
            committed.append(it.response[src])
            ids.append(x), pos.append(p), allow.append(lay.allow)
        batch = _pad_batch(ids, pos, allow, self.pad_token_id)
        step = torch.cat(steps)
        batch.update(
            rows=torch.cat(rows), top_ids=torch.cat(top_ids), top_probs=torch.cat(top_probs),
            weights=step_weights(step, torch.cat(blocks)) if self.step_weighting else torch.ones(len(step)),
            committed=torch.cat(committed), tokens=int(sum(len(x) for x in ids)),
        )
        return batch | _images([d.item for d in items])

    def loss(self, model: EchoModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = _logits(model, batch)  # (B, L, V)
        r = batch["rows"]
        return dcd_loss(logits[r[:, 0], r[:, 1]], batch["top_ids"], batch["top_probs"], batch["weights"],
                        batch["committed"], eos_token_id=self.eos_token_id, eos_weight=self.eos_weight)
