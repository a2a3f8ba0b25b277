"""Speed benchmark of the four samplers and the per-forward cost model (issue #6, items 1 and 2).

Why this module exists: the paper's headline "8x" is a *tokens-per-forward* figure (TPF 8.00 for b = 8);
wall-clock speed is lower because one ECHO forward carries 2b query tokens (the fused cache:
``[previous block | current block]``) while an AR forward carries one. The honest comparison therefore
needs (1) a measurement of every sampler on the same images, checkpoint family, threads, dtype and
quantisation, with the arms interleaved so that machine noise hits them alike, and (2) a model of what a
forward costs as a function of its query length, ``t(T) ~ a + c*T`` with a realistic KV cache, which bounds
the wall-clock speedup ECHO can reach over AR on this machine:

    cap_b = b * t(1) / t(2b) = b (a + c) / (a + 2 b c)

(AR: one forward of 1 query token per token; ECHO: one forward of 2b query tokens per b tokens). A
measured speedup well below the cap means time goes somewhere other than the forwards (Python per block,
mask building, cache copies, sampling), which ``echo-bench --profile`` helps locate.

Everything here is importable and testable; :mod:`echo_eval.bench_cli` is the command line. Nothing heavy
happens at import time.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from echo_model.checkpoint import EchoCheckpoint
from echo_model.device import QUANTIZATIONS, auto_threads, device_name, load_average, quantization_of, quantize_checkpoint
from echo_model.masks import block_causal_rows, to_attention_bias
from echo_model.modeling import EchoModel, text_positions
from echo_model.processing import EchoProcessor, StudyPrompt
from echo_model.sampling import SAMPLERS, GenerationResult, RunFigures, SamplerConfig, build_sampler, sampler_spec

#: Arms in the order they run inside every timed round (interleaved: ar, teacher, vanilla, echo, ar, ...).
ARMS: tuple[str, ...] = ("ar", "teacher", "vanilla", "echo")
if set(ARMS) != set(SAMPLERS):  # every registered sampler is an arm
    raise ImportError(f"bench arms {ARMS} do not match the registered samplers {SAMPLERS}")
MODES: tuple[str, ...] = ("fixed", "natural")
#: Query lengths timed for the cost model: 1 (AR), b and 2b (ECHO's first and fused forwards) for b <= 16.
DEFAULT_QUERY_LENGTHS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
#: The issue's target: measured AR -> ECHO speedup >= 90 % of cap_b.
TARGET_FRACTION_OF_CAP = 0.9


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Defaults keep a run under a minute with the embedded checkpoints on 2 CPU cores.

    Attributes:
        model: one checkpoint (folder / hub id) for every block arm; None = the embedded family, each arm on
            its role's checkpoint (ar -> AR, teacher and vanilla -> teacher, echo -> student).
        ar_model: checkpoint of the AR arm; None = ``model`` (the same backbone decoded token by token, which
            costs exactly what the AR model costs) or, without ``model``, the embedded AR checkpoint.
        arms: which samplers to run, a subset of :data:`ARMS`.
        batches: batch sizes; each is measured separately.
        runs: timed rounds per (mode, batch); each round runs every arm once.
        warmup: untimed rounds before the timed ones (first calls allocate and pick kernels).
        max_new_tokens: generation budget; in fixed mode every arm produces exactly this many tokens.
        modes: ``fixed`` (``<eos>`` ignored) and/or ``natural`` (stops at ``<eos>``).
        query_lengths: T values timed for the cost model.
        probe_repeats: timed forwards per T (the median is fitted).
        threads: ``torch.set_num_threads`` for all arms (None = leave torch's setting).
        quantize: ``none`` or ``int8`` (dynamic int8 on every ``nn.Linear``, all arms alike; CPU only).
        device: ``cpu``, ``cuda``...; None = CUDA when available.
    """

    model: str | None = None
    ar_model: str | None = None
    arms: tuple[str, ...] = ARMS
    batches: tuple[int, ...] = (1, 4)
    runs: int = 5
    warmup: int = 1
    max_new_tokens: int = 64
    modes: tuple[str, ...] = MODES
    query_lengths: tuple[int, ...] = DEFAULT_QUERY_LENGTHS
    probe_repeats: int = 7
    threads: int | None = None
    quantize: str = "none"
    device: str | None = None

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if not self.arms or bad or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names from {list(ARMS)}, got {list(self.arms)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive, got {list(self.batches)}")
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}, got {list(self.modes)}")
        if len(set(self.query_lengths)) < 2 or any(t < 1 for t in self.query_lengths):
            raise ValueError(f"query_lengths needs >= 2 distinct positive values, got {list(self.query_lengths)}")
        if self.probe_repeats < 1:
            raise ValueError(f"probe_repeats must be >= 1, got {self.probe_repeats}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {self.quantize!r}")


