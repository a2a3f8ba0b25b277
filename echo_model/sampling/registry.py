"""The one registry of samplers: name -> kind, checkpoint role, steps, fused cache, forward schedule.

Every list of sampler names (the CLIs' ``--sampler`` / ``--arms`` choices, the app's sampler menu),
:func:`build_sampler`, the benchmark's cost prediction, the sensitivity scorer and the explainer read
this table instead of branching on names. Adding a sampler is one :class:`SamplerSpec` here.

Forward schedules (method.md §2, §7; ``b`` = block length):

* ``ar`` (Stage I): one forward per token with a KV cache, 1 query token each;
* ``teacher`` (Stage II, RAD): up to b denoising forwards of b query tokens per block
  (``low_confidence_dynamic``), then one cache-write forward of the finished block;
* ``echo`` (Stage III, DCD) and ``vanilla`` (the teacher's weights without distillation): one forward
  per block with the fused block KV cache, ``[previous block | current block]`` = 2b query tokens
  (the first block: b query tokens, read-only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # this module imports no torch, so command lines can list the samplers cheaply
    from ..modeling import EchoModel
    from ..processing import EchoProcessor
    from .base import Sampler, SamplerConfig

__all__ = ["SAMPLERS", "SAMPLER_ROLES", "SAMPLER_SPECS", "SamplerSpec", "build_sampler", "check_fallback", "parse_sampler_names",
           "sampler_spec"]

Kind = Literal["ar", "block"]


@dataclass(frozen=True)
class SamplerSpec:
    """What one sampler name means.

    Attributes:
        name: the name users type (``--sampler``).
        kind: ``ar`` (token by token) or ``block`` (block diffusion).
        role: the embedded checkpoint role it runs on by default (``ar``, ``teacher``, ``student``).
        steps: denoising steps per block (block samplers; None = the block length, as the paper's teacher).
        fused: the fused block KV cache (one forward per block; block samplers with one step).
        label: a short human name that fits the app's sampler menu.
        schedule: the forward schedule in words (README, docs).
    """

    name: str
    kind: Kind
    role: str
    steps: int | None
    fused: bool
    label: str
    schedule: str

    @property
    def one_step(self) -> bool:
        """One denoising forward per block (``echo``, ``vanilla``)."""
        return self.kind == "block" and self.steps == 1

    @property
    def multi_step(self) -> bool:
        """Several denoising steps per block (``teacher``): each token's commit step matters for its state."""
        return self.kind == "block" and self.steps != 1

    @property
    def scoring(self) -> str:
        """How a reference report is scored under this sampler's model: ``causal`` or ``masked-diffusion``."""
        return "causal" if self.kind == "ar" else "masked-diffusion"

    def configure(self, config: SamplerConfig, block_length: int) -> SamplerConfig:
        """``config`` with the steps and cache mode this sampler always uses."""
        if self.kind == "ar":
            return config
        steps = self.steps if self.steps is not None else config.steps
        if steps is None:  # the paper's teacher: as many steps as the block has tokens
            steps = block_length
        return dataclasses.replace(config, steps=steps, fused=self.fused)

    def query_tokens(self, block_length: int) -> tuple[int, int]:
        """Query tokens of (the first, every later) denoising forward: the cost model's inputs."""
        if self.kind == "ar":
            return 1, 1
        if self.fused:
            return block_length, 2 * block_length
        return block_length, block_length


_TABLE: tuple[tuple[str, Kind, str, int | None, bool, str, str], ...] = (
    # name, kind, role, steps, fused, label, schedule
    ("echo", "block", "student", 1, True, "ECHO (one step per block)",
     "1 forward per block (fused block KV cache)"),
    ("teacher", "block", "teacher", None, False, "Teacher (multi-step)",
     "≤ b denoising forwards per block + 1 cache write"),
    ("vanilla", "block", "teacher", 1, True, "Vanilla (one step, teacher)",
     "1 forward per block (the echo sampler on the teacher's weights)"),
    ("ar", "ar", "ar", None, False, "AR (token by token)", "b forwards per block (one per token)"),
)
SAMPLER_SPECS: dict[str, SamplerSpec] = {row[0]: SamplerSpec(*row) for row in _TABLE}

#: Every sampler name, in the order menus list them.
SAMPLERS: tuple[str, ...] = tuple(SAMPLER_SPECS)
#: Which embedded checkpoint role each sampler runs on by default.
SAMPLER_ROLES: dict[str, str] = {name: spec.role for name, spec in SAMPLER_SPECS.items()}


def sampler_spec(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` called ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        return SAMPLER_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; available: {list(SAMPLERS)}") from None


def build_sampler(
    name: str, model: EchoModel, processor: EchoProcessor, config: SamplerConfig | None = None
) -> Sampler:
    """The sampler called ``name``, with the steps and cache mode its :class:`SamplerSpec` fixes."""
    from .ar import ARSampler
    from .base import SamplerConfig
    from .block import BlockDiffusionSampler

    spec = sampler_spec(name)
    config = spec.configure(config if config is not None else SamplerConfig(), model.block_length)
    if spec.kind == "ar":
        return ARSampler(model, processor, config, name=name)
    return BlockDiffusionSampler(model, processor, config, name=name)


def parse_sampler_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of samplers as ``--fallback`` and ``ECHO_FALLBACK`` take it; ``none`` is the empty
    list. The names are not checked here (:func:`check_fallback` does).

    >>> parse_sampler_names("teacher, ar"), parse_sampler_names("none")
    (('teacher', 'ar'), ())
    """
    if text.strip().lower() == "none":
        return ()
    return tuple(n.strip() for n in text.split(",") if n.strip())


def check_fallback(sampler: str, fallback: Sequence[str]) -> tuple[str, ...]:
    """The fallback samplers of a draft written with ``sampler``, checked: known names, each once, and not
    ``sampler`` itself (its greedy draft would come out the same).

    >>> check_fallback("echo", ["teacher", "ar"])
    ('teacher', 'ar')
    """
    names = tuple(fallback)
    for name in names:
        if name not in SAMPLERS:
            raise ValueError(f"unknown fallback sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if sampler in names:
        raise ValueError(f"fallback {list(names)} names the draft's own sampler {sampler!r}: it would write "
                         "the same draft again")
    if len(set(names)) != len(names):
        raise ValueError(f"fallback {list(names)} names a sampler twice")
    return names
