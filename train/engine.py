"""The training loop shared by the three stages, on ``accelerate``.

One loop for every objective: seeded, gradient accumulation, gradient clipping, cosine schedule with warm-up,
tqdm progress, a loss log (``loss.csv`` + ``loss.png``), resumable state (``accelerate`` ``save_state``) and
the final weights written with ``save_pretrained`` (safetensors). Runs as a plain process or under
``accelerate launch`` (DDP: gloo on CPU, NCCL on GPUs; FSDP / DeepSpeed through an accelerate config).
Mixed precision is only used where the hardware has it: bf16 on CUDA; never on these CPUs (their bf16 matmuls
are ~100x slower than fp32).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from echo_model.checkpoint import EchoCheckpoint
from echo_model.modeling import EchoModel

from .objectives import Objective

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings of one stage.

    ``steps`` counts optimiser steps (each over ``batch_size * grad_accum`` samples per process).
    """

    out_dir: Path
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 50
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    resume: bool = False
    freeze_vision: bool = False
    shuffle: bool = True
    optimizer: str = "adamw"  # "sgd" gives updates linear in the gradient (used to compare DDP with one process)
    mixed_precision: str = "auto"  # auto = bf16 on CUDA, none on CPU
    eval_every: int = 0  # validation loss every N optimiser steps (0 = none; needs ``val_items``)
    plateau: float = 0.0  # early stopping: stop when the last fifth of the run improved the best val loss < this (relative)
    min_steps: int = 0  # never stop early before this many steps

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.eval_every < 0 or self.min_steps < 0:
            raise ValueError(f"eval_every and min_steps must be >= 0, got {self.eval_every} and {self.min_steps}")
        if not 0 <= self.plateau < 1:
            raise ValueError(f"plateau must be in [0, 1), got {self.plateau}")


@dataclass
class TrainReport:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    tokens_per_step: float
    seconds_per_step: float
    history: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)  # {"step", "val_loss"} per evaluation
    best_step: int | None = None  # the step whose weights were kept (lowest validation loss)
    best_val_loss: float | None = None
    stopped_early: bool = False
    plateau_improvement: float | None = None  # relative val improvement over the last fifth of the run


#: The last fifth of a run must hold at least this many evaluations before it can show a plateau, so that a
#: single evaluation (noisy, and early in a run) never stops training.
MIN_PLATEAU_WINDOW = 3


def plateau_improvement(values: Sequence[float]) -> float | None:
    """Relative improvement of the best validation loss over the last fifth of the evaluations:
    ``(best before the last fifth - best overall) / best before``. ``None`` while the last fifth holds fewer
    than :data:`MIN_PLATEAU_WINDOW` evaluations (fewer than 15 in all).

    The run has reached its plateau when this is below ``TrainConfig.plateau`` (issue: "< 1 % improvement over
    the last fifth of training").

    >>> values = [4.0, 3.0, 2.5, 2.2, 2.0, 1.9, 1.85, 1.8, 1.78, 1.76, 1.75, 1.74, 1.73, 1.72, 1.6]
    >>> round(plateau_improvement(values), 3)  # best before the last fifth 1.74 -> 1.6
    0.08
    >>> plateau_improvement(values[:10]) is None
    True
    """
    n = len(values)
    window = n // 5
    if window < MIN_PLATEAU_WINDOW:
        return None
    head = min(values[: n - window])
    return (head - min(values)) / head if head > 0 else 0.0


