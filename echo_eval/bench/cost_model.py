"""What a forward costs: the probe's measured medians per query length T (what predictions use), the fitted
line ``t(T) = a + c*T`` and the speedup cap it implies (reported figures; see :mod:`echo_eval.bench`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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

    def seconds(self, query_tokens: float, cache_growth: float | None = None) -> float:
        """The line at ``query_tokens`` (fitted at the prompt's cache; ``cache_growth`` is not modelled)."""
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
    """What a :class:`ForwardProbe` measured and fitted.

    ``points`` are timed against a cache holding the prompt (``cache_length`` tokens); ``grown_points``, when
    probed, against the same cache grown by ``grown_cache_length - cache_length`` generated tokens. A forward's
    attention reads every cached key, so its cost rises with the cache: on the embedded model t(16) is ~24 %
    dearer at 384 tokens past the prompt than at the prompt, t(1) ~8 %.
    """

    batch: int
    cache_length: int
    points: list[CostPoint]
    prefill_seconds: float
    model: CostModel
    grown_cache_length: int | None = None
    grown_points: list[CostPoint] = field(default_factory=list)
    rounds: int = 0

    def seconds(self, query_tokens: int, cache_growth: float | None = None) -> float:
        """The measured median of one forward with ``query_tokens`` queries (no fit).

        With ``cache_growth`` (generated tokens the cache held before the forward, beyond the prompt) and a
        grown probe, the median is interpolated linearly in the cache length between the prompt's cache and the
        grown one (extrapolated beyond it); otherwise it is the median at the prompt's cache.

        Raises:
            ValueError: when that length was not probed (the message lists the probed ones).
        """
        at_prompt = _median_at(self.points, query_tokens)
        if cache_growth is None or not self.grown_points or self.grown_cache_length is None:
            return at_prompt
        grown = _median_at(self.grown_points, query_tokens)
        return at_prompt + (grown - at_prompt) * cache_growth / (self.grown_cache_length - self.cache_length)

    def to_json(self, block_lengths: Sequence[int] = (8, 16)) -> dict[str, Any]:
        out: dict[str, Any] = {
            "a": self.model.a, "c": self.model.c, "r2": round(self.model.r2, 5),
            "batch": self.batch, "cache_length": self.cache_length, "prefill_seconds": self.prefill_seconds,
            "points": [asdict(p) for p in self.points], "rounds": self.rounds,
        }
        if self.grown_points:
            out["grown"] = {"cache_length": self.grown_cache_length, "points": [asdict(p) for p in self.grown_points]}
        for b in block_lengths:
            out[f"cap_b{b}"] = safe_cap(self.model, b)
        # The same fit on the fastest repeat of each T: contention on a shared machine only adds time, so
        # this one is the more robust when the medians are noisy.
        low = fit_cost_model([p.query_tokens for p in self.points], [p.min for p in self.points])
        out["fit_on_min"] = {"a": low.a, "c": low.c, **{f"cap_b{b}": safe_cap(low, b) for b in block_lengths}}
        return out


def _median_at(points: Sequence[CostPoint], query_tokens: int) -> float:
    for p in points:
        if p.query_tokens == query_tokens:
            return p.median
    raise ValueError(f"query length T={query_tokens} was not probed; probed: {[p.query_tokens for p in points]}")


def safe_cap(model: CostModel, block_length: int) -> float | None:
    """The cap, or None when a noisy fit gives non-positive forward times (reported, not raised)."""
    try:
        return round(model.cap(block_length), 4)
    except ValueError:
        return None


#: Forwards of one shape per round of the probe; the first ``PROBE_SKIP`` of each burst are not timed.
PROBE_BURST = 6
PROBE_SKIP = 2


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardProbe:
    """Times ``EchoModel.forward`` for T query tokens against a cache holding ``prompt`` (batch copies), one
    :meth:`round` at a time, so a benchmark can interleave its rounds with the arms' runs (the probe then shares
    their moments on a machine whose speed drifts); :meth:`result` gives the :class:`CostProbe`.

    Each forward is read-only (``keep_kv=0``), as in the samplers, so the cache stays at the prompt length;
    the crop the model does after the forward is part of the timed cost, as it is in decoding. Like the
    samplers, a forward of T queries projects ``min(T, b)`` columns onto the vocabulary (1 for a token, the
    block for a block or a fused ``[previous | current]`` forward) and the prefill one column. The prompt
    prefill (vision tower included) is timed once per round too, for predicting whole runs.

    With ``grow_cache`` > 0 every T is also timed against a second cache holding the prompt plus that many
    generated tokens (``CostProbe.grown_points``), in the same rounds: decoding forwards read a cache that grows
    with the report, and :meth:`CostProbe.seconds` interpolates between the two.

    Within a round, T (and the caches) go round-robin, so drift hits every T alike, each in a burst of
    ``PROBE_BURST`` forwards of one shape whose first ``PROBE_SKIP`` are not timed: a sampler's loop runs its
    forwards back to back at one shape, and the first forwards after a change of shape cost more (on a CPU,
    +15 % for T = 1 when six lengths alternate). The constructor runs one untimed round (warm-up).
    """

    @torch.inference_mode()  # as in the samplers
    def __init__(self, model: EchoModel, processor: EchoProcessor, prompt: StudyPrompt, *, batch: int = 1,
                 query_lengths: Sequence[int] = DEFAULT_QUERY_LENGTHS, grow_cache: int = 0):
        if batch < 1 or grow_cache < 0:
            raise ValueError(f"batch must be >= 1 and grow_cache >= 0, got batch={batch}, grow_cache={grow_cache}")
        self.model, self.batch, self.grow_cache = model, batch, grow_cache
        device, dtype = model.device, model.dtype
        self.P = P = prompt.length
        rope, delta = model.rope_index(prompt, processor.image_token_id)  # (3, P), int
        self._prompt = (
            prompt.input_ids[None].expand(batch, P).to(device),  # (B, P)
            rope[:, None].expand(3, batch, P).to(device),  # (3, B, P)
            to_attention_bias(block_causal_rows(0, P, P, model.block_length, device=device), dtype).expand(batch, 1, P, P),
        )
        self._pixels = self._grid = None
        if prompt.pixel_values is not None:
            self._pixels = torch.cat([prompt.pixel_values] * batch).to(device, dtype)
            self._grid = torch.cat([prompt.image_grid_thw] * batch).to(device)
        self.lengths = sorted({int(t) for t in query_lengths})
        self._caches = [(self._prefill()[0], self._queries(P, processor.mask_token_id, delta))]
        if grow_cache:
            grown, _ = self._prefill()
            E = grow_cache
            model(torch.full((batch, E), processor.mask_token_id, dtype=torch.long, device=device),  # (B, E)
                  position_ids=text_positions(P, E, delta, device=device)[:, None].expand(3, batch, E),  # (3, B, E)
                  attention_bias=torch.zeros(batch, 1, E, P + E, dtype=dtype, device=device), cache=grown,
                  logits_at=1)  # the generated tokens' values do not change what a forward costs
            self._caches.append((grown, self._queries(P + E, processor.mask_token_id, delta)))
        self._times: list[dict[int, list[float]]] = [{T: [] for T in self.lengths} for _ in self._caches]
        self._prefill_times: list[float] = []
        self.rounds = 0
        self.round(timed=False)

    def _queries(self, cached: int, mask_id: int, delta: int) -> dict[int, tuple[torch.Tensor, ...]]:
        device, B = self.model.device, self.batch
        return {T: (torch.full((B, T), mask_id, dtype=torch.long, device=device),  # (B, T)
                    text_positions(cached, T, delta, device=device)[:, None].expand(3, B, T),  # (3, B, T)
                    torch.zeros(B, 1, T, cached + T, dtype=self.model.dtype, device=device))  # (B, 1, T, cached+T)
                for T in self.lengths}

    def _prefill(self) -> tuple[Any, float]:
        ids, positions, bias = self._prompt
        cache = self.model.new_cache()
        sync_device(self.model.device)
        t0 = time.perf_counter()
        self.model(ids, position_ids=positions, attention_bias=bias, cache=cache, pixel_values=self._pixels,
                   image_grid_thw=self._grid, logits_at=1)
        sync_device(self.model.device)
        return cache, time.perf_counter() - t0

    @torch.inference_mode()
    def round(self, *, timed: bool = True) -> None:
        """One burst per T and cache, then one prefill (last: the forwards after a prefill, which runs the vision
        tower over large activations, start slower; in a run the prefill comes once, before all of them)."""
        device, b = self.model.device, self.model.block_length
        for T in self.lengths:
            for (kv, shaped), times in zip(self._caches, self._times):
                q_ids, q_pos, q_bias = shaped[T]
                for j in range(PROBE_BURST):
                    sync_device(device)
                    t0 = time.perf_counter()
                    self.model(q_ids, position_ids=q_pos, attention_bias=q_bias, cache=kv, keep_kv=0,
                               logits_at=min(T, b))
                    sync_device(device)
                    if timed and j >= PROBE_SKIP:
                        times[T].append(time.perf_counter() - t0)
        seconds = self._prefill()[1]
        if timed:
            self._prefill_times.append(seconds)
            self.rounds += 1

    def result(self) -> CostProbe:
        """The medians (and extremes) of the timed rounds so far, and the line fitted to the medians.

        Raises:
            ValueError: before any timed round.
        """
        if not self.rounds:
            raise ValueError("the probe has no timed round yet")
        points, *grown = [[CostPoint(T, float(np.median(v)), float(min(v)), float(max(v))) for T, v in t.items()]
                          for t in self._times]
        fit = fit_cost_model([p.query_tokens for p in points], [p.median for p in points])
        return CostProbe(batch=self.batch, cache_length=self.P, points=points,
                         prefill_seconds=float(np.median(self._prefill_times)), model=fit,
                         grown_cache_length=self.P + self.grow_cache if self.grow_cache else None,
                         grown_points=grown[0] if grown else [], rounds=self.rounds)


class ForwardCost(Protocol):
    """Anything that gives the seconds of one forward with T query tokens: a :class:`CostProbe` (its measured
    medians, what predictions use) or a :class:`CostModel` (the fitted line, a reported figure)."""

    def seconds(self, query_tokens: int, cache_growth: float | None = None) -> float: ...


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


def forward_cache_growth(arm: str, *, model_calls: float, forward_passes: float,
                         block_length: int) -> dict[int, float]:
    """Query length T -> the mean number of generated tokens the cache held before the forwards of
    :func:`forward_schedule` with T queries (beyond the prompt).

    * ``ar``: m = model_calls - 1 forwards after the prefill, the j-th reading j - 1 generated tokens;
    * ``echo`` / ``vanilla``: the first block reads none; the k-th fused forward (k = 1 .. F - 1) reads
      the (k - 1) blocks written before it;
    * ``teacher``: every forward of block k reads k blocks; the blocks are model_calls - 1 - forward_passes
      cache writes (+ the last one), with about as many forwards each.
    """
    spec = sampler_spec(arm)
    b = block_length
    first, later = spec.query_tokens(b)
    if spec.kind == "ar":
        return {later: max(model_calls - 2, 0) / 2}
    if spec.one_step:
        out = {first: 0.0}
        if forward_passes > 1:
            out[later] = b * (forward_passes - 2) / 2
        return out
    blocks = max(model_calls - 1 - forward_passes, 0) + 1
    return {later: b * (blocks - 1) / 2}


def predicted_seconds(arm: str, *, model_calls: float, forward_passes: float, block_length: int,
                      cost: ForwardCost, prefill_seconds: float, cache_growth: bool = True) -> float:
    """Seconds a run should take if only the forwards cost time: the measured prefill plus, for each forward
    of :func:`forward_schedule`, ``cost.seconds(T)`` at its query length T and (``cache_growth``, with a probe
    that timed a grown cache) the mean cache length of those forwards (:func:`forward_cache_growth`).

    Why: the gap between this and the measured time is the sampler's own overhead (Python, masks,
    sampling, cache bookkeeping) — the part a faster sampler can remove. With a :class:`CostProbe` as
    ``cost`` the prediction uses the measured medians at exactly those lengths (the prediction); with a
    :class:`CostModel` the fitted line (a reported figure: the line overstates t(1)). A forward's cost is
    linear in the cache length it reads (attention), so the mean length gives the sum exactly.
    """
    schedule = forward_schedule(arm, model_calls=model_calls, forward_passes=forward_passes,
                                block_length=block_length)
    growth = (forward_cache_growth(arm, model_calls=model_calls, forward_passes=forward_passes,
                                   block_length=block_length) if cache_growth else {})
    return prefill_seconds + sum(n * cost.seconds(T, growth.get(T)) for T, n in schedule.items())
