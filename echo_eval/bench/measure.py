"""Timing the arms: loading them, encoding the studies, timed rounds and their statistics, profiling."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Self

import numpy as np
import torch
from PIL import Image

from echo_model.checkpoint import EchoCheckpoint
from echo_model.device import quantize_checkpoint
from echo_model.processing import EchoProcessor, StudyPrompt
from echo_model.sampling import GenerationResult, RunFigures, SamplerConfig, build_sampler, sampler_spec

from .config import MODES, ArmSettings, BenchConfig, model_settings
from .cost_model import ForwardProbe, sync_device


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
    forward_seconds: float = 0.0
    replayed_seconds: float = 0.0

    @property
    def over_replayed(self) -> float:
        """The run's wall time over its own forwards replayed back to back (:func:`replay_forwards`); 0 when
        not replayed."""
        return self.wall_seconds / self.replayed_seconds if self.replayed_seconds > 0 else 0.0

    @property
    def outside_forward_seconds(self) -> float:
        """The run's wall time outside the model's forwards (the sampler's own)."""
        return max(self.wall_seconds - self.forward_seconds, 0.0)

    @property
    def outside_forward_share(self) -> float:
        return self.outside_forward_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @classmethod
    def from_results(cls, results: Sequence[GenerationResult], wall_seconds: float,
                     forward_seconds: float = 0.0) -> RunSample:
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
            forward_seconds=forward_seconds,
        )


@dataclass
class ArmResult:
    """All timed runs of one arm in one (mode, batch) cell."""

    arm: str
    mode: str
    batch: int
    checkpoint: str
    runs: list[RunSample]
    settings: list[ArmSettings]

    def spread(self, name: str) -> Spread:
        return Spread.of([getattr(r, name) for r in self.runs])

    def summary(self) -> dict[str, Any]:
        """The JSON entry: medians, IQR and min/max of the timings, medians of the counts."""
        if not self.runs:
            raise ValueError(f"arm {self.arm!r} ({self.mode}, batch {self.batch}) has no timed runs")
        out: dict[str, Any] = {"arm": self.arm, "mode": self.mode, "batch": self.batch, "checkpoint": self.checkpoint,
                               "runs": len(self.runs)}
        for name in ("seconds", "first_block_seconds", "tokens_per_second", "batch_tokens_per_second",
                     "decode_tokens_per_second", "wall_seconds", "forward_seconds", "outside_forward_seconds",
                     "outside_forward_share", "replayed_seconds", "over_replayed"):
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


@dataclass
class RecordedForward:
    """One forward a run made, as the sampler called the Hugging Face module: its keyword arguments (the
    sampler's own tensors, referenced, not copied; the cache left out) and how many keys the run's cache held
    when it began. Enough to make the same forward again (:func:`replay_forwards`): a forward's cost does not
    depend on the token values, only on the shapes, so the canvas the sampler has since filled in does not
    matter."""

    module: torch.nn.Module
    kwargs: dict[str, Any]
    cache_length: int
    cached: bool


