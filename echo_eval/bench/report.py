"""One benchmark run end to end and its outputs: the JSON report, Markdown and the PNG plot."""

from __future__ import annotations

import gc
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from echo_model.checkpoint import EchoCheckpoint
from echo_model.device import device_name, load_average, quantize_checkpoint
from echo_model.imaging.synthetic import phantom_cxr

from .config import (
    ARMS,
    TARGET_ECHO_OVER_PREDICTED,
    TARGET_FRACTION_OF_CAP,
    TARGET_FRACTION_OF_PREDICTED,
    ArmSettings,
    BenchConfig,
    check_uniform_settings,
)
from .cost_model import (
    CostProbe,
    ForwardCost,
    ForwardProbe,
    forward_cache_growth,
    forward_schedule,
    predicted_seconds,
    safe_cap,
    schedule_query_lengths,
)
from .measure import Arm, ArmResult, encode_studies, load_arms, measure_cell


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

    def predicted_run_seconds(self, arm: str, *, batch: int, fit: bool = False, mode: str = "fixed",
                              cache_growth: bool = True) -> float | None:
        """Seconds ``arm`` should take in ``mode`` for the forwards it actually made (median counts): the measured
        prefill plus the probe's median at each forward's query length and mean cache length (``fit=True``: the
        fitted line instead, a reported figure; ``cache_growth=False``: every forward at the prompt's cache, the
        basis before the probe timed a grown cache, reported beside it)."""
        cell, probe = self.cell(arm, mode, batch), self.probe(batch)
        if cell is None or probe is None:
            return None
        s = cell.summary()
        cost: ForwardCost = probe.model if fit else probe
        return predicted_seconds(arm, model_calls=s["model_calls"], forward_passes=s["forward_passes"],
                                 block_length=self.block_length, cost=cost, prefill_seconds=probe.prefill_seconds,
                                 cache_growth=cache_growth)

    def predicted(self, arm: str, *, batch: int, fit: bool = False, mode: str = "fixed",
                  cache_growth: bool = True) -> float | None:
        """Predicted tokens/s of ``arm`` in ``mode`` (see :meth:`predicted_run_seconds`)."""
        secs = self.predicted_run_seconds(arm, batch=batch, fit=fit, mode=mode, cache_growth=cache_growth)
        cell = self.cell(arm, mode, batch)
        if secs is None or cell is None:
            return None
        return cell.summary()["tokens"] / secs if secs > 0 else None

    def predictions(self, batch: int, mode: str = "fixed") -> dict[str, Any] | None:
        """Per arm of the ``mode`` cell at ``batch``: its forward schedule, predicted and measured seconds,
        overhead (measured / predicted - 1); and the predicted ``echo`` / ``ar`` ratio beside the measured one
        (both in tokens / seconds, so natural-length arms with different report lengths compare too)."""
        if self.probe(batch) is None:
            return None
        arms: dict[str, Any] = {}
        for arm in self.config.arms:
            cell, predicted = self.cell(arm, mode, batch), self.predicted_run_seconds(arm, batch=batch, mode=mode)
            if cell is None or predicted is None:
                continue
            s = cell.summary()
            measured = s["median_seconds"]
            counts = {"model_calls": s["model_calls"], "forward_passes": s["forward_passes"],
                      "block_length": self.block_length}
            schedule = forward_schedule(arm, **counts)
            at_prompt = self.predicted_run_seconds(arm, batch=batch, mode=mode, cache_growth=False)
            arms[arm] = {
                "forwards": {str(T): round(n, 4) for T, n in schedule.items()},
                "mean_cache_growth": {str(T): round(g, 2) for T, g in forward_cache_growth(arm, **counts).items()},
                "predicted_seconds": _r(predicted, 6),
                "measured_seconds": _r(measured, 6),
                "overhead": _r(measured / predicted - 1) if predicted > 0 else None,
                "predicted_seconds_prompt_cache": _r(at_prompt, 6),
                "overhead_prompt_cache": _r(measured / at_prompt - 1) if at_prompt else None,
                # measured in the runs themselves (ForwardTimer): the forwards' own seconds and the share of the
                # run outside them, the sampler's part, free of the probe's noise
                "forward_seconds_in_run": _r(s["median_forward_seconds"], 6),
                "outside_forward_share": _r(s["median_outside_forward_share"]),
                "predicted_seconds_fit": _r(self.predicted_run_seconds(arm, batch=batch, fit=True, mode=mode), 6),
                # the run's own forwards made again right after it, back to back without the sampler
                # (replay_forwards): each forward at its place after the prefill, which the probe's steady
                # bursts miss; the overhead is the median of the runs' own wall / replay ratios
                "replayed_seconds": _r(s["median_replayed_seconds"], 6),
                "overhead_replayed": _r(s["median_over_replayed"] - 1) if s["median_over_replayed"] > 0 else None,
            }
        pred_ar, pred_echo = self.predicted("ar", batch=batch, mode=mode), self.predicted("echo", batch=batch, mode=mode)
        predicted_ratio = pred_echo / pred_ar if pred_ar and pred_echo else None
        # measured the same way as predicted (tokens / median seconds), so the ratio's gap is the overheads'
        rates = {a: self.cell(a, mode, batch).summary() for a in ("ar", "echo") if a in arms}
        measured_ratio = None
        if len(rates) == 2 and min(r["median_seconds"] for r in rates.values()) > 0:
            measured_ratio = ((rates["echo"]["tokens"] / rates["echo"]["median_seconds"])
                              / (rates["ar"]["tokens"] / rates["ar"]["median_seconds"]))
        prompt_ar, prompt_echo = (self.predicted(a, batch=batch, mode=mode, cache_growth=False) for a in ("ar", "echo"))
        prompt_ratio = prompt_echo / prompt_ar if prompt_ar and prompt_echo else None
        fit_ar = self.predicted("ar", batch=batch, fit=True, mode=mode)
        fit_echo = self.predicted("echo", batch=batch, fit=True, mode=mode)
        # against the replays: (tokens / replay) per arm is what the forwards allow, so measured / predicted
        # ratio = (1 + overhead of ar) / (1 + overhead of echo), each the median of its runs' own ratios
        over = {a: arms[a]["overhead_replayed"] for a in ("ar", "echo") if a in arms}
        replay_ratio = None
        if len(over) == 2 and None not in over.values():
            replay_ratio = (1 + over["ar"]) / (1 + over["echo"])
        replays = {a: arms[a]["replayed_seconds"] for a in ("ar", "echo") if a in arms}
        predicted_replay = None
        if len(rates) == 2 and all(replays.values()):
            predicted_replay = ((rates["echo"]["tokens"] / replays["echo"]) / (rates["ar"]["tokens"] / replays["ar"]))
        return {
            "arms": arms,
            "predicted_speedup_ar_over_echo": _r(predicted_ratio),
            "measured_speedup_ar_over_echo": _r(measured_ratio),
            "measured_over_predicted_speedup": _r(measured_ratio / predicted_ratio)
            if measured_ratio is not None and predicted_ratio else None,
            "predicted_speedup_ar_over_echo_fit": _r(fit_echo / fit_ar) if fit_ar and fit_echo else None,
            "predicted_speedup_ar_over_echo_prompt_cache": _r(prompt_ratio),
            "measured_over_predicted_speedup_prompt_cache": _r(measured_ratio / prompt_ratio)
            if measured_ratio is not None and prompt_ratio else None,
            "predicted_speedup_ar_over_echo_replayed": _r(predicted_replay),
            "measured_over_replayed_speedup": _r(replay_ratio),
        }

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
        cap = safe_cap(probe.model, b) if probe is not None else None
        pred_ar, pred_echo = self.predicted("ar", batch=head_batch), self.predicted("echo", batch=head_batch)
        head = self.predictions(head_batch) or {}
        echo_pred = head.get("arms", {}).get("echo", {})
        echo_ratio = (echo_pred["measured_seconds"] / echo_pred["predicted_seconds"]
                      if echo_pred.get("predicted_seconds") else None)
        vs_predicted = head.get("measured_over_predicted_speedup")
        echo_over_replay = echo_pred.get("overhead_replayed")
        echo_replayed = 1 + echo_over_replay if echo_over_replay is not None else None
        vs_replayed = head.get("measured_over_replayed_speedup")
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
            "cap_is_reported_only": True,
            "target_fraction_of_cap": TARGET_FRACTION_OF_CAP,
            "meets_cap_fraction": (measured / cap >= TARGET_FRACTION_OF_CAP) if measured is not None and cap else None,
            "prediction_basis": "probe medians at each forward's query length, interpolated to the mean cache length "
                                "those forwards read (probed at the prompt and at the prompt + max_new_tokens) "
                                "+ measured prefill",
            "predictions": {str(bt): self.predictions(bt) for bt in self.config.batches if self.probe(bt)},
            "predictions_natural": {str(bt): self.predictions(bt, "natural") for bt in self.config.batches
                                    if self.probe(bt)} if "natural" in self.config.modes else None,
            "overheads": {a: v["overhead"] for a, v in head.get("arms", {}).items()},
            "measured_over_predicted_speedup": vs_predicted,
            "echo_measured_over_predicted": _r(echo_ratio),
            "targets": {"echo_measured_over_predicted_max": TARGET_ECHO_OVER_PREDICTED,
                        "measured_over_predicted_speedup_min": TARGET_FRACTION_OF_PREDICTED},
            "meets_target": (echo_ratio <= TARGET_ECHO_OVER_PREDICTED and vs_predicted >= TARGET_FRACTION_OF_PREDICTED)
            if echo_ratio is not None and vs_predicted is not None else None,
            # the same targets against each run's own forwards replayed (replay_forwards), reported beside
            "echo_measured_over_replayed": _r(echo_replayed),
            "measured_over_replayed_speedup": vs_replayed,
            "meets_target_replayed": (echo_replayed <= TARGET_ECHO_OVER_PREDICTED
                                      and vs_replayed >= TARGET_FRACTION_OF_PREDICTED)
            if echo_replayed is not None and vs_replayed is not None else None,
            "decode_speedup_ar_over_echo": _r(decode),
            "decode_measured_over_cap": _r(decode / cap) if decode is not None and cap else None,
            "predicted_speedup_ar_over_echo": _r(pred_echo / pred_ar) if pred_ar and pred_echo else None,
            "predicted_tokens_per_second": {
                a: _r(self.predicted(a, batch=head_batch)) for a in self.config.arms
            } if probe is not None else None,
            "predicted_speedup_ar_over_echo_fit": head.get("predicted_speedup_ar_over_echo_fit"),
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
        images = [phantom_cxr((512, 512), seed=i) for i in range(max(config.batches))]
    images = list(images)
    probe_arm = arms["echo"] if "echo" in arms else next(iter(arms.values()))
    probe_prompt = encode_studies(probe_arm.checkpoint.processor, images, 1)[0]
    gc.collect()
    # Keep the collector's full passes over the loaded models out of the timings: the arms' and the probe's
    # alike (a probe run after unfreezing had its t(1) median 10-70 % above the same forwards in the runs).
    gc.freeze()
    before = load_average()
    cells: list[ArmResult] = []
    try:
        # One probe per batch size, its rounds interleaved with that batch's timed rounds (then topped up to
        # --probe-repeats): the forwards are priced in the same moments as the runs they predict.
        probing = {batch: ForwardProbe(probe_arm.checkpoint.model, probe_arm.checkpoint.processor, probe_prompt,
                                       batch=batch,
                                       query_lengths=sorted(set(config.query_lengths)
                                                            | set(schedule_query_lengths(config.arms, b))),
                                       grow_cache=config.max_new_tokens)
                   for batch in config.batches}
        for mode in config.modes:
            for batch in config.batches:
                res = measure_cell(arms, images, mode=mode, batch=batch, runs=config.runs, warmup=config.warmup,
                                   max_new_tokens=config.max_new_tokens, progress=progress,
                                   cycle=config.cycle_images, probe=probing[batch])
                cells.extend(res[a] for a in config.arms)
        for probe in probing.values():
            while probe.rounds < config.probe_repeats:
                probe.round()
        probes = [probing[batch].result() for batch in config.batches]
    finally:
        gc.unfreeze()
    check_uniform_settings({c.arm: c.settings for c in cells})
    check_uniform_settings({"probe": probe_arm.settings, "arms": settings})
    return BenchReport(
        config=config, device=device_name(probe_arm.checkpoint.model.device), settings=settings, block_length=b,
        prompt_length=probe_prompt.length, images=image_label, cells=cells, cost_probes=probes,
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
        lines.append(f"forward costs (batch {cm['batch']}, cache {cm['cache_length']} tokens), medians: {pts}; "
                     f"prefill {cm['prefill_seconds'] * 1e3:.1f} ms")
        if cm.get("grown"):
            grown = ", ".join(f"T={p['query_tokens']}: {p['median'] * 1e3:.2f} ms" for p in cm["grown"]["points"])
            lines.append(f"  with the cache grown to {cm['grown']['cache_length']} tokens: {grown}")
        lines.append(f"  reported, not targets: fit t(T) = {cm['a'] * 1e3:.3f} ms + {cm['c'] * 1e3:.4f} ms * T "
                     f"(R^2 {cm['r2']:.3f}); cap_b8 = {_fx(cm['cap_b8'])}, cap_b16 = {_fx(cm['cap_b16'])} "
                     f"(b t(1) / t(2b) on the fit, prefill ignored; this checkpoint has b = {b})")
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
                     + (f"; reported: cap_b{b} {cap:.2f}x, measured/cap = {ratio:.0%}" if cap else ""))
        dec, dratio = report.get("decode_speedup_ar_over_echo"), report.get("decode_measured_over_cap")
        if dec is not None and dratio is not None:
            lines.append(f"  after the first block (no prefill; AR all 1-token forwards, ECHO all fused 2b-token "
                         f"forwards, what the cap bounds): {dec:.2f}x = {dratio:.0%} of cap_b{b}")
        lines.extend(_prediction_lines(report))
    t = report.get("speedup_teacher_over_echo")
    if t is not None:
        lines.append(f"teacher -> ECHO speedup (fixed length): {t:.2f}x")
    if max(la.get("before") or 0, la.get("after") or 0) > (os.cpu_count() or 1) * 0.75:
        lines.append(f"note: the machine was busy (1-min load average {la.get('before')} -> {la.get('after')} on "
                     f"{os.cpu_count()} CPUs); timings are noisy, compare only arms of this same run"
                     + ("; with several torch threads on a shared CPU, --threads 1 is far steadier"
                        if report["threads"] > 1 and report["torch_device"] == "cpu" else ""))
    return "\n".join(lines)