def validation_batches(objective: Objective, items: Sequence, batch_size: int) -> list[dict]:
    """Collate the validation items once, so every evaluation scores the same tokens under the same noise (a
    copy of the objective draws that noise, so the training noise does not depend on whether validation runs)."""
    items, objective = list(items), copy.deepcopy(objective)
    return [objective.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


@torch.no_grad()
def validation_loss(model: EchoModel, objective: Objective, batches: Sequence[dict], device: torch.device) -> float:
    """Mean of the objective's loss over ``batches``, weighted by their size, in eval mode (dropout off)."""
    was_training = model.model.training
    model.model.eval()
    total, n = 0.0, 0
    for batch in batches:
        loss, _ = objective.loss(model, _to(batch, device))
        size = int(batch["input_ids"].shape[0])
        total, n = total + float(loss) * size, n + size
    model.model.train(was_training)
    return total / max(1, n)


def _cosine(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: TrainConfig, **kwargs) -> Accelerator:
    """The accelerator of a run. DDP must look for unused parameters: a text-only batch never touches the
    vision tower, and DDP would otherwise wait for those gradients forever and never all-reduce the rest."""
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=_mixed_precision(cfg),
                       kwargs_handlers=[ddp], **kwargs)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(
    checkpoint: EchoCheckpoint,
    objective: Objective,
    items: Sequence,
    cfg: TrainConfig,
    *,
    accelerator: Accelerator | None = None,
    val_items: Sequence | None = None,
) -> TrainReport:
    """Train ``checkpoint``'s model in place on ``items`` with ``objective``; save it to ``cfg.out_dir`` with the
    revision ``<objective name>-<step of the saved weights>``.

    With ``val_items`` and ``cfg.eval_every``, the validation loss is measured every ``eval_every`` steps (and at
    the end); the weights with the lowest one are kept and saved, and with ``cfg.plateau`` > 0 the run stops early
    once the last fifth of its evaluations improved the best validation loss by less than ``cfg.plateau``.
    """
    if not items:
        raise ValueError("no training items")
    if cfg.eval_every and not val_items:
        raise ValueError(f"eval_every={cfg.eval_every} needs validation items, got {val_items!r}")
    acc = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    hf = checkpoint.model.model
    hf.train()
    if cfg.freeze_vision:
        hf.model.visual.requires_grad_(False)
    params = [p for p in hf.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, warmup=cfg.warmup, total=cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(list(items), batch_size=cfg.batch_size, shuffle=cfg.shuffle, collate_fn=objective.collate, generator=gen,
                        drop_last=len(items) >= cfg.batch_size * acc.num_processes)
    wrapped, opt, loader, sched = acc.prepare(hf, opt, loader, sched)
    model = EchoModel(wrapped, checkpoint.spec)
    model.dtype_override = hf.dtype  # the wrapper (DDP) has no dtype of its own

    state_dir, start = cfg.out_dir / "state", 0
    if cfg.resume and (state_dir / "progress.json").is_file():
        acc.load_state(str(state_dir))
        start = json.loads((state_dir / "progress.json").read_text())["step"]
        log.info("resumed at step %d", start)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    log_path = cfg.out_dir / "loss.csv"
    if start == 0 or not log_path.exists():
        log_path.write_text("step,loss,lr,seconds,tokens\n")

    val_batches = validation_batches(objective, val_items, cfg.batch_size) if cfg.eval_every and val_items else []
    validation: list[dict] = []
    best: dict = {}
    val_path = cfg.out_dir / "val.csv"
    if val_batches and (start == 0 or not val_path.exists()):
        val_path.write_text("step,val_loss\n")
    stopped = False

    def evaluate(at: int) -> None:
        value = validation_loss(model, objective, val_batches, acc.device)
        validation.append({"step": at, "val_loss": value})
        if not best or value < best["val_loss"]:
            best.update(step=at, val_loss=value,
                        state={k: v.detach().clone() for k, v in acc.unwrap_model(wrapped).state_dict().items()})
        if acc.is_main_process:
            with val_path.open("a") as fh:
                fh.write(f"{at},{value:.6f}\n")
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}" if history else "-", val=f"{value:.4f}")

    t0 = time.perf_counter()
    step, tokens_seen = start, 0
    bar = tqdm(total=cfg.steps, initial=start, desc=f"{objective.name} training", disable=not acc.is_main_process)
    while step < cfg.steps:
        for batch in loader:
            with acc.accumulate(wrapped):
                loss, parts = objective.loss(model, _to(batch, acc.device))
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad()
            tokens_seen += batch["tokens"]
            if not acc.sync_gradients:
                continue
            step += 1
            bar.update(1)
            row = {"step": step, "loss": float(acc.gather(loss.detach()[None]).mean()), "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0, "tokens": tokens_seen} | parts
            history.append(row)
            if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps):
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                with log_path.open("a", newline="") as fh:
                    csv.writer(fh).writerow([step, f"{row['loss']:.6f}", f"{row['lr']:.3e}", f"{row['seconds']:.2f}", tokens_seen])
            if val_batches and step % cfg.eval_every == 0:
                evaluate(step)
                gain = plateau_improvement([v["val_loss"] for v in validation])
                if cfg.plateau and step >= cfg.min_steps and gain is not None and gain < cfg.plateau:
                    log.info("validation loss plateaued at step %d (last fifth improved it %.2f%%)", step, 100 * gain)
                    stopped = True
                    break
            if cfg.save_every and step % cfg.save_every == 0:
                acc.save_state(str(state_dir))
                if acc.is_main_process:
                    (state_dir / "progress.json").write_text(json.dumps({"step": step}))
            if step >= cfg.steps:
                break
        if stopped:
            break
    if val_batches and (not validation or validation[-1]["step"] != step):
        evaluate(step)
    bar.close()
    seconds = time.perf_counter() - t0
    acc.wait_for_everyone()
    hf = acc.unwrap_model(wrapped)
    if best:
        hf.load_state_dict(best["state"])
    hf.eval()
    hf.requires_grad_(True)
    checkpoint.model.model = hf
    # The revision names the weights saved: the objective and the step they come from (the best one when
    # validation kept an earlier step than the last).
    spec = checkpoint.spec.replace(revision=f"{objective.name}-{best.get('step', step)}")
    checkpoint.model.spec = checkpoint.processor.spec = spec
    if acc.is_main_process:
        checkpoint.save_pretrained(cfg.out_dir)
        plot_loss(history, cfg.out_dir / "loss.png", title=f"{objective.name}", validation=validation,
                  best_step=best.get("step"))
        (cfg.out_dir / "train_config.json").write_text(json.dumps({k: str(v) for k, v in asdict(cfg).items()}, indent=2))
    done = max(1, step - start)
    return TrainReport(
        steps=step, seconds=seconds,
        first_loss=history[0]["loss"] if history else float("nan"), last_loss=history[-1]["loss"] if history else float("nan"),
        tokens_per_step=tokens_seen / done, seconds_per_step=seconds / done, history=history,
        validation=validation, best_step=best.get("step"), best_val_loss=best.get("val_loss"), stopped_early=stopped,
        plateau_improvement=plateau_improvement([v["val_loss"] for v in validation]),
    )


def plot_loss(history: list[dict], path: Path, *, title: str, validation: Sequence[dict] = (),
              best_step: int | None = None) -> None:
    """Training loss (raw and a 20-step moving average) and, when measured, the validation loss with the kept
    (best) step marked, as PNG."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    k = 20
    smooth = [sum(loss[max(0, i - k + 1) : i + 1]) / len(loss[max(0, i - k + 1) : i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss, alpha=0.3, label="training loss")
    ax.plot(steps, smooth, label=f"training, {k}-step mean")
    if validation:
        ax.plot([v["step"] for v in validation], [v["val_loss"] for v in validation], "o-", ms=3, label="validation loss")
        if best_step is not None:
            ax.axvline(best_step, color="grey", ls=":", lw=1, label=f"kept: step {best_step}")
    ax.set(xlabel="optimiser step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