class ForwardTimer:
    """Seconds spent inside the models' forwards while it is entered (forward pre- and post-hooks on each model):
    the part of a run the cost model prices; the rest of the run's wall time is the sampler's own (masks,
    sampling, bookkeeping, Python). Measured in the run itself, so it shares the run's moment on a noisy machine,
    unlike the probe. On a GPU each hook synchronises first (host time would only count the launches).

    With ``record``, each forward is also kept as a :class:`RecordedForward` until :meth:`take_calls` (for
    :func:`replay_forwards`). A hook costs a few microseconds per forward (about 0.3 % of a 1-token forward of
    the embedded model); recording adds a list append and the cache length.
    """

    def __init__(self, models: Iterable[torch.nn.Module], *, record: bool = False):
        self.models = list({id(m): m for m in models}.values())
        self.seconds = 0.0
        self.record = record
        self.calls: list[RecordedForward] = []
        self._began = 0.0
        self._handles: list[Any] = []
        self._cuda = any(p.is_cuda for m in self.models for p in m.parameters())

    def _pre(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if self.record:
            cache = kwargs.get("cache")
            self.calls.append(RecordedForward(module, {k: v for k, v in kwargs.items() if k != "cache"},
                                              cache.get_seq_length() if cache is not None else 0, cache is not None))
        if self._cuda:
            torch.cuda.synchronize()
        self._began = time.perf_counter()

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._began

    def take_calls(self) -> list[RecordedForward]:
        """The forwards recorded since the last call (and forget them)."""
        calls, self.calls = self.calls, []
        return calls

    def __enter__(self) -> Self:
        for m in self.models:
            self._handles += [m.register_forward_pre_hook(self._pre, with_kwargs=True),
                              m.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.calls.clear()


@torch.inference_mode()  # as in the samplers
def replay_forwards(calls: Sequence[RecordedForward]) -> float:
    """Seconds the forwards of one run take when made again back to back, with nothing between them: what the
    run would cost if its sampler cost nothing (the prediction ``echo-bench`` holds each arm to).

    Each call gets the run's own arguments and a fresh cache that is cropped after it, as the run's cache was, to
    the length the next call found (``keep_kv``: the fused forward keeps one block, a read-only forward none). So
    every forward has the run's query length, cache length, mask, images and logits columns, and it comes at the
    same place after the prefill: on a CPU the forwards that follow a prefill run slower for a while (about 5.1
    against 4.1 ms for the first of 14 equal 16-query forwards of the embedded model, docs/speed.md §2), which a
    probe timing each query length in steady bursts does not see. The crop is timed with its forward.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=calls[0].module.config) if calls and calls[0].cached else None
    device = next(calls[0].module.parameters()).device if calls else torch.device("cpu")
    total = 0.0
    for i, call in enumerate(calls):
        keep = calls[i + 1].cache_length if i + 1 < len(calls) and calls[i + 1].cached else None
        sync_device(device)
        t0 = time.perf_counter()
        call.module.forward(**call.kwargs, cache=cache if call.cached else None)  # forward(): no timer hooks
        if cache is not None and keep is not None and cache.get_seq_length() > keep:
            cache.crop(keep - cache.get_seq_length())
        sync_device(device)
        total += time.perf_counter() - t0
    return total


def _timed_generate(sampler: Any, prompts: list[StudyPrompt], device: torch.device,
                    timer: ForwardTimer | None = None) -> RunSample:
    sync_device(device)
    inside = timer.seconds if timer is not None else 0.0
    t0 = time.perf_counter()
    results = sampler.generate(prompts)
    sync_device(device)
    wall = time.perf_counter() - t0
    return RunSample.from_results(results, wall, timer.seconds - inside if timer is not None else 0.0)


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
    cycle: bool = False,
    probe: ForwardProbe | None = None,
) -> dict[str, ArmResult]:
    """Measure every arm in one (mode, batch) cell, interleaved: round r runs ar, teacher, vanilla, echo.

    Why interleaved: on a shared machine load drifts over seconds; running all of one arm, then all of the
    next, would charge the drift to one arm. Warm-up rounds run first and are not recorded. With ``cycle``,
    timed round r drafts images ``r*batch ... r*batch+batch-1`` (modulo their number) instead of the first
    ``batch`` images every round; every arm drafts the same studies in a round. With ``probe``, each timed round
    ends with one of its rounds, so the forward costs are timed in the same moments as the runs they predict.

    Every timed run's forwards are replayed (:func:`replay_forwards`, ``RunSample.replayed_seconds``). Forwards
    that follow the same model's forwards run faster than forwards after other work (2-3 % on the embedded
    student over a 64-token run: the weights are still in the caches), so a replay right after its run would
    be favoured. Even rounds therefore replay a run just before the arm's next run, where it follows what the
    run followed (another arm, the probe); odd rounds replay right after the run, which itself followed that
    replay. Each run and its replay start alike.
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
            by_processor[key] = encode_studies(a.checkpoint.processor, images, len(images) if cycle else batch)
        prompts[n] = by_processor[key]

    def round_prompts(n: str, r: int) -> list[StudyPrompt]:
        if not cycle:
            return prompts[n]
        return [prompts[n][(r * batch + i) % len(prompts[n])] for i in range(batch)]

    out = {n: ArmResult(n, mode, batch, a.checkpoint.source, runs=[], settings=[]) for n, a in arms.items()}
    for _ in range(warmup):
        for n in arms:
            samplers[n].generate(round_prompts(n, 0))
    rounds: Any = range(runs)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc=f"{mode:7s} batch {batch}", unit="round", leave=False)
    # The Hugging Face module inside each EchoModel: every forward a sampler makes goes through it.
    deferred: dict[str, tuple[int, list[RecordedForward]]] = {}

    def replay_deferred(n: str) -> None:
        if n in deferred:
            index, calls = deferred.pop(n)
            out[n].runs[index] = replace(out[n].runs[index], replayed_seconds=replay_forwards(calls))

    with ForwardTimer((a.checkpoint.model.model for a in arms.values()), record=True) as timer:
        for r in rounds:
            for n, a in arms.items():
                out[n].settings.append(a.settings)
                replay_deferred(n)
                timer.take_calls()  # drop what came before this run (the probe's forwards, a replay's none)
                run = _timed_generate(samplers[n], round_prompts(n, r), a.checkpoint.model.device, timer)
                calls = timer.take_calls()
                if r % 2:
                    run = replace(run, replayed_seconds=replay_forwards(calls))
                else:
                    deferred[n] = (len(out[n].runs), calls)
                out[n].runs.append(run)
            if probe is not None:
                probe.round()  # between the runs' timing windows: not counted as any run's forwards
        for n in list(deferred):
            replay_deferred(n)
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
