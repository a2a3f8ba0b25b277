"""Samplers: ``ar`` (Stage I), ``teacher`` (multi-step block diffusion), ``echo`` (one step per block with
the fused cache) and ``vanilla`` (the ``echo`` sampler on the teacher's weights).

* :mod:`.registry` - the one table of sampler names (kind, checkpoint role, steps, fused cache, forward
  schedule) and :func:`build_sampler`; it imports no torch, so command lines list samplers cheaply;
* :mod:`.commit` - the commit rule (which masked tokens a denoising step accepts), a pure function;
* :mod:`.base`, :mod:`.ar`, :mod:`.block` - configuration, outputs and the decoding loops.

Names are resolved lazily (PEP 562), so ``from echo_model.sampling import SAMPLERS`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ar import ARSampler
    from .base import BlockEvent, GenerationResult, RunFigures, Sampler, SamplerConfig, drain, num_transfer_tokens, sample_tokens
    from .block import BlockDiffusionSampler, CommitStep
    from .commit import commit_mask
    from .registry import SAMPLER_ROLES, SAMPLER_SPECS, SAMPLERS, SamplerSpec, build_sampler, check_fallback, parse_sampler_names, sampler_spec

_EXPORTS: dict[str, str] = {
    "ARSampler": "ar",
    "BlockEvent": "base", "GenerationResult": "base", "RunFigures": "base", "Sampler": "base", "SamplerConfig": "base",
    "drain": "base", "num_transfer_tokens": "base", "sample_tokens": "base",
    "BlockDiffusionSampler": "block", "CommitStep": "block",
    "commit_mask": "commit",
    "SAMPLERS": "registry", "SAMPLER_ROLES": "registry", "SAMPLER_SPECS": "registry", "SamplerSpec": "registry",
    "build_sampler": "registry", "check_fallback": "registry", "parse_sampler_names": "registry",
    "sampler_spec": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'echo_model.sampling' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