FULL_OVERRIDES: dict[str, Any] = {"max_new_tokens": 256, "runs": 10, "batches": (1, 4), "probe_repeats": 15}
"""Settings of ``--full`` (the README numbers): 256 tokens, 10 timed rounds, batch 1 and 4."""


@dataclass(frozen=True)
class ArmSettings:
    """The execution settings an arm ran under. They must be identical across arms, or the comparison
    measures the settings rather than the samplers."""

    threads: int
    dtype: str
    quantization: str
    device: str


def model_settings(model: EchoModel) -> ArmSettings:
    """Read the settings off the model itself (not off the config), so a mismatch cannot hide."""
    return ArmSettings(
        threads=torch.get_num_threads(),
        dtype=str(model.dtype).removeprefix("torch."),
        quantization=quantization_of(model.model),
        device=str(model.device),
    )


def check_uniform_settings(settings: Mapping[str, ArmSettings | Sequence[ArmSettings]]) -> ArmSettings:
    """The one setting shared by all arms; ValueError naming the differing fields otherwise.

    Args:
        settings: arm name -> its settings, or every settings record the arm saw (one per run).
    """
    flat: list[tuple[str, ArmSettings]] = []
    for arm, value in settings.items():
        for s in [value] if isinstance(value, ArmSettings) else list(value):
            flat.append((arm, s))
    if not flat:
        raise ValueError("no arm settings to compare")
    first = flat[0][1]
    for name in ("threads", "dtype", "quantization", "device"):
        seen: dict[str, set[Any]] = {}
        for arm, s in flat:
            seen.setdefault(arm, set()).add(getattr(s, name))
        values = set().union(*seen.values())
        if len(values) > 1:
            detail = ", ".join(f"{arm}={sorted(map(str, v))}" for arm, v in seen.items())
            raise ValueError(f"arms ran with different {name}: {detail}; every arm must use the same {name}")
    return first


# ---------------------------------------------------------------------------------------------- images
def synthetic_radiograph(seed: int = 0, size: tuple[int, int] = (512, 512)) -> Image.Image:
    """A seeded grey image laid out like a frontal chest radiograph.

    Why: a speed benchmark needs inputs of a realistic size (hence prompt length) without shipping patient
    images. Bright mediastinum and diaphragm, two dark lung fields, a few rib arcs and film grain.

    Args:
        seed: noise and small geometric jitter.
        size: ``(height, width)`` in pixels.
    """
    h, w = size
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16x16, got {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = yy / h, xx / w
    img = np.full((h, w), 200.0, dtype=np.float32)  # soft tissue
    for cx in (0.3 + rng.uniform(-0.02, 0.02), 0.7 + rng.uniform(-0.02, 0.02)):  # lung fields
        img -= 120 * np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.45) / 0.28) ** 4))
    img += 60 * np.exp(-(((x - 0.5) / 0.06) ** 2)) * (y > 0.1)  # mediastinum / spine
    img += 40 * (y > 0.78 + 0.05 * np.cos((x - 0.5) * 6))  # diaphragm
    for k in range(7):  # rib arcs
        ry = 0.2 + 0.085 * k
        img += 18 * np.exp(-((y - ry - 0.12 * (x - 0.5) ** 2) / 0.008) ** 2) * (np.abs(x - 0.5) > 0.07)
    img += rng.normal(0, 8, size=(h, w))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Spread:
    """Median with quartiles and extremes of a handful of timed runs."""

    median: float
    q25: float
    q75: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise")
        arr = np.asarray(values, dtype=np.float64)
        q25, q75 = np.percentile(arr, [25, 75])
        return cls(float(np.median(arr)), float(q25), float(q75), float(arr.min()), float(arr.max()))


@dataclass(frozen=True)
class RunSample:
    """One timed call of ``generate`` on one batch; per-report figures are averaged over the batch."""

    seconds: float
    first_block_seconds: float
    tokens: float
    committed_tokens: float
    forward_passes: float
    model_calls: float
    tokens_per_forward: float
    tokens_per_second: float
    wall_seconds: float
    batch_tokens_per_second: float
    decode_tokens_per_second: float
    block_tokens: list[int]

    @classmethod
    def from_results(cls, results: Sequence[GenerationResult], wall_seconds: float) -> RunSample:
        runs = [r.figures for r in results]

        def mean(name: str) -> float:
            return float(statistics.fmean(getattr(f, name) for f in runs))

        def decode_rate(f: RunFigures) -> float:
            # After the first block: AR runs only 1-token forwards, ECHO only fused 2b-token ones, so this rate
            # is the one the cost-model cap bounds (prefill and the prompt-tail block excluded).
            first = f.block_tokens[0] if f.block_tokens else 0
            secs = f.seconds - f.first_block_seconds
            return max(f.tokens - first, 0) / secs if secs > 0 else 0.0

        total = sum(f.tokens for f in runs)
        return cls(
            seconds=mean("seconds"),
            first_block_seconds=mean("first_block_seconds"),
            tokens=mean("tokens"),
            committed_tokens=float(statistics.fmean(sum(f.block_tokens) for f in runs)),
            forward_passes=mean("forward_passes"),
            model_calls=mean("model_calls"),
            tokens_per_forward=mean("tokens_per_forward"),
            tokens_per_second=mean("tokens_per_second"),
            wall_seconds=wall_seconds,
            batch_tokens_per_second=total / wall_seconds if wall_seconds > 0 else 0.0,
            decode_tokens_per_second=float(statistics.fmean(decode_rate(f) for f in runs)),
            block_tokens=list(runs[0].block_tokens),
        )


