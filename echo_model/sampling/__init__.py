"""Samplers: ``ar`` (Stage I), ``teacher`` (multi-step block diffusion), ``echo`` (one step per block with
the fused cache) and ``vanilla`` (the ``echo`` sampler on the teacher's weights)."""

from __future__ import annotations

import dataclasses

from ..modeling import EchoModel
from ..processing import EchoProcessor
from .ar import ARSampler
from .base import BlockEvent, GenerationResult, Sampler, SamplerConfig, drain, num_transfer_tokens, sample_tokens
from .block import BlockDiffusionSampler, CommitStep
from .commit import commit_mask

SAMPLERS: tuple[str, ...] = ("ar", "teacher", "echo", "vanilla")
# Which embedded checkpoint role each sampler runs on by default.
SAMPLER_ROLES: dict[str, str] = {"ar": "ar", "teacher": "teacher", "vanilla": "teacher", "echo": "student"}


def build_sampler(name: str, model: EchoModel, processor: EchoProcessor, config: SamplerConfig = SamplerConfig()) -> Sampler:
    """The sampler called ``name``; ``config.steps`` / ``fused`` are set by the name for block samplers."""
    if name == "ar":
        return ARSampler(model, processor, config, name=name)
    if name == "teacher":
        steps = config.steps if config.steps is not None else model.block_length
        return BlockDiffusionSampler(model, processor, dataclasses.replace(config, steps=steps, fused=False), name=name)
    if name in ("echo", "vanilla"):
        return BlockDiffusionSampler(model, processor, dataclasses.replace(config, steps=1, fused=True), name=name)
    raise ValueError(f"unknown sampler {name!r}; available: {list(SAMPLERS)}")


__all__ = [
    "ARSampler", "BlockDiffusionSampler", "BlockEvent", "CommitStep", "GenerationResult", "SamplerConfig", "SAMPLERS",
    "SAMPLER_ROLES", "Sampler", "build_sampler", "commit_mask", "drain", "num_transfer_tokens", "sample_tokens",
]
