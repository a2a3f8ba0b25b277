"""Speed benchmark of the four samplers and the per-forward cost model.

Why this module exists: the paper's headline "8x" is a *tokens-per-forward* figure (TPF 8.00 for b = 8);
wall-clock speed is lower because one ECHO forward carries 2b query tokens (the fused cache:
``[previous block | current block]``) while an AR forward carries one. The honest comparison therefore
needs (1) a measurement of every sampler on the same images, checkpoint family, threads, dtype and
quantisation, with the arms interleaved so that machine noise hits them alike, and (2) a model of what a
forward costs as a function of its query length, ``t(T) ~ a + c*T`` with a realistic KV cache, which bounds
the wall-clock speedup ECHO can reach over AR on this machine:

    cap_b = b * t(1) / t(2b) = b (a + c) / (a + 2 b c)

(AR: one forward of 1 query token per token; ECHO: one forward of 2b query tokens per b tokens). The fit
and the cap are reported figures: the line overstates t(1) and the cap ignores the prefill both arms pay.
What a run should cost is predicted from the probe's *medians* at the query lengths each of its forwards
actually had (AR: t(1) per token; ECHO: t(b) for the first block, t(2b) per further block) plus the measured
prefill; a measured time above that prediction (the arm's overhead) means time goes somewhere other than
the forwards (Python per block, mask building, cache copies, sampling), which ``echo-bench --profile``
helps locate.

Everything here is importable and testable; :mod:`echo_eval.bench_cli` is the command line. Nothing heavy
happens at import time.
"""

from __future__ import annotations

from echo_model.device import (
    QUANTIZATIONS,
    auto_threads,
    device_name,
    load_average,
    quantization_of,
    quantize_checkpoint,
)

from .config import *  # noqa
from .cost_model import *  # noqa
from .measure import *  # noqa
from .report import *  # noqa

__all__ = [
    "ARMS",
    "DEFAULT_QUERY_LENGTHS",
    "FULL_OVERRIDES",
    "MODES",
    "QUANTIZATIONS",
    "TARGET_ECHO_OVER_PREDICTED",
    "TARGET_FRACTION_OF_CAP",
    "TARGET_FRACTION_OF_PREDICTED",
    "Arm",
    "ArmResult",
    "ArmSettings",
    "BenchConfig",
    "BenchReport",
    "CostModel",
    "CostPoint",
    "CostProbe",
    "ForwardCost",
    "ForwardProbe",
    "ForwardTimer",
    "RunSample",
    "Spread",
    "check_uniform_settings",
    "device_name",
    "encode_studies",
    "fit_cost_model",
    "format_report",
    "forward_cache_growth",
    "forward_schedule",
    "load_arms",
    "measure_cell",
    "model_settings",
    "plot_report",
    "predicted_seconds",
    "profile_arm",
    "quantization_of",
    "quantize_checkpoint",
    "run_benchmark",
    "save_outputs",
    "schedule_query_lengths",
    "speedup_cap",
]