def _prediction_lines(report: dict[str, Any]) -> list[str]:
    """Per batch: each arm's predicted vs measured seconds and overhead, and the predicted vs measured ratio."""
    lines: list[str] = []
    targets = report.get("targets") or {}
    cells = [("fixed", b, p) for b, p in (report.get("predictions") or {}).items()]
    cells += [("natural", b, p) for b, p in (report.get("predictions_natural") or {}).items()]
    for mode, batch, pred in cells:
        if not pred:
            continue
        lines.append(f"  predicted from the measured forwards (prefill + probe medians at each forward's query "
                     f"length and mean cache length), {mode} length, batch {batch}:")
        for arm, v in pred["arms"].items():
            growth = v.get("mean_cache_growth") or {}
            fwd = " + ".join(f"{n:g} x t({T}" + (f", +{growth[T]:g}" if growth.get(T) else "") + ")"
                             for T, n in v["forwards"].items())
            over, at_prompt = v["overhead"], v.get("overhead_prompt_cache")
            lines.append(f"    {arm:8s} predicted {v['predicted_seconds']:.3f} s (P + {fwd}), measured "
                         f"{v['measured_seconds']:.3f} s, overhead {over:+.0%}"
                         + (f" ({at_prompt:+.0%} against every forward at the prompt's cache)"
                            if at_prompt is not None else "") if over is not None else
                         f"    {arm:8s} predicted {v['predicted_seconds']:.3f} s, measured {v['measured_seconds']:.3f} s")
            if v.get("overhead_replayed") is not None:
                lines.append(f"             its own forwards replayed back to back: {v['replayed_seconds']:.3f} s, "
                             f"overhead {v['overhead_replayed']:+.1%} (median of the runs' own ratios)")
            if v.get("forward_seconds_in_run") and v.get("outside_forward_share") is not None:
                lines.append(f"             in the runs: {v['forward_seconds_in_run']:.3f} s inside the model's forwards, "
                             f"{v['outside_forward_share']:.1%} of the run outside them (the sampler)")
        pr, mr, ratio = (pred.get("predicted_speedup_ar_over_echo"), pred.get("measured_speedup_ar_over_echo"),
                         pred.get("measured_over_predicted_speedup"))
        if pr is not None and mr is not None and ratio is not None:
            fit = pred.get("predicted_speedup_ar_over_echo_fit")
            lines.append(f"    echo/ar: predicted {pr:.2f}x, measured {mr:.2f}x = {ratio:.0%} of predicted"
                         + (f" (from the fit instead, reported only: {fit:.2f}x)" if fit is not None else ""))
            pr0, r0 = (pred.get("predicted_speedup_ar_over_echo_prompt_cache"),
                       pred.get("measured_over_predicted_speedup_prompt_cache"))
            if pr0 is not None and r0 is not None:
                lines.append(f"    with every forward at the prompt's cache (reported only): predicted {pr0:.2f}x, "
                             f"measured = {r0:.0%} of it")
        rr, rp = pred.get("measured_over_replayed_speedup"), pred.get("predicted_speedup_ar_over_echo_replayed")
        if rr is not None and rp is not None:
            lines.append(f"    echo/ar from the replayed forwards: predicted {rp:.2f}x, measured = {rr:.1%} of it")
    if report.get("meets_target") is not None and targets:
        lines.append(f"  targets: echo measured <= {targets['echo_measured_over_predicted_max']:.2f} x predicted "
                     f"(now {report['echo_measured_over_predicted']:.2f}), echo/ar >= "
                     f"{targets['measured_over_predicted_speedup_min']:.0%} of predicted (now "
                     f"{report['measured_over_predicted_speedup']:.0%}): {'met' if report['meets_target'] else 'NOT met'}")
    if report.get("meets_target_replayed") is not None and targets:
        lines.append(f"  the same against the runs' own forwards replayed: echo {report['echo_measured_over_replayed']:.3f} x, "
                     f"echo/ar {report['measured_over_replayed_speedup']:.1%}: "
                     f"{'met' if report['meets_target_replayed'] else 'NOT met'}")
    return lines