@dataclass
class ArmResult:
    """All timed runs of one arm in one (mode, batch) cell."""

    arm: str
    mode: str
    batch: int
    checkpoint: str
    runs: list[RunSample] = field(default_factory=list)
    settings: list[ArmSettings] = field(default_factory=list)

    def spread(self, name: str) -> Spread:
        return Spread.of([getattr(r, name) for r in self.runs])

    def summary(self) -> dict[str, Any]:
        """The JSON entry: medians, IQR and min/max of the timings, medians of the counts."""
        if not self.runs:
            raise ValueError(f"arm {self.arm!r} ({self.mode}, batch {self.batch}) has no timed runs")
        out: dict[str, Any] = {"arm": self.arm, "mode": self.mode, "batch": self.batch, "checkpoint": self.checkpoint,
                               "runs": len(self.runs)}
        for name in ("seconds", "first_block_seconds", "tokens_per_second", "batch_tokens_per_second",
                     "decode_tokens_per_second", "wall_seconds"):
            s = self.spread(name)
            out[f"median_{name}"] = round(s.median, 6)
            out[f"{name}_iqr"] = [round(s.q25, 6), round(s.q75, 6)]
            out[f"{name}_min_max"] = [round(s.min, 6), round(s.max, 6)]
        for name in ("tokens", "committed_tokens", "forward_passes", "model_calls", "tokens_per_forward"):
            out[name] = round(self.spread(name).median, 4)
        out["tokens_per_second"] = out["median_tokens_per_second"]
        out["block_tokens"] = self.runs[-1].block_tokens
        s = self.settings[-1] if self.settings else None
        out.update(asdict(s) if s is not None else {})
        return out


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

    def to_json(self, block_lengths: Sequence[int] = (8, 16)) -> dict[str, Any]:
        out: dict[str, Any] = {
            "a": self.model.a, "c": self.model.c, "r2": round(self.model.r2, 5),
            "batch": self.batch, "cache_length": self.cache_length, "prefill_seconds": self.prefill_seconds,
            "points": [asdict(p) for p in self.points],
        }
        for b in block_lengths:
            out[f"cap_b{b}"] = _safe_cap(self.model, b)
        # The same fit on the fastest repeat of each T: contention on a shared machine only adds time, so
        # this one is the more robust when the medians are noisy.
        low = fit_cost_model([p.query_tokens for p in self.points], [p.min for p in self.points])
        out["fit_on_min"] = {"a": low.a, "c": low.c, **{f"cap_b{b}": _safe_cap(low, b) for b in block_lengths}}
        return out


def _safe_cap(model: CostModel, block_length: int) -> float | None:
    """The cap, or None when a noisy fit gives non-positive forward times (reported, not raised)."""
    try:
        return round(model.cap(block_length), 4)
    except ValueError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
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
    the crop the model does after the forward is part of the timed cost, as it is in decoding. The prompt
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
        _sync(device)
        t0 = time.perf_counter()
        model(ids, position_ids=positions, attention_bias=bias, cache=cache, pixel_values=pixels, image_grid_thw=grid)
        _sync(device)
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
    for i in range(repeats + 1):  # round-robin over T, so load drift hits every T alike
        for T in lengths:
            q_ids, q_pos, q_bias = inputs[T]
            _sync(device)
            t0 = time.perf_counter()
            model(q_ids, position_ids=q_pos, attention_bias=q_bias, cache=cache, keep_kv=0)
            _sync(device)
            if i:  # round 0 is the warm-up of each shape
                times[T].append(time.perf_counter() - t0)
    points = [CostPoint(T, float(np.median(v)), float(min(v)), float(max(v))) for T, v in times.items()]
    fit = fit_cost_model([p.query_tokens for p in points], [p.median for p in points])
    return CostProbe(batch=batch, cache_length=P, points=points, prefill_seconds=float(np.median(prefill_times)),
                     model=fit)


