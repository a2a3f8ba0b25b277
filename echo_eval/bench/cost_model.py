"""What a forward costs: the probe's measured medians per query length T (what predictions use), the fitted
line ``t(T) = a + c*T`` and the speedup cap it implies (reported figures; see :mod:`echo_eval.bench`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from echo_model.masks import block_causal_rows, to_attention_bias
from echo_model.modeling import EchoModel, text_positions
from echo_model.processing import EchoProcessor, StudyPrompt
from echo_model.sampling import sampler_spec

from .config import DEFAULT_QUERY_LENGTHS


# ---------------------------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class CostModel:
    """``t(T) = a + c*T``: seconds of one forward with T query tokens against a cache of the prompt.

    ``a`` is what a forward costs regardless of its width (weights streamed from memory, kernel launches,
    Python); ``c`` what each extra query token adds (FLOPs). The ratio decides how much of b is left.
    """

    a: float
    c: float
    r2: float = 1.0

    def seconds(self, query_tokens: float) -> float:
        return self.a + self.c * query_tokens

    def cap(self, block_length: int) -> float:
        """:func:`speedup_cap` of this model."""
        return speedup_cap(self.a, self.c, block_length)


def speedup_cap(a: float, c: float, block_length: int) -> float:
    """Upper bound of ECHO's wall-clock speedup over AR from the forward cost alone.

    AR spends ``t(1)`` per token; ECHO spends ``t(2b)`` per b tokens (fused cache), so
    ``cap_b = b * t(1) / t(2b) = b (a + c) / (a + 2 b c)``: b when forwards are free per token (c = 0),
    1/2 when they are pure FLOPs (a = 0).
    """
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    denom = a + 2 * block_length * c
    if denom <= 0 or a + c <= 0:
        raise ValueError(f"cost model gives non-positive forward times (a={a}, c={c}); cannot bound the speedup")
    return block_length * (a + c) / denom


def fit_cost_model(query_lengths: Sequence[float], seconds: Sequence[float]) -> CostModel:
    """Least-squares fit of ``seconds ~ a + c * query_lengths``.

    Raises:
        ValueError: mismatched lengths, fewer than two distinct T, or a non-positive / non-finite time.
    """
    x = np.asarray(query_lengths, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equal-length 1-D sequences, got {list(x.shape)} and {list(y.shape)}")
    if len(np.unique(x)) < 2:
        raise ValueError(f"need at least two distinct query lengths, got {x.tolist()}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"forward times must be positive and finite, got {y.tolist()}")
    design = np.stack([np.ones_like(x), x], axis=1)  # (n, 2)
    (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - (a + c * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 1.0
    return CostModel(a=float(a), c=float(c), r2=r2)


@dataclass(frozen=True)
class CostPoint:
    """Timings of one query length T (seconds per forward)."""

    query_tokens: int
    median: float
    min: float
    max: float


@dataclass(frozen=True)
class CostProbe:
    """What :func:`probe_forward_costs` measured and fitted."""

    batch: int
    cache_length: int
    points: list[CostPoint]
    prefill_seconds: float
    model: CostModel

    def seconds(self, query_tokens: int) -> float:
        """The measured median of one forward with ``query_tokens`` queries (no fit, no interpolation).

        Raises:
            ValueError: when that length was not probed (the message lists the probed ones).
        """
        for p in self.points:
            if p.query_tokens == query_tokens:
                return p.median
        raise ValueError(f"query length T={query_tokens} was not probed; probed: "
                         f"{[p.query_tokens for p in self.points]}")

    def to_json(self, block_lengths: Sequence[int] = (8, 16)) -> dict[str, Any]:
        out: dict[str, Any] = {
            "a": self.model.a, "c": self.model.c, "r2": round(self.model.r2, 5),
            "batch": self.batch, "cache_length": self.cache_length, "prefill_seconds": self.prefill_seconds,
            "points": [asdict(p) for p in self.points],
        }
        for b in block_lengths:
            out[f"cap_b{b}"] = safe_cap(self.model, b)
        # The same fit on the fastest repeat of each T: contention on a shared machine only adds time, so
        # this one is the more robust when the medians are noisy.
        low = fit_cost_model([p.query_tokens for p in self.points], [p.min for p in self.points])
        out["fit_on_min"] = {"a": low.a, "c": low.c, **{f"cap_b{b}": safe_cap(low, b) for b in block_lengths}}
        return out


def safe_cap(model: CostModel, block_length: int) -> float | None:
    """The cap, or None when a noisy fit gives non-positive forward times (reported, not raised)."""
    try:
        return round(model.cap(block_length), 4)
    except ValueError:
        return None


#: Forwards of one shape per round of the probe; the first of each burst is not timed.
PROBE_BURST = 3


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()  # as in the samplers
def probe_forward_costs(
    model: EchoModel,
    processor: EchoProcessor,
    prompt: StudyPrompt,
    *,
    batch: int = 1,
    query_lengths: Sequence[int] = DEFAULT_QUERY_LENGTHS,
    repeats: int = 7,
) -> CostProbe:
    """Time ``EchoModel.forward`` for T query tokens against a cache holding ``prompt`` (batch copies).

    Each forward is read-only (``keep_kv=0``), as in the samplers, so the cache stays at the prompt length;
    the crop the model does after the forward is part of the timed cost, as it is in decoding. Like the
    samplers, a forward of T queries projects ``min(T, b)`` columns onto the vocabulary (1 for a token, the
    block for a block or a fused ``[previous | current]`` forward) and the prefill one column. The prompt
    prefill (vision tower included) is timed too, for predicting whole runs.
    """
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be >= 1, got batch={batch}, repeats={repeats}")
    device, dtype, b = model.device, model.dtype, model.block_length
    P = prompt.length
    rope, delta = model.rope_index(prompt, processor.image_token_id)  # (3, P), int
    ids = prompt.input_ids[None].expand(batch, P).to(device)  # (B, P)
    positions = rope[:, None].expand(3, batch, P).to(device)  # (3, B, P)
    bias = to_attention_bias(block_causal_rows(0, P, P, b, device=device), dtype).expand(batch, 1, P, P)
    pixels = grid = None
    if prompt.pixel_values is not None:
        pixels = torch.cat([prompt.pixel_values] * batch).to(device, dtype)
        grid = torch.cat([prompt.image_grid_thw] * batch).to(device)

    def prefill() -> tuple[Any, float]:
        cache = model.new_cache()
        sync_device(device)
        t0 = time.perf_counter()
        model(ids, position_ids=positions, attention_bias=bias, cache=cache, pixel_values=pixels, image_grid_thw=grid,
              logits_at=1)
        sync_device(device)
        return cache, time.perf_counter() - t0

    prefill()  # warm-up
    prefill_times = [prefill()[1] for _ in range(max(1, min(repeats, 5)))]
    cache, _ = prefill()
    lengths = sorted({int(t) for t in query_lengths})
    inputs = {
        T: (torch.full((batch, T), processor.mask_token_id, dtype=torch.long, device=device),  # (B, T)
            text_positions(P, T, delta, device=device)[:, None].expand(3, batch, T),  # (3, B, T)
            torch.zeros(batch, 1, T, P + T, dtype=dtype, device=device))  # (B, 1, T, P+T)
        for T in lengths
    }
    times: dict[int, list[float]] = {T: [] for T in lengths}
    # Round-robin over T, so load drift hits every T alike; within a round, a burst of forwards of one shape
    # with the first untimed. A sampler's loop runs its forwards back to back at one shape, and the first
    # forward after a change of shape costs more (on a CPU, +15 % for T = 1 when six lengths alternate).
    for i in range(repeats + 1):
        for T in lengths:
            q_ids, q_pos, q_bias = inputs[T]
            for j in range(PROBE_BURST):
                sync_device(device)
                t0 = time.perf_counter()
                model(q_ids, position_ids=q_pos, attention_bias=q_bias, cache=cache, keep_kv=0,
                      logits_at=min(T, b))
                sync_device(device)
                if i and j:  # round 0 warms each shape up; the first forward of a burst pays the switch
                    times[T].append(time.perf_counter() - t0)
    points = [CostPoint(T, float(np.median(v)), float(min(v)), float(max(v))) for T, v in times.items()]
    fit = fit_cost_model([p.query_tokens for p in points], [p.median for p in points])
    return CostProbe(batch=batch, cache_length=P, points=points, prefill_seconds=float(np.median(prefill_times)),
                     model=fit)


class ForwardCost(Protocol):
    """Anything that gives the seconds of one forward with T query tokens: a :class:`CostProbe` (its measured
    medians, what predictions use) or a :class:`CostModel` (the fitted line, a reported figure)."""

    def seconds(self, query_tokens: int) -> float: ...


def forward_schedule(arm: str, *, model_calls: float, forward_passes: float, block_length: int) -> dict[int, float]:
    """Query length T -> how many forwards of T queries a run made after its prefill (from its own counts).

    * ``ar``: the prefill yields token 1, then one 1-token forward per further token;
    * ``echo`` / ``vanilla``: the first block is one read-only forward of b queries, every further block one
      fused forward of ``[previous | current]`` = 2b queries;
    * ``teacher``: b-query forwards, the denoising steps plus one cache write per finished block.
    """
    spec = sampler_spec(arm)
    first, later = spec.query_tokens(block_length)
    if spec.one_step:
        counts = [(first, min(forward_passes, 1)), (later, max(forward_passes - 1, 0))]
    else:
        counts = [(later, max(model_calls - 1, 0))]
    out: dict[int, float] = {}
    for T, n in counts:
        if n > 0:
            out[T] = out.get(T, 0) + n
    return out


def schedule_query_lengths(arms: Sequence[str], block_length: int) -> tuple[int, ...]:
    """Every query length the forwards of ``arms`` can have with block length b (what the probe must time)."""
    return tuple(sorted({T for a in arms for T in sampler_spec(a).query_tokens(block_length)}))


def predicted_seconds(arm: str, *, model_calls: float, forward_passes: float, block_length: int,
                      cost: ForwardCost, prefill_seconds: float) -> float:
    """Seconds a run should take if only the forwards cost time: the measured prefill plus, for each forward
    of :func:`forward_schedule`, ``cost.seconds(T)`` at its query length T.

    Why: the gap between this and the measured time is the sampler's own overhead (Python, masks,
    sampling, cache bookkeeping) — the part a faster sampler can remove. With a :class:`CostProbe` as
    ``cost`` the prediction uses the measured medians at exactly those lengths (the prediction); with a
    :class:`CostModel` the fitted line (a reported figure: the line overstates t(1)).
    """
    schedule = forward_schedule(arm, model_calls=model_calls, forward_passes=forward_passes,
                                block_length=block_length)
    return prefill_seconds + sum(n * cost.seconds(T) for T, n in schedule.items())