def save_outputs(data: dict[str, Any], *, json_path: str | Path | None, plot_path: str | Path | None,
                 plot: Callable[[dict[str, Any], str | Path], None] | None = None) -> list[str]:
    """Write ``data`` as JSON to ``json_path`` and its chart to ``plot_path`` (``plot``, default
    :func:`plot_report`), creating their folders; returns the paths written."""
    written: list[str] = []
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")
        written.append(str(json_path))
    if plot_path:
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        (plot or plot_report)(data, plot_path)
        written.append(str(plot_path))
    return written


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
                 label=f"fit (reported) a={cm['a'] * 1e3:.2f} ms, c={cm['c'] * 1e3:.3f} ms/token")
        b = report["block_length"]
        for x, label in ((1, "AR"), (2 * b, f"ECHO 2b={2 * b}")):
            ax2.axvline(x, color="grey", ls=":", lw=1)
            ax2.annotate(label, (x, 0), xytext=(3, 3), textcoords="offset points", fontsize=8, color="grey")
        m, ratio = report.get("speedup_ar_over_echo"), report.get("measured_over_predicted_speedup")
        if m is not None and ratio is not None:
            ax2.text(0.98, 0.04, f"measured ECHO/AR {m:.2f}x = {ratio:.0%} of predicted", transform=ax2.transAxes,
                     ha="right", fontsize=8)
        ax2.set_xlabel("query tokens T per forward")
        ax2.set_ylabel("ms per forward")
        ax2.set_title(f"forward costs (reported: fit cap_b8 {_fx(cm['cap_b8'])}, cap_b16 {_fx(cm['cap_b16'])})")
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=8)
    fig.suptitle(f"{report['device']} | threads {report['threads']} | {report['dtype']} | "
                 f"quantisation {report['quantization']} | b = {report['block_length']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
