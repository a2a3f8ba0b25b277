"""Shared pieces of every sampler: configuration, outputs, token sampling, timing and counting."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..modeling import EchoModel
    from ..processing import EchoProcessor, StudyPrompt

T = TypeVar("T")


@dataclass(frozen=True)
class SamplerConfig:
    """Decoding settings shared by all samplers (defaults = the official evaluation settings, method.md §2).

    Attributes:
        max_new_tokens: generation budget (official ``gen_length`` 512).
        fixed_length: ignore ``<eos>`` and always produce ``max_new_tokens`` (benchmarks).
        temperature: 0 = greedy (what the official batch evaluation and speed test use).
        top_k: keep the k most likely tokens before sampling (0 = off).
        top_p: nucleus sampling mass (1 = off).
        threshold: tau of ``low_confidence_dynamic``: commit every masked token whose confidence exceeds it.
        steps: denoising steps per block for block samplers (None = block length; 1 = one-step ECHO).
        fused: use the fused block KV cache when ``steps == 1`` (one forward per block).
        seed: seed of the sampling generator (only matters when ``temperature > 0``).
    """

    max_new_tokens: int = 512
    fixed_length: bool = False
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    threshold: float = 0.85
    steps: int | None = None
    fused: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class BlockEvent:
    """One committed block of one sample, yielded by ``stream`` the moment it is committed.

    Attributes:
        sample: index of the study in the batch.
        block: 0-based index of the block among this sample's generated blocks.
        token_ids: the block's newly committed generated tokens (the first block may hold fewer than b).
        confidences: the probability each of those tokens had when it was committed.
        text: the whole report decoded so far; decoded from ``decode_text`` when first read, so a caller that
            never reads it (``generate``, the benchmark) does not pay a decode of the growing report per block.
        seconds: time since generation started.
        done: True if this is the sample's last block.
        steps: the 1-based denoising step at which each token was committed (block samplers; None for AR,
            where each token is its own forward). Explanations re-create each token's decode state from it.
        result: on a sample's last event (``done``), its finished :class:`GenerationResult` (what the
            generator returns for it at the end of the batch); the per-row hook that lets a caller hand one
            study's draft on while other rows of the batch are still decoding. ``None`` before.
    """

    sample: int
    block: int
    token_ids: list[int]
    confidences: list[float]
    seconds: float
    done: bool = False
    steps: list[int] | None = None
    result: GenerationResult | None = None
    decode_text: Callable[[], str] = field(default=str, repr=False, compare=False)

    @functools.cached_property
    def text(self) -> str:
        return self.decode_text()


@dataclass
class GenerationResult:
    """What a sampler produced for one study, and what it cost.

    Counting follows the paper's TPF: ``forward_passes`` are the denoising forwards (prefill and KV-write
    forwards excluded; for AR every forward that produced a token), ``model_calls`` every forward including
    the prefill. ``block_tokens[k]`` is how many generated tokens block k committed.
    """

    sampler: str
    token_ids: list[int]
    text: str
    blocks: list[list[int]] = field(default_factory=list)
    block_confidences: list[list[float]] = field(default_factory=list)
    block_steps: list[list[int]] = field(default_factory=list)
    forward_passes: int = 0
    model_calls: int = 0
    seconds: float = 0.0
    first_block_seconds: float = 0.0
    stopped_by_eos: bool = False

    @property
    def block_tokens(self) -> list[int]:
        return [len(b) for b in self.blocks]

    @property
    def tokens(self) -> int:
        """Generated tokens kept in the report (up to and including ``<eos>``)."""
        return len(self.token_ids)

    @property
    def committed_tokens(self) -> int:
        """Every token committed by a denoising forward (the last block may run past ``<eos>``)."""
        return sum(self.block_tokens)

    @property
    def tokens_per_forward(self) -> float:
        return self.committed_tokens / self.forward_passes if self.forward_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def figures(self) -> RunFigures:
        """What this run cost, as the one record every serialiser writes."""
        return RunFigures(
            sampler=self.sampler,
            tokens=self.tokens,
            forward_passes=self.forward_passes,
            model_calls=self.model_calls,
            block_tokens=tuple(self.block_tokens),
            tokens_per_forward=self.tokens_per_forward,
            seconds=self.seconds,
            first_block_seconds=self.first_block_seconds,
            tokens_per_second=self.tokens_per_second,
        )

    def stats(self) -> dict[str, float | int | list[int] | str]:
        return {"sampler": self.sampler, **self.figures.to_json()}


@dataclass(frozen=True)
class RunFigures:
    """The figures of one run: the one shape in which ``echo-report --json``, the app's stored drafts, the
    race, ``echo-eval`` predictions and ``echo-bench`` samples record what a report cost.

    Counting follows the paper's TPF (see :class:`GenerationResult`). :meth:`to_json` rounds for storage
    (4 decimals; tokens per second 2); ``rounded=False`` keeps the sampler's exact numbers (the race shows
    them as the sampler reported them).
    """

    sampler: str
    tokens: int
    forward_passes: int
    model_calls: int
    block_tokens: tuple[int, ...]
    tokens_per_forward: float
    seconds: float
    first_block_seconds: float
    tokens_per_second: float

    def to_json(self, *, rounded: bool = True) -> dict[str, float | int | list[int]]:
        """The figures under their JSON keys (the sampler's name is the caller's to add)."""
        r4 = (lambda x: round(x, 4)) if rounded else (lambda x: x)
        return {
            "tokens": self.tokens,
            "forward_passes": self.forward_passes,
            "model_calls": self.model_calls,
            "block_tokens": list(self.block_tokens),
            "tokens_per_forward": r4(self.tokens_per_forward),
            "seconds": r4(self.seconds),
            "first_block_seconds": r4(self.first_block_seconds),
            "tokens_per_second": round(self.tokens_per_second, 2) if rounded else self.tokens_per_second,
        }


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps: b split as evenly as possible, larger shares first
    (official ``get_num_transfer_tokens``; b=8, steps=8 -> [1]*8; steps=1 -> [8])."""
    if steps < 1 or steps > block_length:
        raise ValueError(f"steps must be in [1, {block_length}] for block length {block_length}, got {steps}")
    base, extra = divmod(block_length, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def sample_tokens(
    logits: torch.Tensor, config: SamplerConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick a token per position and its confidence (official ``sample_with_temperature_topk_topp``).

    Args:
        logits: ``(..., V)``.
    Returns:
        tokens ``(...)`` long and confidences ``(...)`` float: the probability of the picked token under the
        (temperature-scaled, filtered) distribution; greedy when ``temperature == 0``.
    """
    logits = logits.float()
    if config.temperature == 0:
        probs = F.softmax(logits, dim=-1)  # (..., V)
        conf, tokens = probs.max(dim=-1)  # (...), (...)
        return tokens, conf
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]) / config.temperature  # (N, V)
    if config.top_k > 0:
        kth = torch.topk(flat, min(config.top_k, flat.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
        flat = flat.masked_fill(flat < kth, -math.inf)
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(flat, descending=True, dim=-1)  # (N, V)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(-1)  # (N, V)
        drop = cum > config.top_p
        drop[:, 1:] = drop[:, :-1].clone()
        drop[:, 0] = False
        flat = flat.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -math.inf)
    probs = F.softmax(flat, dim=-1)  # (N, V)
    tokens = torch.multinomial(probs, 1, generator=generator)  # (N, 1)
    conf = probs.gather(-1, tokens)  # (N, 1)
    return tokens.view(shape), conf.view(shape)


def to_host(*tensors: torch.Tensor, one_copy: bool | None = None) -> list[Any]:
    """Tensors of one shape as nested Python lists (integer tensors as ints), with at most one device sync.

    On an accelerator they are stacked as float64 (exact for token ids below 2**53, float32 confidences and
    step numbers) and read in one device-to-host copy: the one sync a sampler's step needs (the ``<eos>``
    check). On a CPU there is nothing to wait for, and each is read as it is: the conversions and the stack
    are ops of their own, and right after a forward each costs tens of microseconds. ``one_copy`` forces
    either way (None: by the device).
    """
    if not tensors:
        raise ValueError("no tensors given")
    if not (one_copy if one_copy is not None else tensors[0].device.type != "cpu"):
        return [t.tolist() for t in tensors]
    rows = torch.stack([t.double() for t in tensors]).tolist()
    return [r if t.is_floating_point() else _as_ints(r) for t, r in zip(tensors, rows)]


def _as_ints(values: Any) -> Any:
    return [_as_ints(v) for v in values] if isinstance(values, list) else int(values)


def make_generator(config: SamplerConfig, device: torch.device) -> torch.Generator | None:
    if config.temperature == 0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed if config.seed is not None else 0)
    return gen


class Clock:
    """Wall-clock seconds since construction, synchronising CUDA so GPU timings are real."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._sync()
        self.start = time.perf_counter()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self) -> float:
        self._sync()
        return time.perf_counter() - self.start