def predicted_seconds(arm: str, *, model_calls: float, forward_passes: float, block_length: int,
                      cost: CostModel, prefill_seconds: float) -> float:
    """Seconds a run should take if only the forwards cost time (prefill measured, the rest from the fit).

    Why: the gap between this and the measured time is the sampler's own overhead (Python, masks,
    sampling, cache bookkeeping) — the part a faster sampler can remove.
    """
    spec = sampler_spec(arm)
    first, later = spec.query_tokens(block_length)
    if spec.one_step:  # first block: b queries, read-only; then [prev | cur] = 2b queries
        return prefill_seconds + cost.seconds(first) + max(forward_passes - 1, 0) * cost.seconds(later)
    # ar: the prefill yields token 1, then one 1-token forward per token; teacher: b-query forwards, the
    # denoising steps plus one cache write per finished block
    return prefill_seconds + max(model_calls - 1, 0) * cost.seconds(later)


# ---------------------------------------------------------------------------------------------- measuring
@dataclass
class Arm:
    """A sampler name bound to the checkpoint it runs on."""

    name: str
    checkpoint: EchoCheckpoint

    @property
    def settings(self) -> ArmSettings:
        return model_settings(self.checkpoint.model)


def load_arms(config: BenchConfig) -> dict[str, Arm]:
    """Load each arm's checkpoint once (arms on the same checkpoint share it) and apply the quantisation."""
    from echo_model.loading import load_checkpoint  # heavy-ish; only when actually loading

    loaded: dict[tuple[str | None, str], EchoCheckpoint] = {}
    arms: dict[str, Arm] = {}
    for name in config.arms:
        role = sampler_spec(name).role
        source = config.ar_model if role == "ar" and config.ar_model is not None else config.model
        key = (source, role if source is None else "any")
        if key not in loaded:
            loaded[key] = load_checkpoint(source, role=key[1] if source is None else "student", device=config.device)
            quantize_checkpoint(loaded[key], config.quantize)
        arms[name] = Arm(name, loaded[key])
    return arms


def encode_studies(processor: EchoProcessor, images: Sequence[Image.Image], count: int) -> list[StudyPrompt]:
    """``count`` single-view studies, cycling through ``images`` (batch entry i uses image i mod n)."""
    if not images:
        raise ValueError("no images to encode")
    encoded = [processor.encode([im]) for im in images]
    return [encoded[i % len(encoded)] for i in range(count)]


def _timed_generate(sampler: Any, prompts: list[StudyPrompt], device: torch.device) -> RunSample:
    _sync(device)
    t0 = time.perf_counter()
    results = sampler.generate(prompts)
    _sync(device)
    return RunSample.from_results(results, time.perf_counter() - t0)


