"""The training loop shared by the three stages, on ``accelerate``.

One loop for every objective: seeded, gradient accumulation, gradient clipping, cosine schedule with warm-up,
tqdm progress, a loss log (``loss.csv`` + ``loss.png``), resumable state (``accelerate`` ``save_state``) and
the final weights written with ``save_pretrained`` (safetensors). Runs as a plain process or under
``accelerate launch`` (DDP: gloo on CPU, NCCL on GPUs; FSDP / DeepSpeed through an accelerate config).
Mixed precision is only used where the hardware has it: bf16 on CUDA; never on these CPUs (their bf16 matmuls
are ~100x slower than fp32).
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainReport:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    tokens_per_step: float
    seconds_per_step: float
    history: list[dict] = field(default_factory=list)


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
) -> TrainReport:
    """Train ``checkpoint``'s model in place on ``items`` with ``objective``; save it to ``cfg.out_dir``."""
    if not items:
        raise ValueError("no training items")
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
            if cfg.save_every and step % cfg.save_every == 0:
                acc.save_state(str(state_dir))
                if acc.is_main_process:
                    (state_dir / "progress.json").write_text(json.dumps({"step": step}))
            if step >= cfg.steps:
                break
    bar.close()
    seconds = time.perf_counter() - t0
    acc.wait_for_everyone()
    hf = acc.unwrap_model(wrapped)
    hf.eval()
    hf.requires_grad_(True)
    checkpoint.model.model = hf
    if acc.is_main_process:
        checkpoint.save_pretrained(cfg.out_dir)
        plot_loss(history, cfg.out_dir / "loss.png", title=f"{objective.name}")
        (cfg.out_dir / "train_config.json").write_text(json.dumps({k: str(v) for k, v in asdict(cfg).items()}, indent=2))
    done = max(1, step - start)
    return TrainReport(
        steps=step, seconds=seconds,
        first_loss=history[0]["loss"] if history else float("nan"), last_loss=history[-1]["loss"] if history else float("nan"),
        tokens_per_step=tokens_seen / done, seconds_per_step=seconds / done, history=history,
    )


def plot_loss(history: list[dict], path: Path, *, title: str) -> None:
    """Loss curve (raw and a 20-step moving average) as PNG."""
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
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label=f"{k}-step mean")
    ax.set(xlabel="optimiser step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