def drain(stream: Generator[Any, None, T]) -> T:
    """Run a streaming generator to its end and return its return value."""
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value


class Sampler:
    """What every sampler shares: construction from (model, processor, config) and ``generate`` = the
    ``stream`` run to its end. Subclasses implement ``stream``."""

    def __init__(self, model: EchoModel, processor: EchoProcessor, config: SamplerConfig = SamplerConfig(), *, name: str):
        self.model = model
        self.processor = processor
        self.config = config
        self.name = name
        self.block_length = model.block_length

    def stream(self, prompts: StudyPrompt | Sequence[StudyPrompt]) -> Generator[BlockEvent, None, list[GenerationResult]]:
        """Decode a batch, yielding each committed block; the generator's return value is the results.

        Implementations run under ``torch.inference_mode`` rather than ``no_grad``: it also skips the version
        counters and view tracking of every op, which the embedded model's hundreds of small ops per forward
        feel (about a fifth of a 64-token run on one CPU thread). Their outputs are Python lists; a tensor a
        callback receives (``CommitStep``) is an inference tensor: read it or copy it into a tensor of
        its own, never save it for a backward pass.
        """
        raise NotImplementedError

    def _begin(self, prompts: StudyPrompt | Sequence[StudyPrompt]) -> tuple[list[StudyPrompt], Clock, torch.Generator | None]:
        """The batch as a list, the clock started now and the sampling generator (every ``stream`` starts so)."""
        from ..processing import StudyPrompt

        prompts = [prompts] if isinstance(prompts, StudyPrompt) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        device = self.model.device
        return prompts, Clock(device), make_generator(self.config, device)

    def generate(self, prompts: StudyPrompt | Sequence[StudyPrompt]) -> list[GenerationResult]:
        """Decode a batch of studies; one :class:`GenerationResult` per study."""
        return drain(self.stream(prompts))