def measure_cell(
    arms: Mapping[str, Arm],
    images: Sequence[Image.Image],
    *,
    mode: str,
    batch: int,
    runs: int,
    warmup: int,
    max_new_tokens: int,
    progress: bool = False,
) -> dict[str, ArmResult]:
    """Measure every arm in one (mode, batch) cell, interleaved: round r runs ar, teacher, vanilla, echo.

    Why interleaved: on a shared machine load drifts over seconds; running all of one arm, then all of the
    next, would charge the drift to one arm. Warm-up rounds run first and are not recorded.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    cfg = SamplerConfig(max_new_tokens=max_new_tokens, fixed_length=mode == "fixed")
    samplers = {n: build_sampler(n, a.checkpoint.model, a.checkpoint.processor, cfg) for n, a in arms.items()}
    prompts: dict[str, list[StudyPrompt]] = {}
    by_processor: dict[int, list[StudyPrompt]] = {}
    for n, a in arms.items():
        key = id(a.checkpoint.processor)
        if key not in by_processor:
            by_processor[key] = encode_studies(a.checkpoint.processor, images, batch)
        prompts[n] = by_processor[key]
    out = {n: ArmResult(n, mode, batch, a.checkpoint.source) for n, a in arms.items()}
    for _ in range(warmup):
        for n in arms:
            samplers[n].generate(prompts[n])
    rounds: Any = range(runs)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc=f"{mode:7s} batch {batch}", unit="round", leave=False)
    for _ in rounds:
        for n, a in arms.items():
            out[n].settings.append(a.settings)
            out[n].runs.append(_timed_generate(samplers[n], prompts[n], a.checkpoint.model.device))
    return out


def profile_arm(arm: Arm, images: Sequence[Image.Image], *, max_new_tokens: int, batch: int = 1,
                row_limit: int = 25) -> str:
    """torch.profiler table (ops by total CPU time) of one fixed-length run of ``arm``, after a warm-up.

    Why: when the measured speedup falls short of the cap, this shows whether the time is in the GEMMs
    (the cap is the limit) or in the small ops around them (masks, cache cat/crop, sampling, Python).
    """
    from torch.profiler import ProfilerActivity, profile

    cfg = SamplerConfig(max_new_tokens=max_new_tokens, fixed_length=True)
    sampler = build_sampler(arm.name, arm.checkpoint.model, arm.checkpoint.processor, cfg)
    prompts = encode_studies(arm.checkpoint.processor, images, batch)
    sampler.generate(prompts)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if arm.checkpoint.model.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        results = sampler.generate(prompts)
        wall = time.perf_counter() - t0
    head = (f"== {arm.name}: {results[0].tokens} tokens, {results[0].model_calls} model calls, "
            f"{wall:.3f} s under the profiler ==\n")
    return head + prof.key_averages().table(sort_by="cpu_time_total", row_limit=row_limit, max_name_column_width=48)


# ---------------------------------------------------------------------------------------------- the report
@dataclass
class BenchReport:
    """Everything one benchmark run measured; :meth:`to_json` is the ``--json`` file."""

    config: BenchConfig
    device: str
    settings: ArmSettings
    block_length: int
    prompt_length: int
    images: str
    cells: list[ArmResult]
    cost_probes: list[CostProbe]
    load_average: tuple[float | None, float | None]
    wall_seconds: float = 0.0

    def cell(self, arm: str, mode: str, batch: int) -> ArmResult | None:
        for c in self.cells:
            if (c.arm, c.mode, c.batch) == (arm, mode, batch):
                return c
        return None

    def speedup(self, slow: str, fast: str = "echo", *, mode: str = "fixed", batch: int | None = None,
                metric: str = "tokens_per_second") -> float | None:
        """Median ``metric`` of ``fast`` divided by that of ``slow`` (None when either arm was not run)."""
        batch = batch if batch is not None else self.config.batches[0]
        f, s = self.cell(fast, mode, batch), self.cell(slow, mode, batch)
        if f is None or s is None:
            return None
        den = s.spread(metric).median
        return f.spread(metric).median / den if den > 0 else None

    def probe(self, batch: int) -> CostProbe | None:
        return next((p for p in self.cost_probes if p.batch == batch), None)

    def predicted(self, arm: str, *, batch: int) -> float | None:
        """Cost-model tokens/s of ``arm`` in fixed mode for the forward counts it actually made."""
        cell, probe = self.cell(arm, "fixed", batch), self.probe(batch)
        if cell is None or probe is None:
            return None
        s = cell.summary()
        secs = predicted_seconds(arm, model_calls=s["model_calls"], forward_passes=s["forward_passes"],
                                 block_length=self.block_length, cost=probe.model, prefill_seconds=probe.prefill_seconds)
        return s["tokens"] / secs if secs > 0 else None

    def to_json(self) -> dict[str, Any]:
        head_batch = self.config.batches[0]
        head_mode = "fixed" if "fixed" in self.config.modes else self.config.modes[0]
        b = self.block_length
        speedups: dict[str, dict[str, dict[str, float | None]]] = {}
        for mode in self.config.modes:
            for batch in self.config.batches:
                speedups.setdefault(mode, {})[str(batch)] = {
                    "ar_over_echo": _r(self.speedup("ar", mode=mode, batch=batch)),
                    "teacher_over_echo": _r(self.speedup("teacher", mode=mode, batch=batch)),
                    "ar_over_vanilla": _r(self.speedup("ar", "vanilla", mode=mode, batch=batch)),
                    "decode_ar_over_echo": _r(self.speedup("ar", mode=mode, batch=batch,
                                                           metric="decode_tokens_per_second")),
                }
        probe = self.probe(head_batch)
        measured = self.speedup("ar", mode="fixed", batch=head_batch)
        decode = self.speedup("ar", mode="fixed", batch=head_batch, metric="decode_tokens_per_second")
        cap = _safe_cap(probe.model, b) if probe is not None else None
        pred_ar, pred_echo = self.predicted("ar", batch=head_batch), self.predicted("echo", batch=head_batch)
        out: dict[str, Any] = {
            "device": self.device,
            "threads": self.settings.threads,
            "dtype": self.settings.dtype,
            "quantization": self.settings.quantization,
            "torch_device": self.settings.device,
            "block_length": b,
            "prompt_length": self.prompt_length,
            "images": self.images,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
            "load_average_1m": {"before": self.load_average[0], "after": self.load_average[1]},
            "wall_seconds": round(self.wall_seconds, 2),
            "headline": {"mode": head_mode, "batch": head_batch},
            "arms": {c.arm: c.summary() for c in self.cells if (c.mode, c.batch) == (head_mode, head_batch)},
            "results": [c.summary() for c in self.cells],
            "speedup_ar_over_echo": _r(measured),
            "speedup_teacher_over_echo": _r(self.speedup("teacher", mode="fixed", batch=head_batch)),
            "speedups": speedups,
            "cost_model": probe.to_json((8, 16, b) if b not in (8, 16) else (8, 16)) if probe is not None else None,
            "cost_models": {str(p.batch): p.to_json((8, 16)) for p in self.cost_probes},
            f"cap_b{b}": _r(cap),
            "measured_over_cap": _r(measured / cap) if measured is not None and cap else None,
            "target_fraction_of_cap": TARGET_FRACTION_OF_CAP,
            "meets_target": (measured / cap >= TARGET_FRACTION_OF_CAP) if measured is not None and cap else None,
            "decode_speedup_ar_over_echo": _r(decode),
            "decode_measured_over_cap": _r(decode / cap) if decode is not None and cap else None,
            "predicted_speedup_ar_over_echo": _r(pred_echo / pred_ar) if pred_ar and pred_echo else None,
            "predicted_tokens_per_second": {
                a: _r(self.predicted(a, batch=head_batch)) for a in self.config.arms
            } if probe is not None else None,
        }
        return out


def _fx(x: float | None) -> str:
    """A speedup for printing: ``6.16x``, or ``n/a`` when it could not be computed."""
    return "n/a" if x is None else f"{x:.2f}x"


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def run_benchmark(
    config: BenchConfig = BenchConfig(),
    *,
    images: Sequence[Image.Image] | None = None,
    image_label: str = "synthetic",
    checkpoints: Mapping[str, EchoCheckpoint] | None = None,
    progress: bool = False,
) -> BenchReport:
    """Run the whole benchmark: every (mode, batch) cell, then the cost-model probe per batch size.

    Args:
        config: what to measure.
        images: single-view studies (a batch cycles through them); None = seeded synthetic radiographs.
        image_label: how the images are described in the report.
        checkpoints: arm name -> an already loaded checkpoint (tests, notebooks); None = load per ``config``.
        progress: tqdm bars for the timed rounds.

    Raises:
        ValueError: when the arms do not share threads, dtype, quantisation and device, or the block arms do
            not share one block length.
    """
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, images=images, image_label=image_label, checkpoints=checkpoints, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)  # a library call leaves the process as it found it


def _run(config: BenchConfig, *, images: Sequence[Image.Image] | None, image_label: str,
         checkpoints: Mapping[str, EchoCheckpoint] | None, progress: bool) -> BenchReport:
    start = time.perf_counter()
    if checkpoints is not None:
        missing = [a for a in config.arms if a not in checkpoints]
        if missing:
            raise ValueError(f"no checkpoint given for arms {missing}; got {sorted(checkpoints)}")
        for ck in {id(checkpoints[a]): checkpoints[a] for a in config.arms}.values():
            quantize_checkpoint(ck, config.quantize)
        arms = {a: Arm(a, checkpoints[a]) for a in config.arms}
    else:
        arms = load_arms(config)
    settings = check_uniform_settings({n: a.settings for n, a in arms.items()})
    block_lengths = {a.checkpoint.model.block_length for n, a in arms.items() if n != "ar"}
    if len(block_lengths) > 1:
        raise ValueError(f"block arms use different block lengths {sorted(block_lengths)}; use one family")
    b = block_lengths.pop() if block_lengths else arms["ar"].checkpoint.model.block_length
    if images is None:
        images = [synthetic_radiograph(seed=i) for i in range(max(config.batches))]
    images = list(images)
    gc.collect()
    gc.freeze()  # keep the collector's full passes over the loaded model out of the timings
    before = load_average()
    cells: list[ArmResult] = []
    try:
        for mode in config.modes:
            for batch in config.batches:
                res = measure_cell(arms, images, mode=mode, batch=batch, runs=config.runs, warmup=config.warmup,
                                   max_new_tokens=config.max_new_tokens, progress=progress)
                cells.extend(res[a] for a in config.arms)
    finally:
        gc.unfreeze()
    check_uniform_settings({c.arm: c.settings for c in cells})
    probe_arm = arms["echo"] if "echo" in arms else next(iter(arms.values()))
    probes = [
        probe_forward_costs(probe_arm.checkpoint.model, probe_arm.checkpoint.processor,
                            encode_studies(probe_arm.checkpoint.processor, images, 1)[0], batch=batch,
                            query_lengths=config.query_lengths, repeats=config.probe_repeats)
        for batch in config.batches
    ]
    check_uniform_settings({"probe": probe_arm.settings, "arms": settings})
    prompt_length = encode_studies(probe_arm.checkpoint.processor, images, 1)[0].length
    return BenchReport(
        config=config, device=device_name(probe_arm.checkpoint.model.device), settings=settings, block_length=b,
        prompt_length=prompt_length, images=image_label, cells=cells, cost_probes=probes,
        load_average=(before, load_average()), wall_seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------- output
def format_report(report: dict[str, Any]) -> str:
    """The readable table printed by ``echo-bench`` (from the JSON dict, so a saved file can be re-printed)."""
    lines: list[str] = []
    la = report.get("load_average_1m") or {}
    lines.append(f"device: {report['device']} | torch device {report['torch_device']} | threads {report['threads']} | "
                 f"dtype {report['dtype']} | quantisation {report['quantization']} | b = {report['block_length']} | "
                 f"prompt {report['prompt_length']} tokens ({report['images']} images) | "
                 f"load avg {la.get('before')} -> {la.get('after')}")
    hdr = (f"{'arm':8s} {'s/report':>22s} {'1st block s':>11s} {'tokens':>7s} {'fwd':>6s} {'calls':>6s} "
           f"{'tok/fwd':>7s} {'tok/s (median [IQR])':>26s} {'batch tok/s':>11s} {'decode tok/s':>12s}")
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in report["results"]:
        cells.setdefault((r["mode"], r["batch"]), []).append(r)
    for (mode, batch), rows in cells.items():
        lines.append("")
        lines.append(f"-- {mode} length, batch {batch}, {rows[0]['runs']} timed runs "
                     f"(max_new_tokens {report['settings']['max_new_tokens']}) --")
        lines.append(hdr)
        for r in rows:
            s_iqr, t_iqr = r["seconds_iqr"], r["tokens_per_second_iqr"]
            lines.append(
                f"{r['arm']:8s} {r['median_seconds']:8.3f} [{s_iqr[0]:.3f}-{s_iqr[1]:.3f}] "
                f"{r['median_first_block_seconds']:11.3f} {r['tokens']:7.1f} {r['forward_passes']:6.1f} "
                f"{r['model_calls']:6.1f} {r['tokens_per_forward']:7.2f} "
                f"{r['median_tokens_per_second']:9.1f} [{t_iqr[0]:7.1f}-{t_iqr[1]:7.1f}] "
                f"{r['median_batch_tokens_per_second']:11.1f} {r['median_decode_tokens_per_second']:12.1f}"
            )
        sp = report["speedups"].get(mode, {}).get(str(batch), {})
        names = {"ar_over_echo": "echo vs ar", "teacher_over_echo": "echo vs teacher",
                 "ar_over_vanilla": "vanilla vs ar", "decode_ar_over_echo": "echo vs ar after the first block"}
        lines.append("speedup (median tok/s ratio): " + ", ".join(
            f"{names.get(k, k)} {v:.2f}x" if v is not None else f"{names.get(k, k)} n/a" for k, v in sp.items()))
    cm = report.get("cost_model")
    lines.append("")
    if cm:
        b = report["block_length"]
        pts = ", ".join(f"T={p['query_tokens']}: {p['median'] * 1e3:.2f} ms" for p in cm["points"])
        lines.append(f"cost model (batch {cm['batch']}, cache {cm['cache_length']} tokens): t(T) = "
                     f"{cm['a'] * 1e3:.3f} ms + {cm['c'] * 1e3:.4f} ms * T  (R^2 {cm['r2']:.3f}); prefill "
                     f"{cm['prefill_seconds'] * 1e3:.1f} ms")
        lines.append(f"  measured: {pts}")
        lines.append(f"  cap_b8 = {_fx(cm['cap_b8'])}, cap_b16 = {_fx(cm['cap_b16'])} "
                     f"(b t(1) / t(2b); this checkpoint has b = {b})")
        low = cm.get("fit_on_min")
        if low:
            lines.append(f"  fit on the fastest repeats: a = {low['a'] * 1e3:.3f} ms, c = {low['c'] * 1e3:.4f} ms, "
                         f"cap_b8 = {_fx(low['cap_b8'])}, cap_b16 = {_fx(low['cap_b16'])}")
        for batch, other in report.get("cost_models", {}).items():
            if int(batch) != cm["batch"]:
                lines.append(f"  batch {batch}: a = {other['a'] * 1e3:.3f} ms, c = {other['c'] * 1e3:.4f} ms, "
                             f"cap_b8 = {_fx(other['cap_b8'])}, cap_b16 = {_fx(other['cap_b16'])}")
    m, ratio = report.get("speedup_ar_over_echo"), report.get("measured_over_cap")
    if m is not None:
        b = report["block_length"]
        cap = report.get(f"cap_b{b}")
        lines.append(f"AR -> ECHO speedup (fixed length, batch {report['headline']['batch']}): measured {m:.2f}x"
                     + (f", cap_b{b} {cap:.2f}x, measured/cap = {ratio:.0%} (target >= "
                        f"{report['target_fraction_of_cap']:.0%}: {'met' if report['meets_target'] else 'NOT met'})"
                        if cap else ""))
        dec, dratio = report.get("decode_speedup_ar_over_echo"), report.get("decode_measured_over_cap")
        if dec is not None and dratio is not None:
            lines.append(f"  after the first block (no prefill; AR all 1-token forwards, ECHO all fused 2b-token "
                         f"forwards, what the cap bounds): {dec:.2f}x = {dratio:.0%} of cap_b{b}")
        pred = report.get("predicted_speedup_ar_over_echo")
        if pred is not None:
            lines.append(f"  cost-model prediction for the forwards actually made (prefill + first block + fused "
                         f"blocks): {pred:.2f}x")
    t = report.get("speedup_teacher_over_echo")
    if t is not None:
        lines.append(f"teacher -> ECHO speedup (fixed length): {t:.2f}x")
    if max(la.get("before") or 0, la.get("after") or 0) > (os.cpu_count() or 1) * 0.75:
        lines.append(f"note: the machine was busy (1-min load average {la.get('before')} -> {la.get('after')} on "
                     f"{os.cpu_count()} CPUs); timings are noisy, compare only arms of this same run"
                     + ("; with several torch threads on a shared CPU, --threads 1 is far steadier"
                        if report["threads"] > 1 and report["torch_device"] == "cpu" else ""))
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """PNG: tokens/s per arm with IQR bars (one group per batch, fixed length), and the cost-model line
    against the measured forward times (min-max bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    mode = report["headline"]["mode"]
    rows = [r for r in report["results"] if r["mode"] == mode]
    batches = sorted({r["batch"] for r in rows})
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    width = 0.8 / max(len(batches), 1)
    for j, batch in enumerate(batches):
        xs, ys, lo, hi = [], [], [], []
        for i, arm in enumerate(arms):
            r = next((r for r in rows if r["arm"] == arm and r["batch"] == batch), None)
            if r is None:
                continue
            med, (q25, q75) = r["median_tokens_per_second"], r["tokens_per_second_iqr"]
            xs.append(i + (j - (len(batches) - 1) / 2) * width)
            ys.append(med)
            lo.append(max(med - q25, 0))
            hi.append(max(q75 - med, 0))
        ax1.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=f"batch {batch}")
    ax1.set_xticks(range(len(arms)), arms)
    ax1.set_ylabel("tokens / s per report (median, IQR)")
    ax1.set_title(f"{mode} length, {report['settings']['max_new_tokens']} new tokens")
    ax1.legend()
    cm = report.get("cost_model")
    if cm:
        T = np.array([p["query_tokens"] for p in cm["points"]], dtype=float)
        med = np.array([p["median"] for p in cm["points"]]) * 1e3
        err = [med - np.array([p["min"] for p in cm["points"]]) * 1e3,
               np.array([p["max"] for p in cm["points"]]) * 1e3 - med]
        ax2.errorbar(T, med, yerr=err, fmt="o", capsize=3, label="measured (median, min-max)")
        grid = np.linspace(0, T.max() * 1.05, 100)
        ax2.plot(grid, (cm["a"] + cm["c"] * grid) * 1e3, "-",
                 label=f"fit a={cm['a'] * 1e3:.2f} ms, c={cm['c'] * 1e3:.3f} ms/token")
        b = report["block_length"]
        for x, label in ((1, "AR"), (2 * b, f"ECHO 2b={2 * b}")):
            ax2.axvline(x, color="grey", ls=":", lw=1)
            ax2.annotate(label, (x, 0), xytext=(3, 3), textcoords="offset points", fontsize=8, color="grey")
        m, ratio = report.get("speedup_ar_over_echo"), report.get("measured_over_cap")
        if m is not None and ratio is not None:
            ax2.text(0.98, 0.04, f"measured ECHO/AR {m:.2f}x = {ratio:.0%} of cap_b{b}", transform=ax2.transAxes,
                     ha="right", fontsize=8)
        ax2.set_xlabel("query tokens T per forward")
        ax2.set_ylabel("ms per forward")
        ax2.set_title(f"cost model: cap_b8 {_fx(cm['cap_b8'])}, cap_b16 {_fx(cm['cap_b16'])}")
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=8)
    fig.suptitle(f"{report['device']} | threads {report['threads']} | {report['dtype']} | "
                 f"quantisation {report['quantization']} | b = {report['block_length']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


__all__ = [
    "ARMS",
    "DEFAULT_QUERY_LENGTHS",
    "FULL_OVERRIDES",
    "MODES",
    "QUANTIZATIONS",
    "TARGET_FRACTION_OF_CAP",
    "Arm",
    "ArmResult",
    "ArmSettings",
    "BenchConfig",
    "BenchReport",
    "CostModel",
    "CostPoint",
    "CostProbe",
    "RunSample",
    "Spread",
    "check_uniform_settings",
    "device_name",
    "encode_studies",
    "fit_cost_model",
    "format_report",
    "load_arms",
    "measure_cell",
    "model_settings",
    "plot_report",
    "predicted_seconds",
    "probe_forward_costs",
    "profile_arm",
    "quantization_of",
    "quantize_checkpoint",
    "run_benchmark",
    "speedup_cap",
    "synthetic_radiograph",
]
