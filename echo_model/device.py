"""Where the model runs: device names, CPU thread counts and int8 dynamic quantisation.

Library code because drafting, the app's race and the benchmark all need the same answers (which
device ran this, how many threads a CPU run should use, whether weights are int8).
"""

from __future__ import annotations

import math
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import EchoCheckpoint

__all__ = ["INT8_GATE", "QUANTIZATIONS", "Int8Gate", "auto_threads", "check_quantization", "device_name",
           "load_average", "quantization_of", "quantize_checkpoint", "shares_batches"]

QUANTIZATIONS: tuple[str, ...] = ("none", "int8")


@dataclass(frozen=True)
class Int8Gate:
    """The verdict of the int8 quality gate, which decides whether drafting may use int8 weights.

    ``scripts/int8_gate.py`` drafts the same studies with fp32 and int8 weights on every sampler and writes
    its figures to ``results/int8_gate.json``; this record repeats the ones the verdict rests on (a test keeps
    the two equal). A sampler passes when the lower end of the 95 % paired-bootstrap interval of its ROUGE-L
    difference (int8 - fp32) is at least ``low``; the gate passes when every sampler does.

    Attributes:
        studies: studies drafted per sampler and precision.
        data: the study set (and how its studies were prompted).
        identical_share: per sampler, the share of studies whose two reports are the same text.
        rouge_l_delta: per sampler, ROUGE-L int8 - fp32 on all studies.
        rouge_l_low: per sampler, the lower end of that difference's interval.
        low: the lowest acceptable ``rouge_l_low``.
    """

    studies: int
    data: str
    identical_share: dict[str, float]
    rouge_l_delta: dict[str, float]
    rouge_l_low: dict[str, float]
    low: float = -0.01

    @property
    def passed(self) -> bool:
        return bool(self.rouge_l_low) and all(v >= self.low for v in self.rouge_l_low.values())

    def summary(self) -> str:
        """The gate's figures in one line, per sampler."""
        parts = [f"{name}: identical {100 * self.identical_share[name]:.1f} %, ROUGE-L int8 - fp32 "
                 f"{self.rouge_l_delta[name]:+.4f} (95 % lower end {self.rouge_l_low[name]:+.4f}, needs >= "
                 f"{self.low:+.2f})" for name in self.rouge_l_low]
        return f"{self.studies} {self.data}; " + "; ".join(parts)


#: The gate as last run (see :class:`Int8Gate`); regenerate with ``scripts/int8_gate.py``.
INT8_GATE = Int8Gate(
    studies=300,
    data="IU X-ray test studies (text-only, indication prompts; embedded checkpoints)",
    identical_share={"echo": 0.7667, "ar": 0.85},
    rouge_l_delta={"echo": -0.0003, "ar": 0.0005},
    rouge_l_low={"echo": -0.0018, "ar": -0.0034},
)


def check_quantization(mode: str, gate: Int8Gate | None = None) -> str:
    """``mode`` if drafting may use it: ``none`` always, ``int8`` only while its quality gate passes
    (``gate``; None = :data:`INT8_GATE`).

    Raises:
        ValueError: an unknown mode, or ``int8`` with a failed gate (the message quotes the gate's figures).
    """
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {mode!r}")
    gate = gate if gate is not None else INT8_GATE
    if mode == "int8" and not gate.passed:
        raise ValueError(f"int8 weights are refused: their quality gate failed ({gate.summary()})")
    return mode


def shares_batches(mode: str) -> bool:
    """Whether drafts made with weights ``mode`` may decode in one batch and each still be the draft it is alone.

    ``none`` (fp32 / bf16): yes; no layer mixes the rows, and on a CPU a batch equals its single runs token for
    token (left padding in multiples of b; ``tests/test_batch.py``, ``tests/test_app_batching.py``). On a GPU
    the kernels a batch size selects may round differently, which can move a near-tie, as with any batched
    inference.

    ``int8``: no. Dynamic quantization (``torch.ao.quantization.quantize_dynamic``) quantizes the input of every
    ``Linear`` with one scale taken over the whole input tensor: over every study of the batch, and over a shorter
    prompt's left padding. A study's numbers, and so at times its tokens, then depend on which studies share its
    batch: of 64 covid_cxr_notes radiographs drafted by the embedded student with int8 weights, 35 got another
    report at batch 8 than alone (with fp32 weights, none). Such drafts are made one study at a time.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {mode!r}")
    return mode == "none"


def quantization_of(module: torch.nn.Module) -> str:
    """``int8-dynamic`` if any layer is a dynamically quantised linear, else ``none``."""
    for sub in module.modules():
        if type(sub).__module__.startswith("torch.ao.nn.quantized") or "Quantized" in type(sub).__name__:
            return "int8-dynamic"
    return "none"


def quantize_checkpoint(checkpoint: EchoCheckpoint, mode: str) -> EchoCheckpoint:
    """Apply ``mode`` (``none`` / ``int8``) in place: dynamic int8 weights on every ``nn.Linear``.

    Why dynamic int8: these CPUs have no fast bf16, and int8 GEMMs roughly halve the weight traffic of fp32;
    applying it to every arm alike keeps the comparison fair.
    """
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {mode!r}")
    if mode == "none" or quantization_of(checkpoint.model.model) != "none":
        return checkpoint
    if checkpoint.model.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU only, the model is on {checkpoint.model.device}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        torch.ao.quantization.quantize_dynamic(checkpoint.model.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return checkpoint


def device_name(device: torch.device | str) -> str:
    """Human-readable name of the device the benchmark ran on (CPU model from /proc/cpuinfo, or the GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} logical CPUs)"


def auto_threads(device: str | torch.device | None = None) -> int | None:
    """Torch threads for a fair CPU benchmark: the cores other processes leave free (at least 1, at most
    torch's default); None (leave torch's setting) on a GPU.

    Why: OpenMP threads wait for each other at every op, so a thread that shares its core with another job
    stalls all of them. On the 2-core dev machine with a load average of 4-8, two threads made the default
    run take 16 min with 5-30x slower, erratic forwards; one thread kept it near a minute.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cpu":
        return None
    cores = os.cpu_count() or 1
    load = load_average() or 0.0
    return max(1, min(torch.get_num_threads(), cores - math.ceil(load - 0.25)))


def load_average() -> float | None:
    """1-minute load average: a busy machine (load > cores) makes every timing here noisy."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
